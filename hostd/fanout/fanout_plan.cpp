#include "hostd/fanout/fanout_plan.hpp"

#include <strings.h>

#include <algorithm>
#include <unordered_set>

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
                       const std::vector<std::string>& unknown, std::string_view local_host,
                       const AccessObserver& decided) {
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
    } else if (!local_host.empty() && vm.host != local_host) {
      member.remote = true;  // its host has the channel
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

FanoutPlan plan_peer_fanout(const std::vector<std::string>& vms, const Directory& directory,
                            std::string_view local_host, const ChannelConfig& channel) {
  FanoutPlan plan;
  plan.members.reserve(vms.size());
  std::unordered_set<std::string> seen;
  for (const std::string& item : vms) {
    FanoutMember member;
    // What the sender wrote goes into a part and the log: printable, or not at all.
    const bool printable = std::all_of(item.begin(), item.end(), [](char c) {
      return static_cast<unsigned char>(c) >= 0x20 && static_cast<unsigned char>(c) < 0x7f;
    });
    member.vm.name = printable ? item : std::string("(unprintable)");
    const bool uuid = looks_like_uuid(item);
    // Under its UUID, so that the sender knows which of its VMs it is.
    auto not_here = [&](std::string why) {
      member.settled =
          refused_result(member.vm.name, uuid ? item : "", Refusal{404, std::move(why)});
    };
    if (!uuid) {
      not_here(fmt::format("'{}' is not a UUID: another host's fan-out names VMs by UUID",
                           member.vm.name));
    } else if (!seen.insert(item).second) {
      not_here(fmt::format("vm {} is listed twice", item));
    } else if (Lookup lookup = directory.find(item);
               lookup.status != LookupStatus::found || lookup.vm->host != local_host) {
      not_here(fmt::format("vm {} is not on host {}", item, local_host));
    } else {
      member.vm = std::move(*lookup.vm);
      if (member.vm.state != VmState::running) {
        VmResult result = refused_result(
            member.vm.name, member.vm.uuid,
            Refusal{503, fmt::format("vm {} is {}", member.vm.name, state_name(member.vm.state))});
        result.vm_class = VmClass::not_running;
        member.settled = std::move(result);
      } else if (auto address = channel_address(channel, member.vm); !address) {
        member.settled = refused_result(member.vm.name, member.vm.uuid, address.error());
      } else {
        member.address = std::move(*address);
      }
    }
    plan.members.push_back(std::move(member));
  }
  return plan;
}

}  // namespace vmgate::hostd
