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

std::string_view source_name(Provenance::Source source) {
  switch (source) {
    case Provenance::Source::name:
      return "name";
    case Provenance::Source::range:
      return "range";
    case Provenance::Source::network:
      return "network";
    case Provenance::Source::config:
      return "config";
    case Provenance::Source::libvirt:
      return "libvirt";
    case Provenance::Source::guest_join:
      return "guest_join";
  }
  return "name";
}

Selection Resolution::selection() const {
  Selection out;
  out.status = status;
  out.reason = reason;
  out.unknown = unknown;
  out.candidates = candidates;
  out.vms.reserve(vms.size());
  for (const ResolvedVm& resolved : vms)
    out.vms.push_back(resolved.vm);
  return out;
}

Resolution Directory::resolve(const Target& target) const {
  Selection selection = select(target);
  Resolution out;
  out.status = selection.status;
  out.reason = selection.reason;
  out.candidates = std::move(selection.candidates);
  out.unknown = std::move(selection.unknown);
  for (VmRecord& vm : selection.vms)
    out.vms.push_back({std::move(vm), Provenance{.rule = "named " + target.to_string()}});
  return out;
}

}  // namespace vmgate::hostd
