// Authorize: may this client reach this VM on this port
// (docs/architecture.md, "Authorize")? The `[[acl]]` rules of the config
// decide, compiled once at start (acl_pattern.hpp) because decide() runs on
// every request:
//
//  - a client of a listener marked `trusted` may reach every VM: rules do
//    not apply to it (rule "trusted");
//  - else a deny rule that matches the identity, the VM and the port wins,
//    wherever it stands among the rules: an allow written later cannot
//    undo it;
//  - else the first allow rule that matches lets it through;
//  - else nothing matched and the answer is no (rule "default").
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "hostd/authz/acl_pattern.hpp"
#include "hostd/config/hostd_config.hpp"
#include "hostd/directory/directory.hpp"
#include "hostd/identity/identity.hpp"

namespace vmgate::hostd {

// The rule names of decisions no configured rule made (names a rule may not take).
inline constexpr std::string_view trusted_rule = "trusted";
inline constexpr std::string_view default_rule = "default";

struct AccessDecision {
  bool allowed = false;
  // The deciding rule's name; "default" when none matched, "trusted" for a
  // trusted listener's client.
  std::string rule;

  friend bool operator==(const AccessDecision&, const AccessDecision&) = default;
};

class AccessPolicy {
 public:
  // No rules: only trusted listeners' clients reach anything.
  AccessPolicy() = default;
  // `rules` as load_hostd_config() validated them; a pattern it would have
  // refused throws std::invalid_argument.
  explicit AccessPolicy(const std::vector<AclRule>& rules);

  AccessDecision decide(const Identity& identity, const VmRecord& vm, std::uint16_t port) const;
  // Whether `identity` could reach a VM called `target` (a name, or a UUID)
  // on `port`, were there one: admission asks this when there is none, so
  // that a client learns no more of what exists than it may reach.
  AccessDecision decide_target(const Identity& identity, std::string_view target,
                               std::uint16_t port) const;

 private:
  struct Rule {
    std::string name;
    bool deny = false;
    std::vector<IdentityPattern> identities;
    std::vector<VmPattern> vms;
    std::vector<std::uint16_t> ports;

    bool matches(const Identity& identity, const VmRecord& vm, std::uint16_t port) const;
  };
  std::vector<Rule> rules_;
};

}  // namespace vmgate::hostd
