#include "guestd/dispatch/channel_session.hpp"

#include <array>
#include <chrono>
#include <functional>
#include <variant>

#include <fmt/format.h>

#include "common/deadline.hpp"
#include "common/log.hpp"
#include "common/preamble.hpp"
#include "common/relay.hpp"
#include "common/transport.hpp"

namespace vmgate::guestd {
namespace {

using namespace asio::experimental::awaitable_operators;

// After a refusal, what the peer still sends is read and dropped, up to this
// much, so that closing does not reset the connection and destroy the answer
// in flight (a close with unread data sends RST on TCP and vsock).
constexpr std::size_t linger_max_bytes = 64 * 1024;

// The preamble and whatever followed it in the same reads; the preamble must
// end within the first preamble::max_bytes, so that is all we ever buffer.
using PreambleBuffer = std::array<char, preamble::max_bytes>;

enum class ReadEnd { complete, too_large, closed };
struct PreambleRead {
  ReadEnd end = ReadEnd::closed;
  std::size_t length = 0;  // of the preamble, terminator included
  error_code error;        // why the peer's side ended (closed)
};

awaitable<PreambleRead> read_preamble(Stream& channel, PreambleBuffer& buffer, std::size_t& used) {
  for (;;) {
    auto [ec, n] = co_await channel.async_read_some(
        asio::buffer(buffer.data() + used, buffer.size() - used), use_tuple);
    used += n;
    if (auto end = preamble::find_end(std::string_view(buffer.data(), used)))
      co_return PreambleRead{ReadEnd::complete, *end, {}};
    if (ec) co_return PreambleRead{ReadEnd::closed, 0, ec};
    if (used == buffer.size()) co_return PreambleRead{ReadEnd::too_large, 0, {}};
  }
}

// Runs `work` under a deadline. Empty when the deadline passed first; then
// `on_expire` has run (and `work` was cancelled).
template <class T>
awaitable<std::optional<T>> within(std::chrono::milliseconds limit, awaitable<T> work,
                                   std::function<void()> on_expire) {
  Deadline deadline(co_await asio::this_coro::executor);
  deadline.expires_after(limit);
  auto outcome = co_await (std::move(work) || deadline.watch(std::move(on_expire)));
  if (deadline.expired() || outcome.index() != 0) co_return std::nullopt;
  co_return std::get<0>(std::move(outcome));
}

awaitable<error_code> answer_and_linger(Stream& channel, std::string answer) {
  auto [ec, n] = co_await asio::async_write(channel, asio::buffer(answer), use_tuple);
  if (ec) co_return ec;
  error_code ignored;
  channel.shutdown(asio::socket_base::shutdown_send, ignored);
  std::array<char, 4096> sink;
  std::size_t drained = 0;
  while (drained < linger_max_bytes) {
    auto [read_ec, got] = co_await channel.async_read_some(asio::buffer(sink), use_tuple);
    drained += got;
    if (read_ec) break;
  }
  co_return error_code{};
}

// The 200 answer to the channel, then the bytes that followed the preamble
// to the agent.
awaitable<error_code> answer_and_forward(Stream& channel, Stream& agent,
                                         std::string_view leftover) {
  static const std::string ok = preamble::encode(preamble::Response{});
  auto [ec, n] = co_await asio::async_write(channel, asio::buffer(ok), use_tuple);
  if (ec || leftover.empty()) co_return ec;
  auto [agent_ec, m] = co_await asio::async_write(agent, asio::buffer(leftover), use_tuple);
  co_return agent_ec;
}

void close_stream(Stream& stream) {
  error_code ignored;
  stream.close(ignored);
}

}  // namespace

struct ChannelSession::Outcome {
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  std::string peer;
  std::string request_id = "-";
  std::uint16_t port = 0;
  int status = 0;
  std::string reason;
  std::string error;  // detail for the operator, never sent to the peer
  std::uint64_t bytes_in = 0;
  std::uint64_t bytes_out = 0;
  bool spliced_in = false;  // the relay moved bytes_in with splice(2)
  bool spliced_out = false;
};

ChannelSession::ChannelSession(Stream channel, std::shared_ptr<const GuestdConfig> config,
                               std::uint64_t id)
    : channel_(std::move(channel)), config_(std::move(config)), id_(id) {}

void ChannelSession::close() {
  closing_ = true;
  close_stream(channel_);
  if (agent_) close_stream(*agent_);
}

awaitable<void> ChannelSession::run() {
  Outcome outcome;
  outcome.peer = transport::describe_peer(channel_);
  if (!co_await serve(outcome)) {
    end(outcome);
    co_return;
  }
  // The relay is handed off and this coroutine ends: a tunnel that sits idle
  // for hours then holds the relay's small state and this session, not
  // serve()'s frame (the preamble buffer, the parsed request) nor this one.
  relaying_ = true;
  start_relay(channel_, *agent_, config_->limits.idle_timeout,
              [self = shared_from_this(), outcome](const RelayResult& relayed) mutable {
                outcome.bytes_in += relayed.a_to_b;
                outcome.bytes_out = relayed.b_to_a;
                outcome.spliced_in = relayed.a_to_b_spliced;
                outcome.spliced_out = relayed.b_to_a_spliced;
                if (relayed.idle_timeout) {
                  outcome.reason = "idle-timeout";
                } else if (relayed.error) {
                  outcome.reason = "relay-error";
                  outcome.error = relayed.error.message();
                }
                self->end(outcome);
                self->notify_end();
              });
}

void ChannelSession::end(Outcome& outcome) {
  if (closing_ && (outcome.status == 0 || outcome.status == 200)) outcome.reason = "shutdown";
  close_stream(channel_);
  if (agent_) close_stream(*agent_);
  log_end(outcome);
}

awaitable<void> ChannelSession::refuse_busy() {
  Outcome outcome;
  outcome.peer = transport::describe_peer(channel_);
  co_await refuse(outcome, 503, "busy");
  close_stream(channel_);
  log_end(outcome);
}

awaitable<void> ChannelSession::refuse(Outcome& outcome, int status, std::string_view reason) {
  outcome.status = status;
  outcome.reason = std::string(reason);
  auto answer = preamble::encode(preamble::Response{.status = status, .reason = outcome.reason});
  co_await within(config_->limits.preamble_timeout, answer_and_linger(channel_, std::move(answer)),
                  [this] { close_stream(channel_); });
}

awaitable<bool> ChannelSession::serve(Outcome& outcome) {
  const LimitsConfig& limits = config_->limits;

  PreambleBuffer buffer;
  std::size_t used = 0;
  auto read = co_await within(limits.preamble_timeout, read_preamble(channel_, buffer, used),
                              [this] { close_stream(channel_); });
  if (!read) {
    outcome.reason = "preamble-timeout";
    co_return false;
  }
  if (read->end == ReadEnd::closed) {
    outcome.reason = used == 0 ? "peer-closed" : "peer-closed-in-preamble";
    if (read->error != asio::error::eof) outcome.error = read->error.message();
    co_return false;
  }
  if (read->end == ReadEnd::too_large) {
    co_await refuse(outcome, 400, preamble::error_reason(preamble::Error::too_large));
    co_return false;
  }

  auto request = preamble::parse_request(std::string_view(buffer.data(), read->length));
  if (!request) {
    co_await refuse(outcome, 400, preamble::error_reason(request.error()));
    co_return false;
  }
  if (auto request_id = request->field("Request-Id")) outcome.request_id = *request_id;
  // SEND, JOIN and LEAVE travel guest → host; guestd does not serve them.
  if (request->verb != preamble::Verb::connect) {
    co_await refuse(outcome, 501, "not-implemented");
    co_return false;
  }
  outcome.port = request->port();
  if (!config_->port_allowed(outcome.port)) {
    co_await refuse(outcome, 403, "port-not-allowed");
    co_return false;
  }

  const transport::Address target = config_->agent_for(outcome.port);
  auto connected = co_await within(limits.agent_connect_timeout, transport::connect(target), {});
  if (closing_) co_return false;
  if (!connected) {
    outcome.error = fmt::format("connecting to {} timed out", target.to_string());
    co_await refuse(outcome, 504, "agent-timeout");
    co_return false;
  }
  auto& [connect_ec, agent] = *connected;
  if (connect_ec) {
    outcome.error = fmt::format("{}: {}", target.to_string(), connect_ec.message());
    co_await refuse(outcome, 502, "agent-unreachable");
    co_return false;
  }
  agent_.emplace(std::move(agent));

  outcome.status = 200;
  outcome.reason = "closed";
  std::string_view leftover(buffer.data() + read->length, used - read->length);
  auto forwarded =
      co_await within(limits.idle_timeout, answer_and_forward(channel_, *agent_, leftover), [this] {
        close_stream(channel_);
        close_stream(*agent_);
      });
  if (!forwarded || *forwarded) {
    outcome.reason = forwarded ? "relay-error" : "idle-timeout";
    if (forwarded) outcome.error = forwarded->message();
    co_return false;
  }
  outcome.bytes_in = leftover.size();
  co_return true;
}

void ChannelSession::log_end(const Outcome& outcome) const {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                                  outcome.start);
  auto line = log::info("channel");
  line.kv("conn", static_cast<unsigned long long>(id_))
      .kv("req", outcome.request_id)
      .kv("peer", outcome.peer)
      .kv("port", static_cast<unsigned>(outcome.port))
      .kv("status", outcome.status)
      .kv("reason", outcome.reason)
      .kv("bytes_in", static_cast<unsigned long long>(outcome.bytes_in))
      .kv("bytes_out", static_cast<unsigned long long>(outcome.bytes_out))
      .kv("ms", static_cast<long long>(ms.count()));
  if (outcome.bytes_in > 0) line.kv("relay_in", outcome.spliced_in ? "splice" : "copy");
  if (outcome.bytes_out > 0) line.kv("relay_out", outcome.spliced_out ? "splice" : "copy");
  if (!outcome.error.empty()) line.kv("error", outcome.error);
}

}  // namespace vmgate::guestd
