#include "hostd/guestside/guest_fanout.hpp"

#include <string>
#include <utility>

#include <fmt/format.h>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "common/deadline.hpp"
#include "common/log.hpp"
#include "hostd/cluster/peer_channels.hpp"
#include "hostd/fanout/fanout_delivery.hpp"
#include "hostd/guestside/guest_replies.hpp"
#include "hostd/proxy/client_stream.hpp"
#include "hostd/proxy/request_record.hpp"
#include "hostd/route/request_route.hpp"

namespace vmgate::hostd::guestside {

namespace beast = boost::beast;
namespace http = beast::http;

Planned plan_guest_fanout(const VmRecord& caller, const Target& target,
                          std::optional<std::uint16_t> port, std::string_view form,
                          const RunningConfig& running, const GuestServices& services,
                          std::string_view request_id) {
  if (!services.fanout)
    return refuse(501, "not-implemented", "this hostd does not deliver a guest's SEND to many VMs");
  if (!port) return refuse(400, "bad-port", "a SEND to VMs needs a Port field (their agent port)");
  if (form != "http")
    return refuse(
        400, "bad-form",
        fmt::format("'{}' names several VMs: a tunnel leads to one VM", target.to_string()));
  const Identity identity = vm_identity(caller);
  const std::string text = target.to_string();
  auto denied = [&] {
    return refuse(403, "not-allowed",
                  fmt::format("vm {} may not reach '{}' on port {}", caller.name, text, *port));
  };
  auto selection = services.directory.select(target);
  if (selection.status == Selection::Status::invalid)
    return refuse(400, "bad-target", std::move(selection.reason));
  if (selection.status != Selection::Status::found) {
    // Why nothing was found is only for a VM that could reach such a target.
    auto could = running.policy.decide_target(identity, text, *port);
    log::info("guest_acl")
        .kv("req", request_id)
        .kv("vm", caller.name)
        .kv("target", text)
        .kv("port", static_cast<unsigned>(*port))
        .kv("decision", could.allowed ? "allow" : "deny")
        .kv("rule", could.rule)
        .kv("found", false);
    if (!could.allowed) return denied();
    if (selection.status == Selection::Status::unsupported)
      return refuse(501, "not-implemented", std::move(selection.reason));
    return refuse(selection.status == Selection::Status::ambiguous ? 409 : 404, "unknown-vm",
                  selection.reason.empty() ? fmt::format("'{}' names no vm", text)
                                           : std::move(selection.reason));
  }
  FanoutPlan plan = plan_fanout(
      std::move(selection.vms), target, identity, *port, running.policy, services.channel,
      selection.unknown,
      services.peers ? std::string_view(services.peers->local_host()) : std::string_view(),
      [&](const VmRecord& vm, const AccessDecision& decision) {
        log::info("guest_acl")
            .kv("req", request_id)
            .kv("vm", caller.name)
            .kv("target", vm.name)
            .kv("via", text)
            .kv("port", static_cast<unsigned>(*port))
            .kv("decision", decision.allowed ? "allow" : "deny")
            .kv("rule", decision.rule);
      });
  if (plan.members.empty()) {
    if (plan.access) return denied();
    return refuse(404, "unknown-vm", fmt::format("'{}' names no vm", text));
  }
  return plan;
}

awaitable<void> send_to_many(Stream stream, std::string_view leftover, const VmRecord& caller,
                             const Target& target, std::uint16_t port, const FanoutPlan& plan,
                             const RunningConfig& running, const GuestServices& services,
                             std::string_view request_id, std::uint64_t id) {
  const auto& limits = running.config.limits;
  ClientStream guest(std::move(stream));
  beast::flat_buffer in;
  in.commit(asio::buffer_copy(in.prepare(leftover.size()), asio::buffer(leftover)));
  Deadline deadline(guest.get_executor());
  deadline.expires_after(running.config.inbound.header_timeout, [&guest] {
    error_code ignored;
    guest.socket().close(ignored);
  });
  http::request_parser<http::empty_body> head;
  head.header_limit(limits.header_bytes);
  auto [hec, hn] = co_await http::async_read_header(guest, in, head, use_tuple);
  const bool timed_out = deadline.expired();
  deadline.expires_never();
  if (hec) {
    if (!timed_out && hec != asio::error::eof)
      co_await answer_http(guest.socket(), 400,
                           fmt::format("hostd could not read the request: {}", hec.message()),
                           running.config.inbound.linger);
    else
      close_stream(guest.socket());
    co_return;
  }
  auto& req = head.get();
  // RFC 7239 §4, §5.2: what the guest wrote of who it is does not pass;
  // rewrite_request sets Forwarded from the caller's identity.
  req.erase(http::field::forwarded);
  req.erase("X-Forwarded-For");
  req.set(vm_uuid_header, caller.uuid);
  req.keep_alive(false);
  const Identity identity = vm_identity(caller);
  const std::string who = identity.to_string();
  const Route route{.form = RouteForm::header,
                    .target = target,
                    .port = port,
                    .origin_target = std::string(req.target())};
  RequestRecord record;
  record.id = std::string(request_id);
  record.conn = id;
  record.listener = "inbound";
  record.client = who;
  record.method = std::string(req.method_string());
  record.form = "guest";
  record.target = target.to_string();
  record.vm = "-";
  record.port = port;
  record.note_access(identity, plan.access);
  const FanoutEnds ends{.client = guest,
                        .client_buffer = in,
                        .deadline = deadline,
                        .config = running.config,
                        .budget = services.fanout->budget,
                        .pool = services.fanout->pool,
                        .live = services.fanout->live,
                        .metrics = services.fanout->metrics,
                        .peer = who,
                        .trusted_listener = false,
                        .peers = services.peers,
                        .identity = who};
  const FanoutRequest request{head, route, plan};
  co_await run_fanout(ends, request, record);
  co_await write_and_linger(guest.socket(), {}, running.config.inbound.linger);
}

}  // namespace vmgate::hostd::guestside
