#include "guestd/dispatch/channel_session.hpp"

#include <array>
#include <chrono>

#include <fmt/format.h>

#include "common/deadline.hpp"
#include "common/lingering_close.hpp"
#include "common/log.hpp"
#include "common/preamble.hpp"
#include "common/relay.hpp"
#include "common/transport.hpp"

namespace vmgate::guestd {
namespace {

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

awaitable<error_code> answer_and_linger(Stream& channel, std::string answer) {
  auto [ec, n] = co_await asio::async_write(channel, asio::buffer(answer), use_tuple);
  if (ec) co_return ec;
  co_await half_close_and_drain(channel);
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

// Makes the coming close an abort where the transport has one: TCP sends a
// reset (SO_LINGER with a zero timeout) rather than its orderly end, so the
// peer can tell a cut stream from a finished one (one ended by the
// connection: a close-delimited HTTP body). Unix and vsock streams have no
// reset; their peer sees an end either way.
void abort_on_close(Stream& stream) {
  error_code ignored;
  stream.set_option(asio::socket_base::linger(true, 0), ignored);
}

struct Outcome {
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

class ChannelSession {
 public:
  ChannelSession(Stream channel, std::shared_ptr<SessionRegistry> registry,
                 const GuestdConfig& config, std::uint64_t id, bool counted)
      : channel_(std::move(channel)),
        registry_(std::move(registry)),
        config_(config),
        id_(id),
        counted_(counted) {
    handle_.channel = &channel_;
    outcome_.peer = transport::describe_peer(channel_);
    registry_->add(id_, handle_);
  }
  ChannelSession(const ChannelSession&) = delete;
  ChannelSession& operator=(const ChannelSession&) = delete;
  ~ChannelSession() { registry_->remove(id_, counted_); }

  SessionHandle& handle() { return handle_; }

  // Everything up to the answer: true when the session is to relay.
  awaitable<bool> serve();
  // What the relay did, for the session's line.
  void note_relayed(const RelayResult& relayed) {
    outcome_.bytes_in += relayed.a_to_b;
    outcome_.bytes_out = relayed.b_to_a;
    outcome_.spliced_in = relayed.a_to_b_spliced;
    outcome_.spliced_out = relayed.b_to_a_spliced;
    if (relayed.idle_timeout) {
      outcome_.reason = "idle-timeout";
    } else if (relayed.error) {
      outcome_.reason = "relay-error";
      outcome_.error = relayed.error.message();
    }
  }
  Stream& channel() { return channel_; }
  Stream& agent() { return *agent_; }
  // An agent on TCP may write its response's head and body apart with Nagle
  // on (python's http.server does): each read from it is ACKed at once, or
  // its body waits for the delayed ACK (common/relay.cpp).
  AcknowledgeReads acknowledge() const {
    return AcknowledgeReads{.from_b = agent_kind_ == transport::Kind::tcp};
  }
  std::chrono::milliseconds idle_timeout() const { return config_.limits.idle_timeout; }
  void end();

  awaitable<void> refuse_busy() {
    co_await refuse(503, "busy");
    end();
  }

 private:
  awaitable<void> refuse(int status, std::string_view reason);

  Stream channel_;
  std::optional<Stream> agent_;
  transport::Kind agent_kind_ = transport::Kind::tcp;
  const std::shared_ptr<SessionRegistry> registry_;
  const GuestdConfig& config_;
  const std::uint64_t id_;
  const bool counted_;
  SessionHandle handle_;
  Outcome outcome_;
};

void ChannelSession::end() {
  if (handle_.closing && (outcome_.status == 0 || outcome_.status == 200))
    outcome_.reason = "shutdown";
  close_stream(channel_);
  if (agent_) close_stream(*agent_);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                                  outcome_.start);
  auto line = log::info("channel");
  line.kv("conn", static_cast<unsigned long long>(id_))
      .kv("req", outcome_.request_id)
      .kv("peer", outcome_.peer)
      .kv("port", static_cast<unsigned>(outcome_.port))
      .kv("status", outcome_.status)
      .kv("reason", outcome_.reason)
      .kv("bytes_in", static_cast<unsigned long long>(outcome_.bytes_in))
      .kv("bytes_out", static_cast<unsigned long long>(outcome_.bytes_out))
      .kv("ms", static_cast<long long>(ms.count()));
  if (outcome_.bytes_in > 0) line.kv("relay_in", outcome_.spliced_in ? "splice" : "copy");
  if (outcome_.bytes_out > 0) line.kv("relay_out", outcome_.spliced_out ? "splice" : "copy");
  if (!outcome_.error.empty()) line.kv("error", outcome_.error);
}

awaitable<void> ChannelSession::refuse(int status, std::string_view reason) {
  outcome_.status = status;
  outcome_.reason = std::string(reason);
  auto answer = preamble::encode(preamble::Response{.status = status, .reason = outcome_.reason});
  auto answered = co_await within(config_.limits.preamble_timeout,
                                  answer_and_linger(channel_, std::move(answer)));
  if (!answered) close_stream(channel_);
}

awaitable<bool> ChannelSession::serve() {
  const LimitsConfig& limits = config_.limits;

  PreambleBuffer buffer;
  std::size_t used = 0;
  auto read = co_await within(limits.preamble_timeout, read_preamble(channel_, buffer, used));
  if (!read) {
    outcome_.reason = "preamble-timeout";
    co_return false;
  }
  if (read->end == ReadEnd::closed) {
    outcome_.reason = used == 0 ? "peer-closed" : "peer-closed-in-preamble";
    if (read->error != asio::error::eof) outcome_.error = read->error.message();
    co_return false;
  }
  if (read->end == ReadEnd::too_large) {
    co_await refuse(400, preamble::error_reason(preamble::Error::too_large));
    co_return false;
  }

  auto request = preamble::parse_request(std::string_view(buffer.data(), read->length));
  if (!request) {
    co_await refuse(400, preamble::error_reason(request.error()));
    co_return false;
  }
  if (auto request_id = request->field("Request-Id")) outcome_.request_id = *request_id;
  // SEND, JOIN and LEAVE travel guest → host; guestd does not serve them.
  if (request->verb != preamble::Verb::connect) {
    co_await refuse(501, "not-implemented");
    co_return false;
  }
  outcome_.port = request->port();
  if (!config_.port_allowed(outcome_.port)) {
    co_await refuse(403, "port-not-allowed");
    co_return false;
  }

  const transport::Address target = config_.agent_for(outcome_.port);
  auto connected = co_await within(limits.agent_connect_timeout, transport::connect(target));
  if (handle_.closing) co_return false;
  if (!connected) {
    outcome_.error = fmt::format("connecting to {} timed out", target.to_string());
    co_await refuse(504, "agent-timeout");
    co_return false;
  }
  auto& [connect_ec, agent] = *connected;
  if (connect_ec) {
    outcome_.error = fmt::format("{}: {}", target.to_string(), connect_ec.message());
    co_await refuse(502, "agent-unreachable");
    co_return false;
  }
  agent_.emplace(std::move(agent));
  agent_kind_ = target.kind;
  handle_.agent = &*agent_;

  outcome_.status = 200;
  outcome_.reason = "closed";
  std::string_view leftover(buffer.data() + read->length, used - read->length);
  auto forwarded =
      co_await within(limits.idle_timeout, answer_and_forward(channel_, *agent_, leftover));
  if (!forwarded || *forwarded) {
    outcome_.reason = forwarded ? "relay-error" : "idle-timeout";
    if (forwarded) outcome_.error = forwarded->message();
    co_return false;
  }
  outcome_.bytes_in = leftover.size();
  co_return true;
}

}  // namespace

void SessionHandle::close() {
  closing = true;
  if (channel) close_stream(*channel);
  if (agent) close_stream(*agent);
}

namespace {

// The relay, owned by its completion handler rather than by a coroutine: a
// channel that sits idle for hours (a tunnel, a pooled channel) holds the
// session, the relay's state and its two readiness waits, and no coroutine
// frame. (bench/idle_connections.py, 10,000 idle tunnels, guestd RSS: 4.5 KiB
// per tunnel with the session's coroutines nested four deep, 3.8 KiB with the
// relay awaited in the session's own frame, 2.2 KiB so.)
void relay_session(std::unique_ptr<ChannelSession> session) {
  ChannelSession& s = *session;
  s.handle().relaying = true;
  start_relay(s.channel(), s.agent(), s.idle_timeout(), s.acknowledge(),
              relay_done([session = std::move(session)](RelayResult relayed) {
                session->note_relayed(relayed);
                // One side failed before its own end (a reset): what it was
                // sending was cut, so the other side's stream is cut too, not
                // ended in order. Not after its end: what it sent may still
                // be on its way, and a reset would drop it. The relay's first
                // stream is the channel.
                if (relayed.failed == RelayResult::Side::b && !relayed.b_ended)
                  abort_on_close(session->channel());
                if (relayed.failed == RelayResult::Side::a && !relayed.a_ended)
                  abort_on_close(session->agent());
                session->end();
              }));
}

}  // namespace

awaitable<void> serve_channel(Stream channel, std::shared_ptr<SessionRegistry> registry,
                              const GuestdConfig& config, std::uint64_t id, bool busy) {
  auto session =
      std::make_unique<ChannelSession>(std::move(channel), std::move(registry), config, id, !busy);
  if (busy) {
    co_await session->refuse_busy();
    co_return;
  }
  // serve()'s frame (the preamble buffer, the parsed request) is gone before
  // the relay starts, and this one ends as it does.
  if (!co_await session->serve()) {
    session->end();
    co_return;
  }
  relay_session(std::move(session));
}

}  // namespace vmgate::guestd
