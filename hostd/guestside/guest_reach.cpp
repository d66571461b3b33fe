#include "hostd/guestside/guest_reach.hpp"

#include <utility>

#include <fmt/format.h>

#include "common/deadline.hpp"
#include "common/log.hpp"
#include "hostd/channel/channel.hpp"
#include "hostd/cluster/peer_channels.hpp"
#include "hostd/guestside/guest_replies.hpp"

namespace vmgate::hostd::guestside {
namespace {

// One event=guest_acl line: what the calling VM asked for and who decided.
void log_decision(std::string_view request_id, const VmRecord& caller, std::string_view target,
                  std::optional<std::uint16_t> port, const AccessDecision& decision, bool found) {
  auto line = log::info("guest_acl");
  line.kv("req", request_id).kv("vm", caller.name).kv("target", target);
  if (port) line.kv("port", static_cast<unsigned>(*port));
  line.kv("decision", decision.allowed ? "allow" : "deny").kv("rule", decision.rule);
  if (!found) line.kv("found", false);
}

}  // namespace

// A service the caller may not reach is answered as one that does not
// exist, as a VM is (reach_vm): a VM learns no more of what the host offers
// than it may use. The log says which it was.
awaitable<Reached> reach_host_service(const VmRecord& caller, std::string_view service,
                                      const RunningConfig& running, std::string_view request_id) {
  const auto& services = running.config.host_services;
  auto it = services.find(std::string(service));
  const AccessDecision decision = running.services.decide(caller, service);
  log_decision(request_id, caller, fmt::format("host:{}", service), std::nullopt, decision,
               it != services.end());
  if (it == services.end() || !decision.allowed)
    co_return refuse(404, "unknown-service",
                     fmt::format("hostd offers vm {} no host service '{}' ([host_services] of "
                                 "its config lists them, and which VMs each is for)",
                                 caller.name, service));
  const transport::Address& address = it->second.address;
  auto connected =
      co_await within(running.config.inbound.connect_timeout, transport::connect(address));
  if (!connected)
    co_return refuse(
        504, "service-timeout",
        fmt::format("host service {} ({}) did not accept within {} ms", service,
                    address.to_string(), running.config.inbound.connect_timeout.count()));
  auto& [ec, stream] = *connected;
  if (ec)
    co_return refuse(502, "service-unreachable",
                     fmt::format("host service {} ({}) is unreachable: {}", service,
                                 address.to_string(), ec.message()));
  transport::tune(stream, address.kind);
  co_return Upstream{std::move(stream), {}, fmt::format("host:{}", service), address.kind};
}

// VM to VM: default deny; an ACL rule must name this source, the destination
// and the port. Each decision is logged.
awaitable<Reached> reach_vm(const VmRecord& caller, const Target& target,
                            std::optional<std::uint16_t> port, const RunningConfig& running,
                            const GuestServices& services, std::string_view request_id) {
  // Targets naming many VMs went to the fan-out; HOST/NAME is left.
  if (!target.single_vm())
    co_return refuse(501, "not-implemented",
                     fmt::format("'{}' names a VM on a named host: a guest names the VM alone",
                                 target.to_string()));
  if (!port)
    co_return refuse(400, "bad-port", "a SEND to a VM needs a Port field (its agent port)");
  const Identity identity = vm_identity(caller);
  auto found = services.directory.find(target.value);
  if (found.status != LookupStatus::found) {
    // As for clients (admission.hpp): a VM learns no more of what exists
    // than it may reach.
    auto could = running.policy.decide_target(identity, target.value, *port);
    log_decision(request_id, caller, target.value, port, could, false);
    if (!could.allowed)
      co_return refuse(
          403, "not-allowed",
          fmt::format("vm {} may not reach {} on port {}", caller.name, target.value, *port));
    co_return refuse(404, "unknown-vm", fmt::format("no vm is called {}", target.value));
  }
  const VmRecord& vm = *found.vm;
  auto decision = running.policy.decide(identity, vm, *port);
  log_decision(request_id, caller, vm.name, port, decision, true);
  if (!decision.allowed)
    co_return refuse(403, "not-allowed",
                     fmt::format("vm {} may not reach {} on port {} (rule {})", caller.name,
                                 target.value, *port, decision.rule));
  if (vm.state != VmState::running)
    co_return refuse(503, "vm-not-running",
                     fmt::format("vm {} is {}", vm.name, state_name(vm.state)));
  if (services.peers && services.peers->remote(vm)) {
    // A named local: g++ 12 destroys a temporary in a co_await twice.
    const std::string who = identity.to_string();
    const PeerRequest request{
        .target_host = vm.host, .client = who, .identity = who, .request_id = request_id};
    auto channel = co_await services.peers->open(vm, *port, request);
    if (!channel)
      co_return refuse(channel.error().status, token_for(channel.error().status),
                       channel.error().reason);
    co_return Upstream{std::move(channel->stream), std::move(channel->buffer),
                       fmt::format("vm:{}:{}@{}", vm.name, *port, vm.host),
                       transport::Kind::unix_socket};
  }
  auto address = channel_address(services.channel, vm);
  if (!address)
    co_return refuse(address.error().status, token_for(address.error().status),
                     address.error().reason);
  auto channel = co_await open_channel(services.channel, vm, *address, *port, identity.to_string(),
                                       request_id);
  if (!channel)
    co_return refuse(channel.error().status, token_for(channel.error().status),
                     channel.error().reason);
  Upstream up{std::move(channel->stream), std::move(channel->buffer),
              fmt::format("vm:{}:{}", vm.name, *port), address->kind};
  co_return std::move(up);
}

}  // namespace vmgate::hostd::guestside
