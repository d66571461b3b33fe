// Which calling VMs may reach each host service (docs/architecture.md,
// "Guest-originated traffic"). [host_services] is the allowlist of what a
// guest may name as host:NAME at all; each entry's `vms` (["*"] for an
// entry written as an address alone) says which VMs it is for, matched as
// an ACL rule's `vms` are, and compiled once with the config snapshot.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "hostd/authz/access_policy.hpp"
#include "hostd/authz/acl_pattern.hpp"
#include "hostd/config/hostd_config.hpp"
#include "hostd/directory/directory.hpp"

namespace vmgate::hostd {

class ServiceAccess {
 public:
  ServiceAccess() = default;
  // `services` as load_hostd_config() validated them; a pattern it would
  // have refused throws std::invalid_argument.
  explicit ServiceAccess(const std::map<std::string, HostService>& services);

  // Whether `caller` may reach `service`; the decision's rule is
  // "host_services.NAME", or "default" for a service not in the list.
  AccessDecision decide(const VmRecord& caller, std::string_view service) const;

 private:
  std::map<std::string, std::vector<VmPattern>, std::less<>> for_vms_;
};

}  // namespace vmgate::hostd
