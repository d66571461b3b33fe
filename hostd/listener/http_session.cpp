#include "hostd/listener/http_session.hpp"

#include <chrono>
#include <memory>
#include <optional>
#include <random>

#include <fmt/format.h>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "common/log.hpp"
#include "common/relay.hpp"
#include "common/splice.hpp"
#include "common/transport.hpp"
#include "common/watchdog.hpp"
#include "hostd/channel/channel.hpp"
#include "hostd/listener/error_response.hpp"
#include "hostd/route/header_rewrite.hpp"
#include "hostd/route/request_route.hpp"

namespace vmgate::hostd {
namespace beast = boost::beast;
namespace http = beast::http;
using namespace asio::experimental::awaitable_operators;

std::string new_request_id() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  auto value = static_cast<std::uint32_t>(rng());
  std::string id(8, '0');
  for (int i = 7; i >= 0; --i, value >>= 4)
    id[i] = "0123456789abcdef"[value & 0xf];
  return id;
}

namespace {

using clock = std::chrono::steady_clock;
constexpr std::size_t body_chunk = 64 * 1024;
constexpr std::size_t read_buffer_size = 64 * 1024;

// What one request did, logged as one line when it ends.
struct RequestRecord {
  std::string id = new_request_id();
  std::string_view listener;
  std::string_view client;
  std::string method;
  std::string form = "-";
  std::string target = "-";
  std::string vm = "-";
  unsigned port = 0;
  unsigned status = 0;
  std::string reason;
  bool reused_channel = false;
  std::uint64_t bytes_in = 0;
  std::uint64_t bytes_out = 0;
  HostdMetrics* metrics = nullptr;
  clock::time_point start = clock::now();
  bool handed_over = false;  // a copy logs it instead (an established tunnel)

  ~RequestRecord() {
    if (handed_over) return;
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - start).count();
    auto line = (status >= 500 ? log::warn("request") : log::info("request"));
    line.kv("req", id)
        .kv("listener", listener)
        .kv("client", client)
        .kv("method", method)
        .kv("form", form)
        .kv("target", target)
        .kv("vm", vm)
        .kv("port", port)
        .kv("status", status)
        .kv("bytes_in", bytes_in)
        .kv("bytes_out", bytes_out)
        .kv("ms", static_cast<long long>(ms));
    if (reused_channel) line.kv("channel", "reused");
    if (!reason.empty()) line.kv("reason", reason);
    if (metrics) metrics->request_done(form, status, bytes_in, bytes_out);
  }
};

// An open channel to one agent port of one VM. The client connection keeps it
// between its requests while the agent keeps it alive, and hands it to the
// pool when the connection ends or its next request goes elsewhere.
//
// The preamble that opened it named the client connection and request that
// opened it (Client, Request-Id): for a reused channel that is only its
// origin, for guestd's log. Who sent each request reaches the agent in the
// Forwarded field rewrite_request() adds to every request.
struct Upstream {
  Stream stream;
  beast::flat_buffer buffer;  // agent bytes read past the current response head
  ChannelKey key;
  // Set when an exchange ended cleanly with keep-alive: no request or response
  // bytes are in flight, so the channel can carry another exchange.
  bool idle = false;
  clock::time_point idle_since{};
};

// The state the two directions of one exchange share.
struct Exchange {
  bool request_done = false;
  bool request_failed = false;  // client stopped sending (error or cancelled)
  bool upstream_write_failed = false;
  bool response_started = false;
  bool response_done = false;
  bool upstream_reusable = false;
  bool client_keep_alive = false;
  bool timed_out = false;
  bool stop_request = false;       // the response side ended the exchange early
  std::optional<Refusal> refusal;  // when no response was started
};

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
  struct EstablishedTunnel {
    RequestRecord record;
    Stream channel;
    OpenTunnel gauge;
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
    tunnel_.reset(new EstablishedTunnel{rec, std::move(channel->stream), OpenTunnel(ctx_.metrics)});
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
    http::request_parser<http::buffer_body> request{std::move(head)};
    if (limits().max_request_body > 0) request.body_limit(limits().max_request_body);
    auto& msg = request.get();
    Exchange ex;
    ex.client_keep_alive = msg.keep_alive();
    const unsigned client_version = msg.version();
    const bool is_head = msg.method() == http::verb::head;
    const bool has_body = !request.is_done();
    rewrite_request(msg, route, ctx_.config.routing.vm_header, peer_);
    // A body that came whole with the head (a WS-Man envelope) is taken from
    // the read buffer now: head and body then reach the channel in one write,
    // and the response is read after it instead of beside a body pump.
    BufferedBody whole;
    if (has_body) {
      whole = take_buffered_body(request);
      if (whole.failed) {
        Refusal refusal{400, "malformed request body"};
        co_await refuse(rec, refusal, client_version, false);
        co_return false;
      }
      rec.bytes_in += whole.size;
    }
    const bool one_write = !has_body || whole.taken;

    // A kept channel the agent closed at the same moment fails on the first
    // write or read; a request without a body can safely go again on a new one.
    for (int attempt = 0;; ++attempt) {
      std::optional<Refusal> refused = co_await ensure_upstream(rec, vm, route.port, attempt == 0);
      if (refused) {
        bool keep = ex.client_keep_alive && !has_body;
        co_return co_await refuse(rec, *refused, client_version, keep);
      }
      http::serializer<true, http::buffer_body> writer{msg};
      arm_exchange_watchdog(ex);
      error_code ec;
      if (one_write) {
        auto& body = msg.body();
        body.data = whole.taken ? request_chunk_.get() : nullptr;
        body.size = whole.size;
        body.more = false;
        auto [wec, wn] = co_await http::async_write(upstream_->stream, writer, use_tuple);
        ec = wec;
      } else {
        auto [wec, wn] = co_await http::async_write_header(upstream_->stream, writer, use_tuple);
        ec = wec;
      }
      if (ec) {
        upstream_.reset();
        if (rec.reused_channel && !has_body && attempt == 0) continue;
        Refusal refusal{502, fmt::format("channel to vm {} failed: {}", vm.name, ec.message())};
        co_await refuse(rec, refusal, client_version, false);
        co_return false;
      }
      if (one_write) {
        ex.request_done = true;
        co_await pump_response(ex, rec, vm, is_head, client_version);
      } else {
        co_await (pump_request_body(request, writer, ex, rec) &&
                  pump_response(ex, rec, vm, is_head, client_version));
      }
      if (!ex.response_started && rec.reused_channel && !has_body && attempt == 0 &&
          !ex.timed_out && !ex.request_failed) {
        upstream_.reset();
        ex.refusal.reset();
        ex.request_done = false;
        continue;
      }
      break;
    }
    watchdog_->expires_never();

    if (!ex.response_started) {
      upstream_.reset();
      if (ex.request_failed && !ex.refusal) {
        rec.status = 499;
        rec.reason = "client closed the connection";
        co_return false;
      }
      Refusal refusal = ex.refusal.value_or(Refusal{502, "no response from the agent"});
      co_await refuse(rec, refusal, client_version, false);
      co_return false;
    }
    if (ex.request_done && ex.response_done && ex.upstream_reusable) {
      upstream_->idle = true;
      upstream_->idle_since = clock::now();
    } else {
      upstream_.reset();
    }
    co_return ex.client_keep_alive&& ex.request_done&& ex.response_done;
  }

  struct BufferedBody {
    bool taken = false;
    bool failed = false;
    std::size_t size = 0;
  };

  // Moves a Content-Length body that is already in the read buffer, and fits
  // one chunk, into request_chunk_. Anything else (still arriving, chunked,
  // large) is left to pump_request_body.
  BufferedBody take_buffered_body(http::request_parser<http::buffer_body>& request) {
    auto left = request.content_length_remaining();
    if (request.chunked() || !left || *left > body_chunk || *left > buffer_.size()) return {};
    auto& body = request.get().body();
    char* chunk = body_buffer(request_chunk_).get();
    body.data = chunk;
    body.size = body_chunk;
    while (!request.is_done()) {
      error_code ec;
      auto used = request.put(buffer_.data(), ec);
      buffer_.consume(used);
      if (ec || used == 0) return {.failed = true};
    }
    return {.taken = true, .size = body_chunk - body.size};
  }

  // Parses response body bytes already read with the head into
  // response_chunk_, as much as fits, so they can leave with the head.
  BufferedBody take_buffered_response_body(http::response_parser<http::buffer_body>& response) {
    auto& buffer = upstream_->buffer;
    if (response.is_done() || buffer.size() == 0) return {};
    auto& body = response.get().body();
    char* chunk = body_buffer(response_chunk_).get();
    body.data = chunk;
    body.size = body_chunk;
    response.eager(true);
    while (!response.is_done() && buffer.size() > 0 && body.size > 0) {
      error_code ec;
      auto used = response.put(buffer.data(), ec);
      buffer.consume(used);
      if (ec == http::error::need_buffer || ec == http::error::need_more) break;
      if (ec) return {.failed = true};
      if (used == 0) break;
    }
    const std::size_t taken = body_chunk - body.size;
    body.data = chunk;
    body.size = taken;
    body.more = !response.is_done();
    if (taken == 0 && body.more) return {};
    return {.taken = true, .size = taken};
  }

  // Moves the last `left` bytes of a body of known length from `from` to `to`:
  // first those already read into `buffer` with the head, then the rest inside
  // the kernel (splice). Exactly that many, so both connections can carry the
  // next message. Counts into `counted`; progress keeps the watchdog away.
  awaitable<MoveResult> splice_rest_of_body(Stream& from, beast::flat_buffer& buffer, Stream& to,
                                            std::uint64_t left, std::uint64_t& counted) {
    const std::size_t ahead =
        static_cast<std::size_t>(std::min<std::uint64_t>(buffer.size(), left));
    auto count = [this, &counted](std::size_t n) {
      counted += n;
      watchdog_->extend(limits().idle_timeout);
    };
    const OnMoved on_moved(count);
    const asio::const_buffer already_read(buffer.data().data(), ahead);
    MoveResult moved = co_await move_exactly(from, to, left, already_read, on_moved);
    buffer.consume(ahead);
    co_return moved;
  }

  void arm_exchange_watchdog(Exchange& ex) {
    watchdog_->expires_after(limits().idle_timeout, [this, &ex] {
      ex.timed_out = true;
      error_code ignored;
      client_.cancel(ignored);
      if (upstream_) upstream_->stream.cancel(ignored);
    });
  }

  // Body buffers are allocated on first use and kept for the connection; not
  // zeroed (make_unique would memset 64 KiB per connection, the largest single
  // cost of a short request on a new connection).
  static std::unique_ptr<char[]>& body_buffer(std::unique_ptr<char[]>& slot) {
    if (!slot) slot = std::make_unique_for_overwrite<char[]>(body_chunk);
    return slot;
  }

  awaitable<void> pump_request_body(http::request_parser<http::buffer_body>& request,
                                    http::serializer<true, http::buffer_body>& writer, Exchange& ex,
                                    RequestRecord& rec) {
    auto& body = request.get().body();
    // Beast sizes each read by the buffer's free capacity (512 bytes at
    // least): without room reserved, a body streams in 512-byte reads.
    if (!request.is_done()) buffer_.reserve(read_buffer_size);
    for (;;) {
      if (ex.stop_request) {
        ex.request_failed = true;
        co_return;
      }
      if (!request.is_done() && !request.chunked() && request.content_length_remaining()) {
        // Known length: the rest of the body goes client -> channel inside the
        // kernel (splice), after the bytes already read with the head.
        MoveResult moved = co_await splice_rest_of_body(
            client_, buffer_, upstream_->stream, *request.content_length_remaining(), rec.bytes_in);
        if (moved.write_error) {
          // The agent may have answered early and closed; the response side decides.
          ex.upstream_write_failed = true;
          co_return;
        }
        if (moved.read_error) {
          ex.request_failed = true;
          error_code ignored;
          if (upstream_) upstream_->stream.cancel(ignored);
          co_return;
        }
        break;
      }
      if (!request.is_done()) {
        char* chunk = body_buffer(request_chunk_).get();
        body.data = chunk;
        body.size = body_chunk;
        auto [ec, n] = co_await http::async_read(client_, buffer_, request, use_tuple);
        if (ec == http::error::need_buffer) ec = {};
        if (ec) {
          ex.request_failed = true;
          if (ec == http::error::body_limit && !ex.response_started) {
            ex.refusal = Refusal{413, fmt::format("request body exceeds the limit of {} bytes",
                                                  limits().max_request_body)};
          }
          error_code ignored;
          if (upstream_) upstream_->stream.cancel(ignored);
          co_return;
        }
        body.size = body_chunk - body.size;
        body.data = chunk;
        body.more = !request.is_done();
      } else {
        body.data = nullptr;
        body.size = 0;
        body.more = false;
      }
      rec.bytes_in += body.size;
      watchdog_->extend(limits().idle_timeout);
      if (writer.is_done()) break;
      auto [wec, wn] = co_await http::async_write(upstream_->stream, writer, use_tuple);
      if (wec == http::error::need_buffer) wec = {};
      if (wec) {
        // The agent may have answered early and closed; the response side decides.
        ex.upstream_write_failed = true;
        co_return;
      }
      if (request.is_done() && writer.is_done()) break;
    }
    ex.request_done = true;
  }

  awaitable<void> pump_response(Exchange& ex, RequestRecord& rec, const VmRecord& vm, bool is_head,
                                unsigned client_version) {
    for (;;) {
      http::response_parser<http::buffer_body> response;
      response.header_limit(limits().header_bytes);
      response.body_limit(boost::none);
      if (is_head) response.skip(true);
      auto [ec, n] = co_await http::async_read_header(upstream_->stream, upstream_->buffer,
                                                      response, use_tuple);
      if (ec) {
        if (ex.request_failed && !ex.refusal) co_return;  // the client is gone
        if (!ex.refusal) {
          if (ex.timed_out) {
            ex.refusal = Refusal{504, fmt::format("vm {} did not answer within {} ms", vm.name,
                                                  limits().idle_timeout.count())};
          } else if (ec == http::error::header_limit) {
            ex.refusal = Refusal{
                502, fmt::format("agent response head exceeds {} bytes", limits().header_bytes)};
          } else {
            ex.refusal = Refusal{502, fmt::format("agent on vm {} port {} closed the connection "
                                                  "before answering ({})",
                                                  vm.name, rec.port, ec.message())};
          }
        }
        stop_reading_client(ex);
        co_return;
      }
      auto& res = response.get();
      const unsigned code = res.result_int();
      if (code == 101) {
        ex.refusal = Refusal{502, "agent switched protocols; use CONNECT for upgraded connections"};
        stop_reading_client(ex);
        co_return;
      }
      if (code >= 100 && code < 200) {
        // Interim responses (100 Continue) go to HTTP/1.1 clients only (RFC 9110 §15.2).
        if (client_version >= 11) {
          http::response<http::empty_body> interim{res.result(), 11};
          for (const auto& f : res)
            interim.insert(f.name_string(), f.value());
          rewrite_response(interim);
          auto [wec, wn] = co_await http::async_write(client_, interim, use_tuple);
          rec.bytes_out += wn;
          if (wec) {
            ex.request_failed = true;
            co_return;
          }
        }
        continue;
      }
      co_await stream_response(ex, rec, response, is_head, client_version);
      co_return;
    }
  }

  awaitable<void> stream_response(Exchange& ex, RequestRecord& rec,
                                  http::response_parser<http::buffer_body>& response, bool is_head,
                                  unsigned client_version) {
    auto& res = response.get();
    rec.status = res.result_int();
    ex.upstream_reusable = res.keep_alive() && !response.need_eof();
    rewrite_response(res);
    bool keep = ex.client_keep_alive;
    if (client_version < 11) {
      // No chunked coding for HTTP/1.0 clients: the body ends with the connection.
      if (res.chunked() || response.need_eof()) {
        res.chunked(false);
        keep = false;
      }
      res.version(10);
    } else {
      res.version(11);
      if (response.need_eof() && !is_head) res.chunked(true);  // keeps the client connection usable
    }
    res.keep_alive(keep);
    ex.client_keep_alive = keep;

    http::serializer<false, http::buffer_body> writer{res};
    const auto prefilled = is_head ? BufferedBody{} : take_buffered_response_body(response);
    if (prefilled.failed) {
      ex.refusal = Refusal{502, "malformed response body from the agent"};
      stop_reading_client(ex);
      co_return;
    }
    ex.response_started = true;
    error_code hec;
    if (prefilled.taken) {
      // Head and the body bytes that came with it, in one write.
      auto [wec, wn] = co_await http::async_write(client_, writer, use_tuple);
      hec = wec == http::error::need_buffer ? error_code{} : wec;
      rec.bytes_out += wn;
    } else {
      auto [wec, wn] = co_await http::async_write_header(client_, writer, use_tuple);
      hec = wec;
      rec.bytes_out += wn;
    }
    if (hec) {
      ex.request_failed = true;
      stop_reading_client(ex);
      co_return;
    }
    if (!is_head && !response.is_done() && !response.chunked() &&
        response.content_length_remaining()) {
      // Known length: the rest of the body goes channel -> client inside the
      // kernel (splice), after the bytes already read with the head. Exactly
      // that many, so the channel stays usable for the next response.
      MoveResult moved =
          co_await splice_rest_of_body(upstream_->stream, upstream_->buffer, client_,
                                       *response.content_length_remaining(), rec.bytes_out);
      if (moved.failed()) {
        // Mid-body failure: the client sees a truncated message and a closed connection.
        if (moved.write_error) ex.request_failed = true;
        ex.client_keep_alive = false;
        stop_reading_client(ex);
        co_return;
      }
    } else if (!is_head) {
      auto& body = res.body();
      if (!response.is_done()) upstream_->buffer.reserve(read_buffer_size);
      for (;;) {
        if (!response.is_done()) {
          char* chunk = body_buffer(response_chunk_).get();
          body.data = chunk;
          body.size = body_chunk;
          auto [ec, n] =
              co_await http::async_read(upstream_->stream, upstream_->buffer, response, use_tuple);
          if (ec == http::error::need_buffer) ec = {};
          if (ec) {
            // Mid-body failure: the client sees a truncated message and a closed connection.
            ex.client_keep_alive = false;
            stop_reading_client(ex);
            co_return;
          }
          body.size = body_chunk - body.size;
          body.data = chunk;
          body.more = !response.is_done();
        } else {
          body.data = nullptr;
          body.size = 0;
          body.more = false;
        }
        watchdog_->extend(limits().idle_timeout);
        if (writer.is_done()) break;
        auto [wec, wn] = co_await http::async_write(client_, writer, use_tuple);
        if (wec == http::error::need_buffer) wec = {};
        if (wec) {
          ex.request_failed = true;
          ex.client_keep_alive = false;
          stop_reading_client(ex);
          co_return;
        }
        rec.bytes_out += body.size;
        if (response.is_done() && writer.is_done()) break;
      }
    }
    ex.response_done = true;
    if (!ex.request_done) stop_reading_client(ex);
  }

  // The response is over (or failed) while the request body is still coming:
  // stop reading it; the connection cannot carry another request.
  void stop_reading_client(Exchange& ex) {
    if (ex.request_done) return;
    ex.stop_request = true;
    ex.client_keep_alive = false;
    error_code ignored;
    client_.cancel(ignored);
    // The channel has an unfinished request on it: it cannot be reused either.
    if (upstream_) upstream_->stream.cancel(ignored);
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
  std::unique_ptr<char[]> request_chunk_;
  std::unique_ptr<char[]> response_chunk_;
  std::function<void()> on_end_;
};

}  // namespace

awaitable<void> run_http_session(Stream client, const SessionContext& context,
                                 std::function<void()> on_end) {
  auto session = std::make_shared<ClientSession>(std::move(client), context, std::move(on_end));
  co_await session->run();
}

}  // namespace vmgate::hostd
