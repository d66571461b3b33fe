#include "hostd/admission/admission.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "hostd/channel/channel.hpp"

namespace vmgate::hostd {

boost::system::result<Admitted, Refused> admit(const AdmissionRequest& request,
                                               const AdmissionContext& context) {
  auto route = route_request(request.head, RouteOptions{.vm_header = context.routing.vm_header,
                                                        .host_suffix = context.routing.host_suffix,
                                                        .guest_port = request.guest_port});
  if (!route) return Refused{.step = AdmissionStep::route, .refusal = {400, route.error()}};
  return admit_route(std::move(*route), request.identity, request.content_length, context);
}

namespace {

// "name (uuid)", as the directory lists an ambiguous name's candidates: the
// VM as far as ACL rules see one.
VmRecord candidate_vm(std::string_view candidate) {
  VmRecord vm;
  constexpr std::size_t uuid_size = 36;
  const std::size_t tail = uuid_size + 3;  // " (" UUID ")"
  if (candidate.size() > tail && candidate.ends_with(')')) {
    vm.name = candidate.substr(0, candidate.size() - tail);
    vm.uuid = candidate.substr(candidate.size() - uuid_size - 1, uuid_size);
  } else {
    vm.name = candidate;
  }
  return vm;
}

}  // namespace

boost::system::result<Admitted, Refused> admit_route(Route route, const Identity& identity,
                                                     std::optional<std::uint64_t> content_length,
                                                     const AdmissionContext& context) {
  Refused refused{.step = AdmissionStep::select, .route = route};
  auto refuse = [&refused](AdmissionStep step, Refusal refusal) {
    refused.step = step;
    refused.refusal = std::move(refusal);
    return refused;
  };
  // Worded from what the client wrote alone, so that it says the same
  // whether or not such a VM exists, and names no rule.
  const std::string target_text = route.target.to_string();
  auto forbidden = [&](AccessDecision decision) {
    refused.access = std::move(decision);
    return refuse(AdmissionStep::authorize,
                  {403, fmt::format("{} may not reach '{}' on port {}", identity.to_string(),
                                    target_text, route.port)});
  };
  const bool trusted = identity.kind == Identity::Kind::trusted_listener;

  // Targets that name many VMs (group:, net:, ranges, lists, `!ITEM`): the
  // one place a multi-VM selection goes. Each VM is authorized, and its
  // state and channel settled, on its own (fanout/fanout_plan.hpp); the body
  // limit is fanout.max_body, checked as the body is read.
  if (names_many(route.target)) {
    auto many = context.directory.select(route.target);
    if (many.status == Selection::Status::invalid)
      return refuse(AdmissionStep::route, {400, std::move(many.reason)});
    if (many.status == Selection::Status::found) {
      FanoutPlan plan =
          plan_fanout(std::move(many.vms), route.target, identity, route.port, context.policy,
                      context.channel, many.unknown, context.local_host);
      if (plan.members.empty()) {
        if (plan.access) return forbidden(std::move(*plan.access));
        return refuse(AdmissionStep::select, {404, fmt::format("'{}' names no VM", target_text)});
      }
      AccessDecision access = *plan.access;
      return Admitted{std::move(route), Destination{}, std::move(access),
                      std::make_shared<const FanoutPlan>(std::move(plan))};
    }
    // Why the set is empty or ambiguous is only for a client that could
    // reach such a target: any other gets the 403 a unicast target it may
    // not reach gets, and learns nothing of what exists.
    if (!trusted) {
      auto decision = context.policy.decide_target(identity, target_text, route.port);
      if (!decision.allowed) return forbidden(std::move(decision));
    }
    if (many.status == Selection::Status::ambiguous) {
      refused.candidates = std::move(many.candidates);
      return refuse(AdmissionStep::select, {409, std::move(many.reason)});
    }
    return refuse(AdmissionStep::select,
                  {many.status == Selection::Status::unsupported ? 501u : 404u,
                   many.reason.empty() ? fmt::format("'{}' names no VM", target_text)
                                       : std::move(many.reason)});
  }

  auto selection = context.directory.select(route.target);
  switch (selection.status) {
    case Selection::Status::invalid:  // only targets naming many VMs, above
    case Selection::Status::unsupported:
      // Only HOST/NAME comes here: the embedded directory knows no other host.
      refused.refusal = {501,
                         "HOST/NAME targets are served in cluster mode ([cluster] enabled); this "
                         "hostd knows only its own VMs"};
      return refused;
    case Selection::Status::not_found:
      if (!trusted) {
        auto decision = context.policy.decide_target(identity, selection.name, route.port);
        if (!decision.allowed) return forbidden(std::move(decision));
      }
      refused.refusal = {404, fmt::format("vm '{}' is not known to this host", selection.name)};
      return refused;
    case Selection::Status::ambiguous: {
      // Only the candidates this client may reach: the others are not its to know of.
      std::optional<AccessDecision> first_denial;
      if (!trusted) {
        std::erase_if(selection.candidates, [&](const std::string& candidate) {
          auto decision = context.policy.decide(identity, candidate_vm(candidate), route.port);
          if (!decision.allowed && !first_denial) first_denial = decision;
          return !decision.allowed;
        });
        if (selection.candidates.empty()) return forbidden(std::move(*first_denial));
      }
      refused.refusal = {409, fmt::format("'{}' matches more than one VM: {}", selection.name,
                                          fmt::join(selection.candidates, ", "))};
      refused.candidates = std::move(selection.candidates);
      return refused;
    }
    case Selection::Status::found:
      break;
  }
  VmRecord& vm = selection.vms.front();
  refused.vm = vm;

  AccessDecision access = context.policy.decide(identity, vm, route.port);
  if (!access.allowed) return forbidden(std::move(access));
  refused.access = access;
  if (vm.state != VmState::running) {
    return refuse(AdmissionStep::state,
                  {503, fmt::format("vm {} is {}", vm.name, state_name(vm.state))});
  }
  const std::uint64_t max_body = context.limits.max_request_body;
  if (max_body > 0 && content_length && *content_length > max_body) {
    return refuse(AdmissionStep::size,
                  {413, fmt::format("request body of {} bytes exceeds the limit of {}",
                                    *content_length, max_body)});
  }
  if (!context.local_host.empty() && vm.host != context.local_host)
    return Admitted{std::move(route), Destination{std::move(vm), {}}, std::move(access)};
  auto address = channel_address(context.channel, vm);
  if (!address) return refuse(AdmissionStep::channel, address.error());
  return Admitted{std::move(route), Destination{std::move(vm), std::move(*address)},
                  std::move(access)};
}

}  // namespace vmgate::hostd
