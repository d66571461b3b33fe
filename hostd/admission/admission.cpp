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

boost::system::result<Admitted, Refused> admit_route(Route route, const Identity& identity,
                                                     std::optional<std::uint64_t> content_length,
                                                     const AdmissionContext& context) {
  Refused refused{.step = AdmissionStep::select, .route = route};

  auto selection = context.directory.select(route.target);
  switch (selection.status) {
    case Selection::Status::unsupported:
      refused.refusal = {501,
                         "group, network, list and HOST/NAME targets are not served by this hostd "
                         "yet"};
      return refused;
    case Selection::Status::not_found:
      refused.refusal = {404, fmt::format("vm '{}' is not known to this host", selection.name)};
      return refused;
    case Selection::Status::ambiguous:
      refused.refusal = {409, fmt::format("'{}' matches more than one VM: {}", selection.name,
                                          fmt::join(selection.candidates, ", "))};
      refused.candidates = std::move(selection.candidates);
      return refused;
    case Selection::Status::found:
      break;
  }
  VmRecord& vm = selection.vms.front();
  refused.vm = vm;

  auto refuse = [&refused](AdmissionStep step, Refusal refusal) {
    refused.step = step;
    refused.refusal = std::move(refusal);
    return refused;
  };
  if (auto denied = context.policy.authorize(identity, route, selection.vms))
    return refuse(AdmissionStep::authorize, std::move(*denied));
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
  auto address = channel_address(context.channel, vm);
  if (!address) return refuse(AdmissionStep::channel, address.error());
  return Admitted{std::move(route), Destination{std::move(vm), std::move(*address)}};
}

}  // namespace vmgate::hostd
