#include "hostd/directory/directory.hpp"

namespace vmgate::hostd {

std::string_view state_name(VmState state) {
  switch (state) {
    case VmState::running:
      return "running";
    case VmState::paused:
      return "paused";
    case VmState::shut_off:
      return "shut_off";
    case VmState::crashed:
      return "crashed";
    case VmState::suspended:
      return "suspended";
    case VmState::other:
      return "other";
  }
  return "other";
}

}  // namespace vmgate::hostd
