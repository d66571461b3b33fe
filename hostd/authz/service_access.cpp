#include "hostd/authz/service_access.hpp"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

namespace vmgate::hostd {

ServiceAccess::ServiceAccess(const std::map<std::string, HostService>& services) {
  for (const auto& [name, service] : services) {
    auto& patterns = for_vms_[name];
    for (const auto& text : service.vms) {
      auto parsed = parse_vm_pattern(text);
      if (!parsed)
        throw std::invalid_argument(fmt::format("host_services.{}: {}", name, parsed.error()));
      patterns.push_back(std::move(*parsed));
    }
  }
}

AccessDecision ServiceAccess::decide(const VmRecord& caller, std::string_view service) const {
  auto it = for_vms_.find(service);
  if (it == for_vms_.end()) return {false, std::string(default_rule)};
  const bool allowed = std::any_of(it->second.begin(), it->second.end(),
                                   [&](const VmPattern& p) { return p.matches(caller); });
  return {allowed, fmt::format("host_services.{}", it->first)};
}

}  // namespace vmgate::hostd
