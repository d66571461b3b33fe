#include "hostd/authz/access_policy.hpp"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

#include "hostd/route/target.hpp"

namespace vmgate::hostd {

AccessPolicy::AccessPolicy(const std::vector<AclRule>& rules) {
  auto compiled = [](const auto& parsed, const AclRule& rule) {
    if (!parsed) throw std::invalid_argument(fmt::format("acl {}: {}", rule.name, parsed.error()));
    return *parsed;
  };
  for (const AclRule& rule : rules) {
    Rule& r = rules_.emplace_back();
    r.name = rule.name;
    r.deny = rule.deny;
    r.ports = rule.ports;
    for (const auto& text : rule.identities)
      r.identities.push_back(compiled(parse_identity_pattern(text), rule));
    for (const auto& text : rule.vms)
      r.vms.push_back(compiled(parse_vm_pattern(text), rule));
  }
}

bool AccessPolicy::Rule::matches(const Identity& identity, const VmRecord& vm,
                                 std::uint16_t port) const {
  if (!ports.empty() && std::find(ports.begin(), ports.end(), port) == ports.end()) return false;
  return std::any_of(identities.begin(), identities.end(),
                     [&](const IdentityPattern& p) { return p.matches(identity); }) &&
         std::any_of(vms.begin(), vms.end(), [&](const VmPattern& p) { return p.matches(vm); });
}

AccessDecision AccessPolicy::decide(const Identity& identity, const VmRecord& vm,
                                    std::uint16_t port) const {
  if (identity.kind == Identity::Kind::trusted_listener) return {true, std::string(trusted_rule)};
  const Rule* allowed_by = nullptr;
  for (const Rule& rule : rules_) {
    if (!rule.deny && allowed_by) continue;  // one allow is enough; a deny may still come
    if (!rule.matches(identity, vm, port)) continue;
    if (rule.deny) return {false, rule.name};
    allowed_by = &rule;
  }
  if (allowed_by) return {true, allowed_by->name};
  return {false, std::string(default_rule)};
}

AccessDecision AccessPolicy::decide_target(const Identity& identity, std::string_view target,
                                           std::uint16_t port) const {
  VmRecord vm;
  vm.name = target;
  if (looks_like_uuid(target)) {
    vm.uuid.reserve(target.size());
    for (char c : target)
      vm.uuid += (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
  }
  return decide(identity, vm, port);
}

}  // namespace vmgate::hostd
