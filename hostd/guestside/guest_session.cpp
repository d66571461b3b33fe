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
#include "hostd/guestside/guest_caller.hpp"
#include "hostd/guestside/guest_fanout.hpp"
#include "hostd/guestside/guest_reach.hpp"
#include "hostd/guestside/guest_replies.hpp"
#include "hostd/request_id.hpp"
#include "hostd/route/target.hpp"

namespace vmgate::hostd {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
using namespace guestside;

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
    reached = co_await reach_host_service(caller, target_text.substr(host_prefix.size()), *running,
                                          request_id);
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
