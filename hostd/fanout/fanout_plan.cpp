#include "hostd/fanout/fanout_plan.hpp"

#include <strings.h>

#include <fmt/format.h>

#include "hostd/channel/channel.hpp"

namespace vmgate::hostd {
namespace {

bool same_text(std::string_view a, std::string_view b) {
  return a.size() == b.size() && ::strncasecmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace

std::size_t FanoutPlan::to_deliver() const {
  std::size_t n = 0;
  for (const FanoutMember& m : members)
    if (!m.settled) ++n;
  return n;
}

bool names_many(const Target& target) {
  return !target.single_vm() && target.kind != Target::Kind::host_vm;
}

std::optional<std::string> named_as(const Target& target, const VmRecord& vm) {
  if (target.exclude) return std::nullopt;  // `!NAME` names what it takes away
  switch (target.kind) {
    case Target::Kind::vm:
    case Target::Kind::host_vm:
      if (same_text(target.value, vm.name) || same_text(target.value, vm.uuid)) return target.value;
      return std::nullopt;
    case Target::Kind::range: {
      // web[01-20] names web07 as surely as "web07" does. Its size was
      // checked against fanout.max_targets when the directory expanded it.
      auto names = expand_range(target, target.count);
      if (!names) return std::nullopt;
      for (const std::string& name : *names)
        if (same_text(name, vm.name)) return name;
      return std::nullopt;
    }
    case Target::Kind::list:
      for (const Target& member : target.members)
        if (auto named = named_as(member, vm)) return named;
      return std::nullopt;
    default:
      return std::nullopt;
  }
}

FanoutPlan plan_fanout(std::vector<VmRecord> vms, const Target& target, const Identity& identity,
                       std::uint16_t port, const AccessPolicy& policy, const ChannelConfig& channel,
                       const std::vector<std::string>& unknown, const AccessObserver& decided) {
  FanoutPlan plan;
  std::optional<AccessDecision> first_denial;
  plan.members.reserve(vms.size());
  for (VmRecord& vm : vms) {
    AccessDecision decision = policy.decide(identity, vm, port);
    if (decided) decided(vm, decision);
    if (!decision.allowed) {
      if (!first_denial) first_denial = decision;
      auto named = named_as(target, vm);
      if (!named) continue;  // not this client's to know of
      FanoutMember member;
      member.settled =
          refused_result(*named, "",
                         Refusal{403, fmt::format("{} may not reach '{}' on port {}",
                                                  identity.to_string(), *named, port)});
      member.vm.name = *named;
      plan.members.push_back(std::move(member));
      continue;
    }
    if (!plan.access) plan.access = decision;
    FanoutMember member;
    if (vm.state != VmState::running) {
      VmResult result =
          refused_result(vm.name, vm.uuid,
                         Refusal{503, fmt::format("vm {} is {}", vm.name, state_name(vm.state))});
      result.vm_class = VmClass::not_running;
      member.settled = std::move(result);
    } else if (auto address = channel_address(channel, vm); !address) {
      member.settled = refused_result(vm.name, vm.uuid, address.error());
    } else {
      member.address = std::move(*address);
    }
    member.vm = std::move(vm);
    plan.members.push_back(std::move(member));
  }
  for (const std::string& name : unknown) {
    AccessDecision decision = policy.decide_target(identity, name, port);
    FanoutMember member;
    member.vm.name = name;
    member.settled =
        decision.allowed
            ? refused_result(name, "",
                             Refusal{404, fmt::format("vm '{}' is not known to this host", name)})
            : refused_result(name, "",
                             Refusal{403, fmt::format("{} may not reach '{}' on port {}",
                                                      identity.to_string(), name, port)});
    if (!decision.allowed && !first_denial) first_denial = decision;
    plan.members.push_back(std::move(member));
  }
  if (!plan.access) plan.access = first_denial;
  return plan;
}

}  // namespace vmgate::hostd
