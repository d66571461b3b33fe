#include "hostd/authz/access_policy.hpp"

#include <fmt/format.h>

namespace vmgate::hostd {

std::optional<Refusal> AccessPolicy::authorize(const Identity& identity, const Route& route,
                                               std::span<const VmRecord> destinations) const {
  switch (identity.kind) {
    case Identity::Kind::trusted_listener:
      return std::nullopt;
    case Identity::Kind::anonymous:
    case Identity::Kind::certificate:
    case Identity::Kind::token:
    case Identity::Kind::source:
      break;
  }
  const std::string vm = destinations.empty() ? route.target.to_string() : destinations[0].name;
  return Refusal{403,
                 fmt::format("an unidentified client may not reach vm {} port {}", vm, route.port)};
}

}  // namespace vmgate::hostd
