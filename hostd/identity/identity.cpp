#include "hostd/identity/identity.hpp"

namespace vmgate::hostd {

std::string Identity::to_string() const {
  switch (kind) {
    case Kind::trusted_listener:
      return "trusted:" + name;
    case Kind::certificate:
      return "cert:" + name;
    case Kind::token:
      return "token:" + name;
    case Kind::source:
      return "source:" + name;
    case Kind::anonymous:
      break;
  }
  return "anonymous";
}

}  // namespace vmgate::hostd
