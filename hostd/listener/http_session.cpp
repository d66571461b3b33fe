#include "hostd/listener/http_session.hpp"

#include <chrono>
#include <memory>
#include <optional>

#include <fmt/format.h>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "common/relay.hpp"
#include "common/transport.hpp"
#include "common/watchdog.hpp"
#include "hostd/channel/channel.hpp"
#include "hostd/listener/error_response.hpp"
#include "hostd/listener/exchange.hpp"
#include "hostd/listener/request_record.hpp"
#include "hostd/route/header_rewrite.hpp"
#include "hostd/route/request_route.hpp"

namespace vmgate::hostd {
namespace beast = boost::beast;
namespace http = beast::http;

namespace {

using clock = std::chrono::steady_clock;

class ClientSession : public std::enable_shared_from_this<ClientSession> {
 public:
  ClientSession(Stream client, const SessionContext& context, std::function<void()> on_end)
      : client_(std::move(client)),
        ctx_(context),
        peer_(transport::describe_peer(client_)),
        on_end_(std::move(on_end)) {}
  ClientSession(const ClientSession&) = delete;
  ClientSession& operator=(const ClientSession&) = delete;
  ~ClientSession() {
    if (on_end_) on_end_();
  }

  awaitable<void> run() {
    watchdog_ = Watchdog::start(client_.get_executor());

    struct StopWatchdog {
      Watchdog& w;
      ~StopWatchdog() { w.stop(); }
    } stop{*watchdog_};
    while (co_await serve_one()) {
    }
    if (tunnel_) {
      hand_off_tunnel();
      co_return;
    }
    close_client();
  }

 private:
  const LimitsConfig& limits() const { return ctx_.config.limits; }

  awaitable<bool> serve_one() {
    watchdog_->expires_after(limits().header_timeout, [this] {
      error_code ignored;
      client_.close(ignored);
    });
    http::request_parser<http::empty_body> head;
    head.header_limit(limits().header_bytes);
    head.body_limit(boost::none);
    auto [ec, n] = co_await http::async_read_header(client_, buffer_, head, use_tuple);
    watchdog_->expires_never();
    if (ec) co_return co_await refuse_unreadable_head(ec, head);

    RequestRecord rec;
    rec.listener = ctx_.listener.name;
    rec.client = peer_;
    rec.metrics = ctx_.metrics;
    auto& req = head.get();
    rec.method = std::string(req.method_string());
    const bool has_body = !head.is_done();
    // An error answer can keep the connection only if no request body is left unread.
    const bool keep_after_error = req.keep_alive() && !has_body;

    auto admitted = admit(rec, head);
    if (!admitted) {
      Refusal refusal = std::move(admitted.error());
      co_return co_await refuse(rec, refusal, req.version(),
                                keep_after_error && refusal.status != 413);
    }
    const Route& route = admitted->route;
    const VmRecord& vm = admitted->vm;
    if (route.form == RouteForm::connect) {
      co_await tunnel(rec, vm, route.port, req.version());
      co_return false;
    }
    co_return co_await forward(rec, vm, route, head);
  }

  struct Admitted {
    Route route;
    VmRecord vm;
  };

  // Route, resolve and check limits; everything a request needs before a
  // channel is opened. (A plain function: GCC 12 mishandles temporaries built
  // inside co_await expressions, so refusals are made here, not inline.)
  boost::system::result<Admitted, Refusal> admit(
      RequestRecord& rec, const http::request_parser<http::empty_body>& head) {
    const auto& req = head.get();
    auto route = route_request(req, RouteOptions{.vm_header = ctx_.config.routing.vm_header,
                                                 .host_suffix = ctx_.config.routing.host_suffix,
                                                 .guest_port = ctx_.listener.guest_port});
    if (!route) return Refusal{400, route.error()};
    rec.form = route_form_name(route->form);
    rec.target = route->target.to_string();
    rec.port = route->port;
    if (!route->target.single_vm())
      return Refusal{501,
                     "group, network, list and HOST/NAME targets are not served by this hostd yet"};
    auto lookup = ctx_.directory.find(route->target.value);
    if (lookup.status == LookupStatus::not_found)
      return Refusal{404, fmt::format("vm '{}' is not known to this host", route->target.value)};
    if (lookup.status == LookupStatus::ambiguous) {
      std::string candidates;
      for (const auto& c : lookup.candidates)
        candidates += (candidates.empty() ? "" : ", ") + c;
      return Refusal{
          409, fmt::format("'{}' matches more than one VM: {}", route->target.value, candidates)};
    }
    rec.vm = lookup.vm->name;
    if (lookup.vm->state != VmState::running)
      return Refusal{503,
                     fmt::format("vm {} is {}", lookup.vm->name, state_name(lookup.vm->state))};
    if (limits().max_request_body > 0 && head.content_length() &&
        *head.content_length() > limits().max_request_body) {
      return Refusal{413, fmt::format("request body of {} bytes exceeds the limit of {}",
                                      *head.content_length(), limits().max_request_body)};
    }
    return Admitted{std::move(*route), std::move(*lookup.vm)};
  }

  // A head that could not be read: EOF and timeouts end quietly, the rest get 400/431.
  awaitable<bool> refuse_unreadable_head(error_code ec,
                                         http::request_parser<http::empty_body>& head) {
    if (ec == http::error::end_of_stream || ec == asio::error::eof ||
        ec == asio::error::operation_aborted || ec == asio::error::bad_descriptor ||
        ec == asio::error::connection_reset || ec == http::error::partial_message)
      co_return false;
    RequestRecord rec;
    rec.listener = ctx_.listener.name;
    rec.client = peer_;
    rec.metrics = ctx_.metrics;
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
    watchdog_->expires_after(limits().idle_timeout, [this] {
      error_code ignored;
      client_.close(ignored);
    });
    auto [ec, n] = co_await http::async_write(client_, res, use_tuple);
    watchdog_->expires_never();
    rec.bytes_out += n;
    co_return !ec && keep_alive;
  }

  // The channel goes back to the pool if its last exchange ended cleanly and
  // nothing arrived on it since; otherwise it is closed.
  void release_upstream() {
    if (!upstream_) return;
    if (ctx_.pool && upstream_->idle && upstream_->buffer.size() == 0) {
      ctx_.pool->put(upstream_->key, std::move(upstream_->stream), upstream_->idle_since);
    } else {
      error_code ignored;
      upstream_->stream.close(ignored);
    }
    upstream_.reset();
  }

  bool idle_too_long(const Upstream& up, clock::time_point now) const {
    return ctx_.pool && now - up.idle_since >= ctx_.pool->idle_timeout();
  }

  // `reuse` false: a retry after a reused channel failed, which wants a new one.
  awaitable<std::optional<Refusal>> ensure_upstream(RequestRecord& rec, const VmRecord& vm,
                                                    std::uint16_t port, bool reuse) {
    const auto now = clock::now();
    rec.reused_channel = false;
    if (reuse && upstream_ && upstream_->idle && upstream_->key.matches(vm, port) &&
        !idle_too_long(*upstream_, now) && idle_channel_usable(upstream_->stream)) {
      upstream_->idle = false;
      rec.reused_channel = true;
      if (ctx_.metrics) ctx_.metrics->channel_used(true);
      co_return std::nullopt;
    }
    release_upstream();
    ChannelKey key = ChannelKey::of(vm, port);
    if (ctx_.pool && reuse) {
      if (auto pooled = ctx_.pool->take(key, client_.get_executor(), now)) {
        upstream_.emplace(Upstream{std::move(*pooled), {}, std::move(key)});
        rec.reused_channel = true;
        if (ctx_.metrics) ctx_.metrics->channel_used(true);
        co_return std::nullopt;
      }
    }
    ChannelConnectTimer connect_timer(ctx_.metrics);
    auto channel = co_await open_channel(ctx_.config.channel, vm, port, peer_, rec.id);
    connect_timer.done(bool(channel));
    if (!channel) co_return channel.error();
    if (ctx_.metrics) ctx_.metrics->channel_used(false);
    upstream_.emplace(Upstream{std::move(channel->stream), {}, std::move(key)});
    auto leftover = channel->leftover;
    if (!leftover.empty()) {
      auto dest = upstream_->buffer.prepare(leftover.size());
      asio::buffer_copy(dest, asio::buffer(leftover));
      upstream_->buffer.commit(leftover.size());
    }
    co_return std::nullopt;
  }

  // A CONNECT tunnel once established. The session holds it, not the frames
  // that set it up: an idle tunnel then keeps no request parser, route or VM
  // record alive, only this and the relay's own small state.
  //
  // Members end in reverse order: the record is logged before the channel
  // closes and the open-tunnels gauge drops, so either of those (or guestd's
  // line for the channel) means hostd's record of the tunnel is written.
  struct EstablishedTunnel {
    OpenTunnel gauge;
    Stream channel;
    RequestRecord record;
  };

  // CONNECT: opens the channel and answers "200 Connection established"; the
  // raw relay runs from run() once this request's frames are gone.
  awaitable<void> tunnel(RequestRecord& rec, const VmRecord& vm, std::uint16_t port,
                         unsigned version) {
    // The connection ends with the tunnel: its idle channel can serve others now.
    release_upstream();
    ChannelConnectTimer connect_timer(ctx_.metrics);
    auto channel = co_await open_channel(ctx_.config.channel, vm, port, peer_, rec.id);
    connect_timer.done(bool(channel));
    if (!channel) {
      Refusal refusal = channel.error();
      co_await refuse(rec, refusal, version, false);
      co_return;
    }
    rec.status = 200;
    tunnel_.reset(new EstablishedTunnel{OpenTunnel(ctx_.metrics), std::move(channel->stream), rec});
    rec.handed_over = true;
    RequestRecord& record = tunnel_->record;
    static constexpr std::string_view established = "HTTP/1.1 200 Connection established\r\n\r\n";
    auto [ec, n] = co_await asio::async_write(client_, asio::buffer(established), use_tuple);
    if (ec) {
      tunnel_.reset();
      co_return;
    }
    // Bytes that arrived with the head belong to the tunnel.
    if (buffer_.size() > 0) {
      auto [wec, wn] = co_await asio::async_write(tunnel_->channel, buffer_.data(), use_tuple);
      if (wec) {
        tunnel_.reset();
        co_return;
      }
      record.bytes_in += wn;
      buffer_.consume(wn);
    }
    buffer_.shrink_to_fit();  // the relay reads on its own from here
    if (!channel->leftover.empty()) {
      auto [wec, wn] =
          co_await asio::async_write(client_, asio::buffer(channel->leftover), use_tuple);
      if (wec) {
        tunnel_.reset();
        co_return;
      }
      record.bytes_out += wn;
    }
  }

  // The relay holds the session (and so the connection's slot) until the
  // tunnel ends; no coroutine of this session waits meanwhile.
  void hand_off_tunnel() {
    start_relay(client_, tunnel_->channel, limits().idle_timeout,
                [self = shared_from_this()](const RelayResult& result) {
                  auto& record = self->tunnel_->record;
                  record.bytes_in += result.a_to_b;
                  record.bytes_out += result.b_to_a;
                  if (result.idle_timeout) record.reason = "idle timeout";
                  self->tunnel_.reset();  // closes the channel, logs the request
                  self->close_client();
                });
  }

  void close_client() {
    error_code ignored;
    client_.shutdown(asio::socket_base::shutdown_send, ignored);
    client_.close(ignored);
    release_upstream();
  }

  awaitable<bool> forward(RequestRecord& rec, const VmRecord& vm, const Route& route,
                          http::request_parser<http::empty_body>& head) {
    http::request_parser<http::buffer_body> parser{std::move(head)};
    if (limits().max_request_body > 0) parser.body_limit(limits().max_request_body);
    auto& msg = parser.get();
    ExchangeRequest request{.parser = parser,
                            .has_body = !parser.is_done(),
                            .is_head = msg.method() == http::verb::head,
                            .client_keep_alive = msg.keep_alive(),
                            .client_version = msg.version()};
    rewrite_request(msg, route, ctx_.config.routing.vm_header, peer_);
    if (request.has_body) {
      request.whole = take_buffered_body(parser, buffer_, chunks_);
      if (request.whole.failed) {
        Refusal refusal{400, "malformed request body"};
        co_await refuse(rec, refusal, request.client_version, false);
        co_return false;
      }
      rec.bytes_in += request.whole.size;
    }

    // A kept channel the agent closed at the same moment fails on the first
    // write or read; a request without a body can safely go again on a new one.
    ExchangeOutcome ex;
    for (int attempt = 0;; ++attempt) {
      std::optional<Refusal> refused = co_await ensure_upstream(rec, vm, route.port, attempt == 0);
      if (refused) {
        bool keep = request.client_keep_alive && !request.has_body;
        co_return co_await refuse(rec, *refused, request.client_version, keep);
      }
      ExchangeEnds ends{.client = client_,
                        .client_buffer = buffer_,
                        .upstream = *upstream_,
                        .watchdog = *watchdog_,
                        .chunks = chunks_,
                        .limits = limits()};
      ex = co_await run_exchange(ends, request, rec, vm);
      const bool may_retry = rec.reused_channel && !request.has_body && attempt == 0;
      if (ex.head_write_error) {
        upstream_.reset();
        if (may_retry) continue;
        Refusal refusal{502, fmt::format("channel to vm {} failed: {}", vm.name,
                                         ex.head_write_error.message())};
        co_await refuse(rec, refusal, request.client_version, false);
        co_return false;
      }
      if (!ex.response_started && may_retry && !ex.timed_out && !ex.request_failed) {
        upstream_.reset();
        continue;
      }
      break;
    }

    if (!ex.response_started) {
      upstream_.reset();
      if (ex.request_failed && !ex.refusal) {
        rec.status = 499;
        rec.reason = "client closed the connection";
        co_return false;
      }
      Refusal refusal = ex.refusal.value_or(Refusal{502, "no response from the agent"});
      co_await refuse(rec, refusal, request.client_version, false);
      co_return false;
    }
    if (ex.channel_reusable()) {
      upstream_->idle = true;
      upstream_->idle_since = clock::now();
    } else {
      upstream_.reset();
    }
    co_return ex.client_keep_alive&& ex.request_done&& ex.response_done;
  }

  Stream client_;
  const SessionContext& ctx_;
  std::string peer_;
  // Client bytes read past the current head (pipelined requests, tunnel data);
  // it must outlive every read on the connection.
  beast::flat_buffer buffer_;
  std::shared_ptr<Watchdog> watchdog_;
  std::optional<Upstream> upstream_;
  std::unique_ptr<EstablishedTunnel> tunnel_;
  BodyChunks chunks_;
  std::function<void()> on_end_;
};

}  // namespace

awaitable<void> run_http_session(Stream client, const SessionContext& context,
                                 std::function<void()> on_end) {
  auto session = std::make_shared<ClientSession>(std::move(client), context, std::move(on_end));
  co_await session->run();
}

}  // namespace vmgate::hostd
