// Authorize: may this client reach these destinations on this port
// (docs/architecture.md, "Authorize")? Deny rules win and the default is
// deny. Today hostd knows one kind of client, one that came in on a listener
// the config marks `trusted`, and such a client may reach every VM: the
// identities and ACL rules of the next version are decided here, and
// nowhere else.
#pragma once

#include <optional>
#include <span>
#include <string>

#include "hostd/directory/directory.hpp"
#include "hostd/identity/identity.hpp"
#include "hostd/refusal.hpp"
#include "hostd/route/request_route.hpp"

namespace vmgate::hostd {

class AccessPolicy {
 public:
  // Nothing when `identity` may reach `route`'s port on every destination,
  // else the 403 to answer.
  std::optional<Refusal> authorize(const Identity& identity, const Route& route,
                                   std::span<const VmRecord> destinations) const;
};

}  // namespace vmgate::hostd
