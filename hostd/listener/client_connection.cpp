#include "hostd/listener/client_connection.hpp"

#include <algorithm>
#include <chrono>
#include <memory>
#include <optional>

#include <fmt/format.h>
#include <boost/asio/ssl/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "common/deadline.hpp"
#include "common/log.hpp"
#include "common/transport.hpp"
#include "hostd/admission/admission.hpp"
#include "hostd/channel/channel.hpp"
#include "hostd/channel/channel_on_demand.hpp"
#include "hostd/channel/live_channels.hpp"
#include "hostd/cluster/peer_channels.hpp"
#include "hostd/fanout/fanout_delivery.hpp"
#include "hostd/identity/proxy_credentials.hpp"
#include "hostd/listener/client_handshake.hpp"
#include "hostd/listener/connection_channels.hpp"
#include "hostd/listener/established_tunnel.hpp"
#include "hostd/proxy/connection_auth.hpp"
#include "hostd/proxy/error_response.hpp"
#include "hostd/proxy/exchange.hpp"
#include "hostd/proxy/request_record.hpp"
#include "hostd/proxy/tunnel.hpp"
#include "hostd/route/header_rewrite.hpp"
#include "hostd/route/request_framing.hpp"

namespace vmgate::hostd {
namespace beast = boost::beast;
namespace http = beast::http;

namespace {

using clock = std::chrono::steady_clock;

// The first read of a request asks for what has arrived, within these.
constexpr std::size_t min_request_read = 512;
constexpr std::size_t max_request_read = 16 * 1024;

class ClientConnection {
 public:
  ClientConnection(ClientStream client, const ConnectionContext& context, std::uint64_t id,
                   std::string peer, Identity identity, bool over_client_cap)
      : client_(std::move(client)),
        ctx_(context),
        id_(id),
        peer_(std::move(peer)),
        identity_(std::move(identity)),
        over_client_cap_(over_client_cap),
        admission_{
            context.config.routing,
            context.config.channel,
            context.config.limits,
            context.directory,
            context.policy,
            context.peers ? std::string_view(context.peers->local_host()) : std::string_view()},
        deadline_(client_.get_executor()),
        channels_(context) {}
  ClientConnection(const ClientConnection&) = delete;
  ClientConnection& operator=(const ClientConnection&) = delete;

  // What run() came back for.
  enum class Turn {
    ended,  // closed, or handed over as an established tunnel
    idle,   // waits for its next request: park it, and run() again once readable
  };

  // The connection's requests, one after another. A CONNECT that is
  // established leaves the client connection and its tunnel in
  // `established`, to run in a coroutine of its own once this connection's
  // frames (its buffers, parser, deadline) are gone: an idle tunnel keeps
  // none of them. Between requests a plain connection with nothing to read
  // comes back idle, for the caller to park outside any coroutine.
  awaitable<Turn> run(std::unique_ptr<EstablishedTunnel>& established) {
    for (;;) {
      if (parked_) {
        // Back from park(): the socket is readable, or the wait failed (the
        // header timeout or a stop closed the socket).
        parked_ = false;
        waiting_.reset();
        if (wake_error_) break;
        reserve_request_read(transport::bytes_readable(client_.socket()));
      } else {
        // Keep-alive idle and the head's arrival share header_timeout.
        close_on_expiry(limits().header_timeout);
        // An idle connection waits parked, for readiness only: no request
        // frame, record, read buffer or parser exists until the next
        // request starts to arrive. A request already there is read at
        // once: a readiness wait costs a trip through the reactor, 18% of
        // WS-Man keep-alive throughput when every request paid it.
        if (buffer_.size() == 0) {
          const std::size_t arrived = transport::bytes_readable(client_.socket());
          // Over TLS, bytes OpenSSL has already read are invisible to the
          // socket: with any, the next read is made at once.
          if (arrived == 0 && !client_.has_buffered_input()) {
            // Once hostd is stopping, a connection between requests closes.
            if (ctx_.idle && !waiting_.emplace(*ctx_.idle, client_.socket()).registered()) break;
            parked_ = true;
            co_return Turn::idle;
          }
          reserve_request_read(arrived);
        }
      }
      if (!co_await serve_request(established)) break;
      if (buffer_.size() == 0) buffer_.shrink_to_fit();
    }
    if (!established) co_await close();
    co_return Turn::ended;
  }

  // The parked connection's wait is over (`ec`: it failed).
  void woken(error_code ec) { wake_error_ = ec; }
  Stream& socket() { return client_.socket(); }
  std::uint64_t id() const { return id_; }
  const std::string& listener_name() const { return ctx_.listener.name; }
  const ConnectionContext& context() const { return ctx_; }
  void hold(ConnectionSlot slot, std::shared_ptr<const void> context_owner) {
    slot_.emplace(std::move(slot));
    context_owner_ = std::move(context_owner);
  }
  ConnectionSlot take_slot() {
    ConnectionSlot slot(std::move(slot_.value()));
    slot_.reset();
    return slot;
  }

 private:
  const LimitsConfig& limits() const { return ctx_.config.limits; }
  ConnectionChannels::Client client() const { return {peer_, identity_}; }

  // Room for what has arrived, so that a whole WS-Man request (head and
  // envelope) is one read. Beast reads into the buffer's free capacity, 512
  // bytes at first: a 4 KiB envelope took five reads and its body was
  // spliced (strace of WS-Man keep-alive: 5 recvfrom, 4 splice and a
  // QUICKACK per request). Sized to what arrived rather than a fixed 16 KiB,
  // which cost 10,000 idle keep-alive clients about 0.5 KiB each in hostd
  // afterwards (freed buffers fragment the heap). Given back when the
  // request is done.
  void reserve_request_read(std::size_t arrived) {
    buffer_.reserve(std::clamp(arrived, min_request_read, max_request_read));
  }

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

  // One request, its record and (for a CONNECT) its tunnel in this frame,
  // which exists only while a request does. True when the connection can
  // carry another.
  awaitable<bool> serve_request(std::unique_ptr<EstablishedTunnel>& established) {
    std::optional<RequestRecord> record;
    std::optional<Tunnel> tunnel;
    const bool more = co_await handle_request(record, tunnel);
    if (!tunnel) co_return more;
    deadline_.expires_never();
    established.reset(
        new EstablishedTunnel{std::move(client_), std::move(*tunnel), std::move(*record)});
    co_return false;
  }

  // Reads, admits and delivers one request. A CONNECT that was established
  // leaves `tunnel` set.
  awaitable<bool> handle_request(std::optional<RequestRecord>& record,
                                 std::optional<Tunnel>& tunnel) {
    http::request_parser<http::empty_body> head;
    head.header_limit(limits().header_bytes);
    head.body_limit(boost::none);
    auto [ec, n] = co_await http::async_read_header(client_, buffer_, head, use_tuple);
    deadline_.expires_never();
    if (ec) co_return co_await refuse_unreadable_head(ec, head, record);

    RequestRecord& rec = start_record(record);
    auto& req = head.get();
    rec.method = std::string(req.method_string());
    if (over_client_cap_)
      co_return co_await refuse(rec, client_cap_refusal(), req.version(), false);
    const bool has_body = !head.is_done();
    // Before anything reads the head: framing hostd and the agent could read
    // differently never gets further, and a body is then never read.
    if (auto refused = check_request_head(req, parsed_framing(head), limits())) {
      co_return co_await refuse(rec, *refused, req.version(), false);
    }
    // A client that wrote its head alone (python requests through a proxy
    // does) holds its body back until that head is ACKed: ACK it now.
    // (Over TLS, a body that OpenSSL holds already has nothing to wait for.)
    if (has_body && !body_in_buffer(head) && !client_.has_buffered_input())
      transport::acknowledge_now(client_.socket(), ctx_.listener.address.kind);
    // An error answer can keep the connection only if no request body is left unread.
    const bool keep_after_error = req.keep_alive() && !has_body;

    // A token listener's client says who it is with each request
    // (Proxy-Authorization, RFC 9110 §11.7.1), a CONNECT included.
    if (ctx_.listener.identity == ListenerIdentity::token) {
      if (auto missing = authenticate(req)) {
        co_return co_await refuse(rec, *missing, req.version(), keep_after_error);
      }
    }
    std::optional<std::uint64_t> content_length;
    if (auto declared = head.content_length()) content_length = *declared;
    const AdmissionRequest request{.head = req,
                                   .content_length = content_length,
                                   .guest_port = ctx_.listener.guest_port,
                                   .identity = identity_};
    auto admitted = admit(request, admission_);
    channels_.set_attached_device(std::nullopt);
    // A running domain without a vsock device, and channels formed on
    // demand: give it one, then admit again, with the CID the directory has now.
    std::optional<Refusal> not_attached;
    if (!admitted && ctx_.on_demand) {
      const Refused refused = admitted.error();
      if (refused.step == AdmissionStep::channel && refused.vm &&
          needs_vsock_device(ctx_.config.channel, *refused.vm)) {
        auto cid = co_await ctx_.on_demand->attach(*refused.vm);
        if (!cid) {
          not_attached = cid.error();
        } else {
          admitted = admit(request, admission_);
          channels_.set_attached_device(
              AttachedDevice{ctx_.config.libvirt.attached_guestd_timeout});
        }
      }
    }
    rec.note_access(identity_, admitted ? admitted->access : admitted.error().access);
    if (!admitted) {
      const Refused& refused = admitted.error();
      if (refused.route) note_route(rec, *refused.route);
      if (refused.vm) rec.vm = refused.vm->name;
      const Refusal& refusal = not_attached ? *not_attached : refused.refusal;
      co_return co_await refuse(rec, refusal, req.version(),
                                keep_after_error && refusal.status != 413);
    }
    note_route(rec, admitted->route);
    if (admitted->fanout) co_return co_await fan_out(rec, *admitted, head);
    rec.vm = admitted->destination.vm.name;
    if (admitted->route.form == RouteForm::connect) {
      co_await open_tunnel(rec, *admitted, req.version(), tunnel);
      co_return false;
    }
    co_return co_await forward(rec, *admitted, head);
  }

  // 429, not 503: it is this client's own use that is over, and it can do
  // something about it (reuse its connections) while others are served
  // (RFC 6585 §4). Its head is read first so that the answer is HTTP with a
  // request id; then the connection closes (RFC 9112 §9.6), which gives its
  // max_connections slot back.
  Refusal client_cap_refusal() const {
    const std::string who =
        identity_.address ? identity_.address->to_string() : std::string("this client");
    return Refusal{429, fmt::format("{} has {} connections open already "
                                    "(limits.max_connections_per_client)",
                                    who, limits().max_connections_per_client)};
  }

  // Sets the identity from the request's proxy credentials; the 407 when
  // they are missing or wrong.
  std::optional<Refusal> authenticate(const http::request_header<>& req) {
    identity_.kind = Identity::Kind::anonymous;
    identity_.name.clear();
    if (req.count(http::field::proxy_authorization) > 1)
      return Refusal{407, "more than one Proxy-Authorization field"};
    auto named =
        check_proxy_credentials(*ctx_.tokens->current(), req[http::field::proxy_authorization]);
    if (!named) return Refusal{407, std::move(named.error())};
    identity_.kind = Identity::Kind::token;
    identity_.name = std::move(*named);
    return std::nullopt;
  }

  // Whether the whole body of a Content-Length request came with its head.
  bool body_in_buffer(const http::request_parser<http::empty_body>& head) const {
    auto length = head.content_length();
    return length && *length <= buffer_.size();
  }

  static void note_route(RequestRecord& rec, const Route& route) {
    rec.form = route_form_name(route.form);
    rec.target = route.target.to_string();
    rec.port = route.port;
  }

  // A head that could not be read: EOF and timeouts end quietly (a TLS client
  // that closes without close_notify between requests, as python's does,
  // too), the rest get 400/414/431.
  awaitable<bool> refuse_unreadable_head(error_code ec,
                                         http::request_parser<http::empty_body>& head,
                                         std::optional<RequestRecord>& record) {
    if (ec == http::error::end_of_stream || ec == asio::error::eof ||
        ec == asio::error::operation_aborted || ec == asio::error::bad_descriptor ||
        ec == asio::error::connection_reset || ec == http::error::partial_message ||
        (ec == asio::ssl::error::stream_truncated && buffer_.size() == 0))
      co_return false;
    RequestRecord& rec = start_record(record);
    if (head.is_header_done()) rec.method = std::string(head.get().method_string());
    co_await refuse(rec, unreadable_head_refusal(ec, head), 11, false);
    co_return false;
  }

  Refusal unreadable_head_refusal(error_code ec,
                                  const http::request_parser<http::empty_body>& head) const {
    if (ec != http::error::header_limit)
      return Refusal{400, fmt::format("malformed request: {}", ec.message())};
    // Over the limit inside its request line (the parser never got to the
    // target): 414, RFC 9112 §3.
    if (head.get().target().empty()) {
      return Refusal{414,
                     fmt::format("request line exceeds {} bytes",
                                 std::min(limits().request_line_bytes, limits().header_bytes))};
    }
    return Refusal{431, fmt::format("request head exceeds {} bytes", limits().header_bytes)};
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

  // CONNECT: a new channel (never a pooled one: the agent sees a fresh
  // connection), then "200 Connection established".
  awaitable<void> open_tunnel(RequestRecord& rec, const Admitted& admitted, unsigned version,
                              std::optional<Tunnel>& tunnel) {
    // The connection ends with the tunnel: a private channel has no use left.
    channels_.drop_private();
    // 503: hostd-wide, not this client's doing (RFC 9110 §15.6.4); taken
    // before the channel, so a refused CONNECT costs guestd nothing.
    CapPlace place;
    if (ctx_.caps) {
      place = ctx_.caps->take_tunnel(limits().max_tunnels);
      if (!place) {
        Refusal refusal{503, fmt::format("hostd has {} CONNECT tunnels open already "
                                         "(limits.max_tunnels)",
                                         limits().max_tunnels)};
        co_await refuse(rec, refusal, version, false);
        co_return;
      }
    }
    const Destination& destination = admitted.destination;
    ChannelConnectTimer connect_timer(ctx_.metrics);
    auto channel = co_await channels_.open(destination, admitted.route.port, rec, client());
    connect_timer.done(bool(channel));
    if (!channel) {
      Refusal refusal = channel.error();
      co_await refuse(rec, refusal, version, false);
      co_return;
    }
    tunnel.emplace(ctx_.metrics, std::move(*channel));
    tunnel->place = std::move(place);
    if (!co_await establish_tunnel(client_, buffer_, *tunnel, rec)) tunnel.reset();
  }

  // A group, network or list target: delivered to each of its VMs, the
  // results streamed back (hostd/fanout). A tunnel leads to one VM only.
  awaitable<bool> fan_out(RequestRecord& rec, const Admitted& admitted,
                          http::request_parser<http::empty_body>& head) {
    if (admitted.route.form == RouteForm::connect) {
      Refusal refusal{400, "CONNECT opens a tunnel to one VM: name one, not a group or list"};
      co_return co_await refuse(rec, refusal, head.get().version(), false);
    }
    const std::string identity = identity_.to_string();
    const FanoutEnds ends{.client = client_,
                          .client_buffer = buffer_,
                          .deadline = deadline_,
                          .config = ctx_.config,
                          .budget = ctx_.budget,
                          .pool = ctx_.pool,
                          .live = ctx_.live,
                          .metrics = ctx_.metrics,
                          .peer = peer_,
                          .trusted_listener = ctx_.listener.trusted(),
                          .peers = ctx_.peers,
                          .identity = identity};
    co_return co_await run_fanout(ends, FanoutRequest{head, admitted.route, *admitted.fanout}, rec);
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
    // Read before the head is rewritten (Authorization passes through as is).
    const bool request_binds = binds_connection(msg);
    rewrite_request(
        msg, admitted.route, ctx_.config.routing.vm_header,
        ForwardedClient{
            .peer = peer_, .trusted = ctx_.listener.trusted(), .tls = client_.is_tls()});
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
      auto channel = co_await channels_.take(rec, admitted.destination, admitted.route.port,
                                             attempt == 0, client(), client_.get_executor());
      const bool keep_after_refusal = request.client_keep_alive && !request.has_body;
      if (!channel) {
        Refusal refusal = std::move(channel.error());
        co_return co_await refuse(rec, refusal, request.client_version, keep_after_refusal);
      }
      // Its handshake must stay on this channel: refused now, before the
      // agent sees a step it could never finish, when the VM has too many.
      if (request_binds && !channels_.make_private(*channel)) {
        channels_.give_back(std::move(*channel), false);
        Refusal refusal = channels_.too_many_private(admitted.destination.vm);
        co_return co_await refuse(rec, refusal, request.client_version, keep_after_refusal);
      }
      ExchangeEnds ends{.client = client_,
                        .client_buffer = buffer_,
                        .channel = *channel,
                        .deadline = deadline_,
                        .chunks = chunks_,
                        .limits = limits()};
      ExchangeOutcome outcome;
      {
        // Closed under the exchange if its VM goes away meanwhile.
        const ChannelWatch watch(ctx_.live, channel->key, channel->stream, &client_.socket());
        outcome = co_await run_exchange(ends, request, rec, admitted.destination.vm);
        if (watch.revoked()) vm_went_away(rec, outcome, watch.why());
      }
      // A kept channel the agent closed at that moment fails before any
      // answer; a request without a body can safely go again on a new one.
      if (outcome.end == ExchangeEnd::channel_failed && rec.reused_channel && !request.has_body &&
          attempt == 0)
        continue;
      co_return co_await conclude(rec, request, std::move(*channel), outcome);
    }
  }

  // The exchange's channel was closed because its VM stopped, vanished or
  // took a new CID: a response under way was cut (the client sees it end
  // short), and one not started is answered 503, not retried.
  static void vm_went_away(RequestRecord& rec, ExchangeOutcome& outcome, const std::string& why) {
    rec.aborted = Aborted::vm_stopped;
    rec.reason = why;
    if (outcome.answered()) {
      outcome.end = ExchangeEnd::close_both;
    } else {
      // Not client_gone even if a read from the client was cancelled with
      // the channel: the client is still there to be told.
      outcome.end = ExchangeEnd::refused;
      outcome.refusal = Refusal{503, why};
    }
  }

  // After an exchange: the channel goes back (or stays private) if it can
  // carry another, the connection's body buffers are freed while it idles,
  // and the client is answered if the agent could not be.
  awaitable<bool> conclude(RequestRecord& rec, const ExchangeRequest& request, Channel channel,
                           const ExchangeOutcome& outcome) {
    if (outcome.response_cut) response_cut_ = true;
    if (outcome.channel_reusable()) {
      const bool binds = channel.ticket.is_private() || outcome.agent_binds_connection;
      channels_.give_back(std::move(channel), binds);
    }
    chunks_.release();
    if (outcome.answered()) co_return outcome.client_continues();
    if (outcome.end == ExchangeEnd::client_gone) {
      rec.status = 499;
      rec.reason = "client closed the connection";
      co_return false;
    }
    co_await refuse(rec, outcome.refusal, request.client_version, false);
    co_return false;
  }

  // An orderly end unless a response was cut (ClientStream::close).
  awaitable<void> close() {
    deadline_.expires_never();
    channels_.drop_private();
    co_await client_.close(!response_cut_, close_limit(ctx_));
  }

  ClientStream client_;
  const ConnectionContext& ctx_;
  const std::uint64_t id_;
  const std::string peer_;
  // Per connection, except on a token listener, where each request sets it.
  Identity identity_;
  // Its address had max_connections_per_client open already: its first
  // request is answered 429, and the connection closes.
  const bool over_client_cap_;
  const AdmissionContext admission_;
  // Client bytes read past the current head (pipelined requests, tunnel data);
  // it must outlive every read on the connection.
  beast::flat_buffer buffer_;
  Deadline deadline_;
  ConnectionChannels channels_;
  BodyChunks chunks_;
  bool response_cut_ = false;  // an exchange ended mid-response: no orderly close
  // Held while the connection lives, wherever it waits (see park()): its
  // place under max_connections, and what ctx_ refers to.
  std::shared_ptr<const void> context_owner_;
  std::optional<ConnectionSlot> slot_;
  // Parked between requests (see park()): registered to be closed on a stop.
  bool parked_ = false;
  error_code wake_error_;
  std::optional<IdleConnections::Waiting> waiting_;
};

// A new connection's TLS handshake and identity, in a frame of its own: the
// caller's frame lives as long as the connection, and GCC gives every local
// of a coroutine a place in its frame for the whole of its life, so this
// part held there (its stream, peer, identity and handshake state beside the
// connection's own) cost each idle keep-alive client about 1 KiB (heaptrack,
// 3,000 idle clients, see bench/idle_connections.py). Null: no connection
// (logged).
awaitable<std::unique_ptr<ClientConnection>> open_connection(Stream client,
                                                             transport::PeerAddress address,
                                                             const ConnectionContext& context,
                                                             std::uint64_t id,
                                                             bool over_client_cap) {
  std::string peer = std::move(address.text);
  auto opened = co_await open_client(std::move(client), address.ip, context, id, peer);
  if (!opened) co_return nullptr;
  co_return std::make_unique<ClientConnection>(std::move(opened->stream), context, id,
                                               std::move(peer), std::move(opened->identity),
                                               over_client_cap);
}

awaitable<void> drive(std::unique_ptr<ClientConnection> connection);

// An idle keep-alive connection waits for its next request as a pending
// readiness wait whose handler holds the connection, and nothing else: no
// coroutine frame. When the socket is readable (or the wait fails) a
// coroutine takes the connection again. Measured with
// bench/idle_connections.py (8,000 idle keep-alive clients, hostd RSS):
// 4.8 KiB per client while its coroutines (the spawned thread, the
// connection's, and the request loop's frames) waited, 3.3 KiB parked.
void park(std::unique_ptr<ClientConnection> connection) {
  Stream& socket = connection->socket();
  socket.async_wait(Stream::wait_read, [connection = std::move(connection)](error_code ec) mutable {
    connection->woken(ec);
    const std::uint64_t id = connection->id();
    std::string listener = connection->listener_name();
    auto executor = connection->socket().get_executor();
    asio::co_spawn(executor, drive(std::move(connection)),
                   [id, listener = std::move(listener)](std::exception_ptr e) {
                     if (!e) return;
                     log::error("connection_failed")
                         .kv("conn", static_cast<unsigned long long>(id))
                         .kv("listener", listener)
                         .kv("error", log::describe(e));
                   });
  });
}

// Runs the connection until it ends, parks, or becomes a tunnel.
awaitable<void> drive(std::unique_ptr<ClientConnection> connection) {
  std::unique_ptr<EstablishedTunnel> tunnel;
  if (co_await connection->run(tunnel) == ClientConnection::Turn::idle) {
    park(std::move(connection));
    co_return;
  }
  if (!tunnel) co_return;
  const auto idle = connection->context().config.limits.idle_timeout;
  const auto close_within = close_limit(connection->context());
  LiveChannels* live = connection->context().live;
  ConnectionSlot slot = connection->take_slot();
  connection.reset();
  // The tunnel goes on without this coroutine, holding only what it needs.
  run_established_tunnel(std::move(tunnel), std::move(slot), idle, close_within, live);
}

}  // namespace

awaitable<void> serve_client(Stream client, transport::PeerAddress peer,
                             const ConnectionContext& context,
                             std::shared_ptr<const void> context_owner, std::uint64_t id,
                             ConnectionSlot slot) {
  auto connection = co_await open_connection(std::move(client), std::move(peer), context, id,
                                             slot.over_client_cap());
  if (!connection) co_return;
  connection->hold(std::move(slot), std::move(context_owner));
  co_await drive(std::move(connection));
}

}  // namespace vmgate::hostd
