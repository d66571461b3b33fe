#include "hostd/guestside/guest_session.hpp"

#include <array>
#include <charconv>
#include <memory>
#include <utility>

#include <fmt/format.h>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "common/deadline.hpp"
#include "common/log.hpp"
#include "common/relay.hpp"
#include "common/transport.hpp"
#include "hostd/channel/channel.hpp"
#include "hostd/cluster/peer_channels.hpp"
#include "hostd/fanout/fanout_delivery.hpp"
#include "hostd/fanout/fanout_plan.hpp"
#include "hostd/guestside/guest_caller.hpp"
#include "hostd/proxy/client_stream.hpp"
#include "hostd/proxy/request_record.hpp"
#include "hostd/request_id.hpp"
#include "hostd/route/request_route.hpp"
#include "hostd/route/target.hpp"

namespace vmgate::hostd {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;

// After a refusal, what the guest still sends is read and dropped, up to
// this much, so that closing does not reset the connection and destroy the
// answer in flight (a close with unread data resets vsock and TCP).
constexpr std::size_t linger_max_bytes = 64 * 1024;
constexpr std::size_t chunk_bytes = 64 * 1024;
constexpr std::string_view host_prefix = "host:";

using PreambleBuffer = std::array<char, preamble::max_bytes>;

struct PreambleRead {
  bool complete = false;
  std::size_t length = 0;  // of the preamble, terminator included
};

awaitable<PreambleRead> read_preamble(Stream& guest, PreambleBuffer& buffer, std::size_t& used) {
  for (;;) {
    auto [ec, n] = co_await guest.async_read_some(
        asio::buffer(buffer.data() + used, buffer.size() - used), use_tuple);
    used += n;
    if (auto end = preamble::find_end(std::string_view(buffer.data(), used)))
      co_return PreambleRead{true, *end};
    if (ec || used == buffer.size()) co_return PreambleRead{};
  }
}

void close_stream(Stream& stream) {
  error_code ignored;
  stream.close(ignored);
}

awaitable<bool> drain(Stream& guest) {
  std::array<char, 4096> sink;
  std::size_t drained = 0;
  while (drained < linger_max_bytes) {
    auto [read_ec, got] = co_await guest.async_read_some(asio::buffer(sink), use_tuple);
    drained += got;
    if (read_ec) break;
  }
  co_return true;
}

// Writes `bytes`, half-closes, and reads what still comes (at most
// linger_max_bytes, within `linger`) so the peer reads the answer before the
// close.
awaitable<void> write_and_linger(Stream& guest, std::string bytes,
                                 std::chrono::milliseconds linger) {
  auto [ec, n] = co_await asio::async_write(guest, asio::buffer(bytes), use_tuple);
  if (!ec) {
    error_code ignored;
    guest.shutdown(asio::socket_base::shutdown_send, ignored);
    co_await within(linger, drain(guest));
  }
  close_stream(guest);
}

// guestd's answers map transport errors to HTTP-like statuses; a guest's
// refusal token says which kind in one word.
std::string token_for(unsigned status) {
  switch (status) {
    case 400:
      return "bad-request";
    case 403:
      return "not-allowed";
    case 404:
      return "not-found";
    case 501:
      return "not-implemented";
    case 503:
      return "unavailable";
    case 504:
      return "timeout";
    default:
      return "unreachable";
  }
}

GuestAnswer refuse(unsigned status, std::string token, std::string reason) {
  return GuestAnswer{status, std::move(token), std::move(reason)};
}

// What a SEND reaches, connected and ready for the guest's bytes.
struct Upstream {
  Stream stream;
  // Bytes already read from it (a channel's agent bytes behind guestd's answer).
  beast::flat_buffer buffer;
  std::string name;  // "host:monitor", "vm:web1:5986" for logs
  transport::Kind kind = transport::Kind::tcp;
};

using Reached = boost::system::result<Upstream, GuestAnswer>;

awaitable<Reached> reach_host_service(std::string_view service, const RunningConfig& running) {
  const auto& services = running.config.host_services;
  auto it = services.find(std::string(service));
  if (it == services.end())
    co_return refuse(404, "unknown-service",
                     fmt::format("hostd offers no host service '{}' ([host_services] of its "
                                 "config lists those guests may reach)",
                                 service));
  const transport::Address& address = it->second;
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
    log::info("guest_acl")
        .kv("req", request_id)
        .kv("vm", caller.name)
        .kv("target", target.value)
        .kv("port", static_cast<unsigned>(*port))
        .kv("decision", could.allowed ? "allow" : "deny")
        .kv("rule", could.rule)
        .kv("found", false);
    if (!could.allowed)
      co_return refuse(
          403, "not-allowed",
          fmt::format("vm {} may not reach {} on port {}", caller.name, target.value, *port));
    co_return refuse(404, "unknown-vm", fmt::format("no vm is called {}", target.value));
  }
  const VmRecord& vm = *found.vm;
  auto decision = running.policy.decide(identity, vm, *port);
  log::info("guest_acl")
      .kv("req", request_id)
      .kv("vm", caller.name)
      .kv("target", vm.name)
      .kv("port", static_cast<unsigned>(*port))
      .kv("decision", decision.allowed ? "allow" : "deny")
      .kv("rule", decision.rule);
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

std::optional<std::uint16_t> port_field(const preamble::Request& request, bool& malformed) {
  auto text = request.field("Port");
  if (!text) return std::nullopt;
  unsigned value = 0;
  auto [p, ec] = std::from_chars(text->data(), text->data() + text->size(), value);
  if (text->empty() || ec != std::errc() || p != text->data() + text->size() || value < 1 ||
      value > 65535) {
    malformed = true;
    return std::nullopt;
  }
  return static_cast<std::uint16_t>(value);
}

// A small HTTP answer to the guest app, once the preamble's 200 is gone.
awaitable<void> answer_http(Stream& guest, unsigned status, std::string_view text,
                            std::chrono::milliseconds linger) {
  http::response<http::string_body> res{static_cast<http::status>(status), 11};
  res.set(http::field::content_type, "text/plain");
  res.keep_alive(false);
  res.body() = std::string(text) + "\n";
  res.prepare_payload();
  co_await http::async_write(guest, res, use_tuple);  // what the guest does not read is its loss
  co_await write_and_linger(guest, {}, linger);
}

struct Moved {
  std::uint64_t up = 0;    // guest → upstream
  std::uint64_t down = 0;  // upstream → guest
  std::string end = "complete";
};

// One HTTP request from the guest, its head rewritten, its body re-framed by
// Beast's serializer (so nothing after it reaches the upstream as a second
// request without hostd's headers); then the response, byte for byte, to
// the upstream's end (the request asked for Connection: close).
awaitable<Moved> forward_request(Stream& guest, beast::flat_buffer& in, Upstream& up,
                                 const VmRecord& caller, const RunningConfig& running) {
  Moved moved;
  const auto& limits = running.config.limits;
  const auto linger = running.config.inbound.linger;
  Deadline deadline(co_await asio::this_coro::executor);
  auto close_both = [&] {
    close_stream(guest);
    close_stream(up.stream);
  };
  deadline.expires_after(running.config.inbound.header_timeout, close_both);
  http::request_parser<http::buffer_body> parser;
  parser.header_limit(limits.header_bytes);
  parser.body_limit(boost::none);
  auto [hec, hn] = co_await http::async_read_header(guest, in, parser, use_tuple);
  if (hec) {
    const bool timed_out = deadline.expired();
    moved.end = timed_out ? "header_timeout" : "bad_request";
    deadline.expires_never();
    if (!timed_out && hec != asio::error::eof)
      co_await answer_http(
          guest, 400, fmt::format("hostd could not read the request: {}", hec.message()), linger);
    co_return moved;
  }
  deadline.expires_after(limits.idle_timeout, close_both);
  auto& req = parser.get();
  if (limits.max_request_body != 0 && parser.content_length() &&
      *parser.content_length() > limits.max_request_body) {
    moved.end = "too_large";
    deadline.expires_never();
    co_await answer_http(
        guest, 413,
        fmt::format("the body is over {} bytes (limits.max_request_body)", limits.max_request_body),
        linger);
    co_return moved;
  }
  // RFC 7239 §4, §5.2: the guest's own claims of who it is are not passed on;
  // the node name is quoted because it holds ':' (§6).
  req.erase(http::field::forwarded);
  req.erase("X-Forwarded-For");
  req.erase(vm_uuid_header);
  req.set(http::field::forwarded, fmt::format("for=\"vm:{}\"", caller.name));
  req.set(vm_uuid_header, caller.uuid);
  req.keep_alive(false);

  http::request_serializer<http::buffer_body> serializer{req};
  auto [wec, wn] = co_await http::async_write_header(up.stream, serializer, use_tuple);
  if (wec) {
    moved.end = "upstream_closed";
    co_return moved;
  }
  moved.up += wn;
  auto chunk = std::make_unique<std::array<char, chunk_bytes>>();
  do {
    if (!parser.is_done()) {
      req.body().data = chunk->data();
      req.body().size = chunk->size();
      auto [rec, rn] = co_await http::async_read(guest, in, parser, use_tuple);
      if (rec == http::error::need_buffer) rec = {};
      if (rec) {
        moved.end = "guest_cut";
        co_return moved;
      }
      req.body().size = chunk->size() - req.body().size;
      req.body().data = chunk->data();
      req.body().more = !parser.is_done();
    } else {
      req.body().data = nullptr;
      req.body().size = 0;
    }
    auto [bec, bn] = co_await http::async_write(up.stream, serializer, use_tuple);
    if (bec == http::error::need_buffer) bec = {};
    if (bec) {
      moved.end = "upstream_closed";
      co_return moved;
    }
    moved.up += bn;
    deadline.extend(limits.idle_timeout);
  } while (!parser.is_done() && !serializer.is_done());

  if (up.buffer.size() > 0) {
    auto [ec, n] = co_await asio::async_write(guest, up.buffer.data(), use_tuple);
    moved.down += n;
    up.buffer.consume(up.buffer.size());
  }
  for (;;) {
    auto [rec, n] =
        co_await up.stream.async_read_some(asio::buffer(chunk->data(), chunk->size()), use_tuple);
    if (n > 0) {
      auto [gec, gn] = co_await asio::async_write(guest, asio::buffer(chunk->data(), n), use_tuple);
      moved.down += gn;
      if (gec) {
        moved.end = "guest_closed";
        break;
      }
      deadline.extend(limits.idle_timeout);
    }
    if (rec) {
      if (rec != asio::error::eof) moved.end = deadline.expired() ? "idle_timeout" : "upstream_cut";
      break;
    }
  }
  deadline.expires_never();
  close_stream(up.stream);
  co_await write_and_linger(guest, {}, linger);
  co_return moved;
}

awaitable<Moved> tunnel(Stream& guest, std::string_view leftover, Upstream& up,
                        const RunningConfig& running) {
  Moved moved;
  if (!leftover.empty()) {
    auto [ec, n] = co_await asio::async_write(up.stream, asio::buffer(leftover), use_tuple);
    moved.up += n;
  }
  if (up.buffer.size() > 0) {
    auto [ec, n] = co_await asio::async_write(guest, up.buffer.data(), use_tuple);
    moved.down += n;
  }
  auto result = co_await relay(guest, up.stream, running.config.limits.idle_timeout);
  moved.up += result.a_to_b;
  moved.down += result.b_to_a;
  if (result.idle_timeout)
    moved.end = "idle_timeout";
  else if (result.error)
    moved.end = result.failed == RelayResult::Side::a ? "guest_cut" : "upstream_cut";
  close_stream(up.stream);
  close_stream(guest);
  co_return moved;
}

// A SEND naming many VMs (a group, list, range or network): which of them
// the caller may reach, decided per VM as for a client's fan-out
// (fanout_plan.hpp: a VM it may not reach and did not name is never
// revealed), each decision logged. A refusal of the whole SEND is worded
// from what the guest wrote, as for a unicast target.
using Planned = boost::system::result<FanoutPlan, GuestAnswer>;

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

// After the 200 to the SEND: the guest's one HTTP request, its head read
// here (the caller's claims of who it is dropped, X-VM-Uuid set), then the
// fan-out delivers it to every VM of the plan and streams the parts back,
// exactly as for a client; the connection closes after it.
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

}  // namespace

std::string encode_answer(const GuestAnswer& answer) {
  preamble::Response response{.status = static_cast<int>(answer.status), .reason = answer.token};
  if (!answer.reason.empty()) response.fields.emplace_back("Reason", answer.reason);
  return preamble::encode(response);
}

namespace {

// The 200 a guest's request gets once it is under way, encoded once.
const std::string& ok_answer() {
  static const std::string ok = encode_answer(GuestAnswer{});
  return ok;
}

}  // namespace

awaitable<void> serve_guest(Stream stream, GuestArrival arrival, const GuestServices& services,
                            std::uint64_t id) {
  const auto running = services.current.get();
  const std::string request_id = new_request_id();
  Caller caller_or = unknown_caller("not identified yet");
  auto refused = [&](const GuestAnswer& answer, std::string_view what) {
    log::warn("guest_refused")
        .kv("req", request_id)
        .kv("conn", static_cast<unsigned long long>(id))
        .kv("via", arrival.via)
        .kv("vm", caller_or ? caller_or->name : std::string("-"))
        .kv("verb", what)
        .kv("status", answer.status)
        .kv("reason", answer.reason);
    return write_and_linger(stream, encode_answer(answer), running->config.inbound.linger);
  };

  PreambleBuffer buffer;
  std::size_t used = 0;
  auto read = co_await within(running->config.inbound.preamble_timeout,
                              read_preamble(stream, buffer, used));
  if (!read || !read->complete) {
    log::info("guest_preamble_failed")
        .kv("conn", static_cast<unsigned long long>(id))
        .kv("via", arrival.via)
        .kv("reason", !read                   ? "timeout"
                      : used == buffer.size() ? "too_large"
                                              : "closed");
    close_stream(stream);
    co_return;
  }
  if (arrival.busy) {
    co_await refused(refuse(503, "busy",
                            fmt::format("hostd has {} guest connections open (inbound."
                                        "max_connections)",
                                        running->config.inbound.max_connections)),
                     "-");
    co_return;
  }
  // Who it is comes from where it arrived, never from what it sent.
  caller_or = arrival.identify();
  if (!caller_or) {
    co_await refused(refuse(403, "unknown-vm",
                            fmt::format("hostd does not know the calling vm ({}): {}", arrival.via,
                                        caller_or.error())),
                     "-");
    co_return;
  }
  const VmRecord& caller = *caller_or;
  const std::string_view block(buffer.data(), read->length);
  const std::string_view leftover(buffer.data() + read->length, used - read->length);
  auto request = preamble::parse_request(block);
  if (!request) {
    co_await refused(refuse(400, std::string(preamble::error_reason(request.error())),
                            "the preamble does not parse"),
                     "-");
    co_return;
  }
  const std::string verb(preamble::verb_name(request->verb));

  if (request->verb == preamble::Verb::join || request->verb == preamble::Verb::leave) {
    GuestAnswer answer =
        services.membership
            ? services.membership(caller, request->verb, request->argument)
            : refuse(501, "not-implemented", "this hostd keeps no group memberships");
    log::info("guest_membership")
        .kv("req", request_id)
        .kv("vm", caller.name)
        .kv("verb", verb)
        .kv("group", request->argument)
        .kv("status", answer.status)
        .kv("reason", answer.reason);
    co_await write_and_linger(stream, encode_answer(answer), running->config.inbound.linger);
    co_return;
  }
  if (request->verb != preamble::Verb::send) {
    co_await refused(refuse(400, "bad-verb", "a guest sends SEND, JOIN or LEAVE"), verb);
    co_return;
  }

  bool malformed_port = false;
  const auto port = port_field(*request, malformed_port);
  if (malformed_port) {
    co_await refused(refuse(400, "bad-port", "the Port field is not a port 1..65535"), verb);
    co_return;
  }
  const auto form = request->field("Form").value_or("http");
  if (form != "http" && form != "tunnel") {
    co_await refused(refuse(400, "bad-form", "the Form field is http or tunnel"), verb);
    co_return;
  }

  std::string_view target_text = request->argument;
  Reached reached = refuse(400, "bad-target", "");
  if (target_text.starts_with(host_prefix)) {
    reached = co_await reach_host_service(target_text.substr(host_prefix.size()), *running);
  } else if (auto target = parse_target(target_text); !target) {
    reached = refuse(400, "bad-target", target.error());
  } else if (names_many(*target)) {
    auto plan = plan_guest_fanout(caller, *target, port, form, *running, services, request_id);
    if (!plan) {
      co_await refused(plan.error(), verb);
      co_return;
    }
    log::info("guest_send")
        .kv("req", request_id)
        .kv("conn", static_cast<unsigned long long>(id))
        .kv("vm", caller.name)
        .kv("to", target->to_string())
        .kv("form", form)
        .kv("vms", static_cast<unsigned long long>(plan->members.size()));
    auto [aec, an] = co_await asio::async_write(stream, asio::buffer(ok_answer()), use_tuple);
    if (aec) {
      close_stream(stream);
      co_return;
    }
    co_await send_to_many(std::move(stream), leftover, caller, *target, *port, *plan, *running,
                          services, request_id, id);
    co_return;
  } else {
    reached = co_await reach_vm(caller, *target, port, *running, services, request_id);
  }
  if (!reached) {
    co_await refused(reached.error(), verb);
    co_return;
  }
  Upstream& up = *reached;
  log::info("guest_send")
      .kv("req", request_id)
      .kv("conn", static_cast<unsigned long long>(id))
      .kv("vm", caller.name)
      .kv("to", up.name)
      .kv("form", form);
  auto [aec, an] = co_await asio::async_write(stream, asio::buffer(ok_answer()), use_tuple);
  if (aec) {
    close_stream(stream);
    co_return;
  }
  const auto started = std::chrono::steady_clock::now();
  Moved moved;
  if (form == "tunnel") {
    moved = co_await tunnel(stream, leftover, up, *running);
  } else {
    beast::flat_buffer in;
    in.commit(asio::buffer_copy(in.prepare(leftover.size()), asio::buffer(leftover)));
    moved = co_await forward_request(stream, in, up, caller, *running);
  }
  log::info("guest_request")
      .kv("req", request_id)
      .kv("conn", static_cast<unsigned long long>(id))
      .kv("vm", caller.name)
      .kv("to", up.name)
      .kv("form", form)
      .kv("up", static_cast<unsigned long long>(moved.up))
      .kv("down", static_cast<unsigned long long>(moved.down))
      .kv("end", moved.end)
      .kv("ms", static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                           std::chrono::steady_clock::now() - started)
                                           .count()));
}

}  // namespace vmgate::hostd
