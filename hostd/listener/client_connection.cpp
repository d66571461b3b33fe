#include "hostd/listener/client_connection.hpp"

#include <chrono>
#include <optional>

#include <fmt/format.h>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "common/deadline.hpp"
#include "common/transport.hpp"
#include "hostd/admission/admission.hpp"
#include "hostd/channel/channel.hpp"
#include "hostd/proxy/error_response.hpp"
#include "hostd/proxy/exchange.hpp"
#include "hostd/proxy/request_record.hpp"
#include "hostd/proxy/tunnel.hpp"
#include "hostd/route/header_rewrite.hpp"

namespace vmgate::hostd {
namespace beast = boost::beast;
namespace http = beast::http;

namespace {

using clock = std::chrono::steady_clock;
using ChannelResult = boost::system::result<Channel, Refusal>;

Identity identity_of(const ListenerConfig& listener) {
  if (listener.trusted) return Identity{Identity::Kind::trusted_listener, listener.name};
  return Identity{};
}

// A channel the connection keeps between its requests, while the agent
// keeps it alive: the next request to the same VM and port goes on it.
struct KeptChannel {
  Channel channel;
  clock::time_point since;
};

class ClientConnection {
 public:
  ClientConnection(Stream client, const ConnectionContext& context, std::uint64_t id)
      : client_(std::move(client)),
        ctx_(context),
        id_(id),
        peer_(transport::describe_peer(client_)),
        identity_(identity_of(context.listener)),
        admission_{context.config.routing, context.config.channel, context.config.limits,
                   context.directory, context.policy},
        deadline_(client_.get_executor()) {}
  ClientConnection(const ClientConnection&) = delete;
  ClientConnection& operator=(const ClientConnection&) = delete;

  // The connection's life: its requests one after another, then a tunnel if
  // one was asked for. A tunnel runs here, after the frames of the request
  // that set it up are gone: an idle tunnel keeps no parser, route or VM
  // record alive.
  awaitable<void> run() {
    for (;;) {
      // Declared first, so destroyed last: the record is logged before the
      // tunnel's channel closes and the open-tunnels gauge drops, and either
      // of those (or guestd's line for the channel) means it is written.
      std::optional<Tunnel> tunnel;
      std::optional<RequestRecord> record;
      const bool more = co_await serve_request(record, tunnel);
      if (tunnel) {
        co_await relay_tunnel(client_, *tunnel, *record, limits().idle_timeout);
        break;
      }
      if (!more) break;
    }
    close();
  }

 private:
  const LimitsConfig& limits() const { return ctx_.config.limits; }

  // Past the connection's deadline the client socket closes, so whatever is
  // pending on it ends.
  void close_on_expiry(clock::duration d) {
    deadline_.expires_after(d, [this] {
      error_code ignored;
      client_.close(ignored);
    });
  }

  RequestRecord& start_record(std::optional<RequestRecord>& record) {
    RequestRecord& rec = record.emplace();
    rec.conn = id_;
    rec.listener = ctx_.listener.name;
    rec.client = peer_;
    rec.metrics = ctx_.metrics;
    return rec;
  }

  // One request. True when the connection can carry another; a CONNECT that
  // was established leaves `tunnel` set.
  awaitable<bool> serve_request(std::optional<RequestRecord>& record,
                                std::optional<Tunnel>& tunnel) {
    close_on_expiry(limits().header_timeout);
    http::request_parser<http::empty_body> head;
    head.header_limit(limits().header_bytes);
    head.body_limit(boost::none);
    auto [ec, n] = co_await http::async_read_header(client_, buffer_, head, use_tuple);
    deadline_.expires_never();
    if (ec) co_return co_await refuse_unreadable_head(ec, head, record);

    RequestRecord& rec = start_record(record);
    auto& req = head.get();
    rec.method = std::string(req.method_string());
    const bool has_body = !head.is_done();
    // An error answer can keep the connection only if no request body is left unread.
    const bool keep_after_error = req.keep_alive() && !has_body;

    std::optional<std::uint64_t> content_length;
    if (auto declared = head.content_length()) content_length = *declared;
    const AdmissionRequest request{.head = req,
                                   .content_length = content_length,
                                   .guest_port = ctx_.listener.guest_port,
                                   .identity = identity_};
    auto admitted = admit(request, admission_);
    if (!admitted) {
      const Refused& refused = admitted.error();
      if (refused.route) note_route(rec, *refused.route);
      if (refused.vm) rec.vm = refused.vm->name;
      co_return co_await refuse(rec, refused.refusal, req.version(),
                                keep_after_error && refused.refusal.status != 413);
    }
    note_route(rec, admitted->route);
    rec.vm = admitted->destination.vm.name;
    if (admitted->route.form == RouteForm::connect) {
      co_await open_tunnel(rec, *admitted, req.version(), tunnel);
      co_return false;
    }
    co_return co_await forward(rec, *admitted, head);
  }

  static void note_route(RequestRecord& rec, const Route& route) {
    rec.form = route_form_name(route.form);
    rec.target = route.target.to_string();
    rec.port = route.port;
  }

  // A head that could not be read: EOF and timeouts end quietly, the rest get 400/431.
  awaitable<bool> refuse_unreadable_head(error_code ec,
                                         http::request_parser<http::empty_body>& head,
                                         std::optional<RequestRecord>& record) {
    if (ec == http::error::end_of_stream || ec == asio::error::eof ||
        ec == asio::error::operation_aborted || ec == asio::error::bad_descriptor ||
        ec == asio::error::connection_reset || ec == http::error::partial_message)
      co_return false;
    RequestRecord& rec = start_record(record);
    if (head.is_header_done()) rec.method = std::string(head.get().method_string());
    Refusal refusal =
        ec == http::error::header_limit
            ? Refusal{431, fmt::format("request head exceeds {} bytes", limits().header_bytes)}
            : Refusal{400, fmt::format("malformed request: {}", ec.message())};
    co_await refuse(rec, refusal, 11, false);
    co_return false;
  }

  awaitable<bool> refuse(RequestRecord& rec, const Refusal& refusal, unsigned version,
                         bool keep_alive) {
    rec.status = refusal.status;
    rec.reason = refusal.reason;
    auto res = make_error_response(refusal, rec.id, version, keep_alive);
    close_on_expiry(limits().idle_timeout);
    auto [ec, n] = co_await http::async_write(client_, res, use_tuple);
    deadline_.expires_never();
    rec.bytes_out += n;
    co_return !ec && keep_alive;
  }

  // The kept channel goes back to the pool if nothing arrived on it since its
  // last exchange; otherwise it is closed.
  void release_kept() {
    if (!kept_) return;
    KeptChannel kept = std::move(*kept_);
    kept_.reset();
    if (ctx_.pool && kept.channel.buffer.size() == 0) {
      ctx_.pool->put(kept.channel.key, std::move(kept.channel.stream), kept.since);
    } else {
      error_code ignored;
      kept.channel.stream.close(ignored);
    }
  }

  // The connection's kept channel, else a pooled one, else a new one.
  // `reuse` false: a retry after a reused channel failed, which wants a new one.
  awaitable<ChannelResult> take_channel(RequestRecord& rec, const Destination& destination,
                                        std::uint16_t port, bool reuse) {
    const auto now = clock::now();
    ChannelKey key = ChannelKey::of(destination.vm, port);
    rec.reused_channel = false;
    if (reuse && kept_ && kept_->channel.key == key && !idle_too_long(kept_->since, now) &&
        idle_channel_usable(kept_->channel.stream)) {
      Channel channel = std::move(kept_->channel);
      kept_.reset();
      co_return reused(rec, std::move(channel));
    }
    release_kept();
    if (ctx_.pool && reuse) {
      if (auto pooled = ctx_.pool->take(key, client_.get_executor(), now))
        co_return reused(rec, Channel{std::move(*pooled), {}, std::move(key)});
    }
    ChannelConnectTimer connect_timer(ctx_.metrics);
    auto channel = co_await open_channel(ctx_.config.channel, destination.vm, destination.address,
                                         port, peer_, rec.id);
    connect_timer.done(bool(channel));
    if (channel && ctx_.metrics) ctx_.metrics->channel_used(false);
    co_return channel;
  }

  ChannelResult reused(RequestRecord& rec, Channel channel) {
    rec.reused_channel = true;
    if (ctx_.metrics) ctx_.metrics->channel_used(true);
    return channel;
  }

  bool idle_too_long(clock::time_point since, clock::time_point now) const {
    return ctx_.pool && now - since >= ctx_.pool->idle_timeout();
  }

  // CONNECT: a new channel (never a kept one: the agent sees a fresh
  // connection), then "200 Connection established".
  awaitable<void> open_tunnel(RequestRecord& rec, const Admitted& admitted, unsigned version,
                              std::optional<Tunnel>& tunnel) {
    // The connection ends with the tunnel: its idle channel can serve others now.
    release_kept();
    const Destination& destination = admitted.destination;
    ChannelConnectTimer connect_timer(ctx_.metrics);
    auto channel = co_await open_channel(ctx_.config.channel, destination.vm, destination.address,
                                         admitted.route.port, peer_, rec.id);
    connect_timer.done(bool(channel));
    if (!channel) {
      Refusal refusal = channel.error();
      co_await refuse(rec, refusal, version, false);
      co_return;
    }
    tunnel.emplace(ctx_.metrics, std::move(*channel));
    if (!co_await establish_tunnel(client_, buffer_, *tunnel, rec)) tunnel.reset();
  }

  awaitable<bool> forward(RequestRecord& rec, const Admitted& admitted,
                          http::request_parser<http::empty_body>& head) {
    http::request_parser<http::buffer_body> parser{std::move(head)};
    if (limits().max_request_body > 0) parser.body_limit(limits().max_request_body);
    auto& msg = parser.get();
    ExchangeRequest request{.parser = parser,
                            .has_body = !parser.is_done(),
                            .is_head = msg.method() == http::verb::head,
                            .client_keep_alive = msg.keep_alive(),
                            .client_version = msg.version()};
    rewrite_request(msg, admitted.route, ctx_.config.routing.vm_header, peer_);
    if (request.has_body) {
      request.whole = take_buffered_body(parser, buffer_, chunks_);
      if (request.whole.failed) {
        Refusal refusal{400, "malformed request body"};
        co_await refuse(rec, refusal, request.client_version, false);
        co_return false;
      }
      rec.bytes_in += request.whole.size;
    }

    for (int attempt = 0;; ++attempt) {
      auto channel =
          co_await take_channel(rec, admitted.destination, admitted.route.port, attempt == 0);
      if (!channel) {
        Refusal refusal = std::move(channel.error());
        const bool keep = request.client_keep_alive && !request.has_body;
        co_return co_await refuse(rec, refusal, request.client_version, keep);
      }
      ExchangeEnds ends{.client = client_,
                        .client_buffer = buffer_,
                        .channel = *channel,
                        .deadline = deadline_,
                        .chunks = chunks_,
                        .limits = limits()};
      ExchangeOutcome outcome = co_await run_exchange(ends, request, rec, admitted.destination.vm);
      // A kept channel the agent closed at that moment fails before any
      // answer; a request without a body can safely go again on a new one.
      if (outcome.end == ExchangeEnd::channel_failed && rec.reused_channel && !request.has_body &&
          attempt == 0)
        continue;
      co_return co_await conclude(rec, request, std::move(*channel), outcome);
    }
  }

  // After an exchange: keep the channel if it can carry another, answer the
  // client if the agent could not.
  awaitable<bool> conclude(RequestRecord& rec, const ExchangeRequest& request, Channel channel,
                           const ExchangeOutcome& outcome) {
    if (outcome.channel_reusable()) kept_.emplace(KeptChannel{std::move(channel), clock::now()});
    if (outcome.answered()) co_return outcome.client_continues();
    if (outcome.end == ExchangeEnd::client_gone) {
      rec.status = 499;
      rec.reason = "client closed the connection";
      co_return false;
    }
    co_await refuse(rec, outcome.refusal, request.client_version, false);
    co_return false;
  }

  void close() {
    deadline_.expires_never();
    error_code ignored;
    client_.shutdown(asio::socket_base::shutdown_send, ignored);
    client_.close(ignored);
    release_kept();
  }

  Stream client_;
  const ConnectionContext& ctx_;
  const std::uint64_t id_;
  const std::string peer_;
  const Identity identity_;
  const AdmissionContext admission_;
  // Client bytes read past the current head (pipelined requests, tunnel data);
  // it must outlive every read on the connection.
  beast::flat_buffer buffer_;
  Deadline deadline_;
  std::optional<KeptChannel> kept_;
  BodyChunks chunks_;
};

}  // namespace

awaitable<void> serve_client(Stream client, const ConnectionContext& context, std::uint64_t id,
                             [[maybe_unused]] ConnectionSlot slot) {
  ClientConnection connection(std::move(client), context, id);
  co_await connection.run();
}

}  // namespace vmgate::hostd
