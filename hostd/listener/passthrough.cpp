#include "hostd/listener/passthrough.hpp"

#include <algorithm>
#include <optional>
#include <span>
#include <string>

#include <fmt/format.h>
#include <boost/beast/core/flat_buffer.hpp>

#include "common/deadline.hpp"
#include "common/relay.hpp"
#include "common/transport.hpp"
#include "hostd/admission/admission.hpp"
#include "hostd/channel/channel.hpp"
#include "hostd/channel/live_channels.hpp"
#include "hostd/cluster/peer_channels.hpp"
#include "hostd/listener/client_handshake.hpp"
#include "hostd/proxy/request_record.hpp"
#include "hostd/proxy/tunnel.hpp"
#include "hostd/route/client_hello.hpp"

namespace vmgate::hostd {
namespace {

using Status = ClientHelloScan::Status;

// A ClientHello is read in pieces of at most this much (and never past
// limits.client_hello_bytes): one read takes a typical one whole (a few
// hundred bytes; about 1.8 KiB with a post-quantum key share), while a
// connection that sends nothing holds no 16 KiB buffer.
constexpr std::size_t read_chunk = 4096;

class PassthroughConnection {
  using Buffer = boost::beast::flat_buffer;
  // The server name, or why there is none; empty when the client closed (or
  // reset) the connection before sending anything.
  using NameRead = std::optional<boost::system::result<std::string, Refusal>>;

 public:
  PassthroughConnection(Stream client, transport::PeerAddress peer,
                        const ConnectionContext& context, std::uint64_t id)
      : client_(std::move(client)),
        ctx_(context),
        id_(id),
        peer_(std::move(peer.text)),
        peer_ip_(peer.ip),
        admission_{
            context.config.routing,
            context.config.channel,
            context.config.limits,
            context.directory,
            context.policy,
            context.peers ? std::string_view(context.peers->local_host()) : std::string_view()} {}

  awaitable<void> run() {
    Buffer hello(limits().client_hello_bytes);
    auto name = co_await read_server_name(hello);
    if (!name) co_return;  // the client left before it sent a byte: nothing to record
    RequestRecord& rec = *record_;
    if (!*name) co_return refuse(rec, name->error());

    auto route = route_of(**name);
    if (!route) co_return refuse(rec, route.error());
    rec.target = route->target.to_string();
    rec.port = route->port;
    const Identity identity = listener_identity(ctx_.listener, peer_ip_);
    auto admitted = admit_route(std::move(*route), identity, std::nullopt, admission_);
    if (!admitted) {
      if (admitted.error().vm) rec.vm = admitted.error().vm->name;
      co_return refuse(rec, admitted.error().refusal);
    }
    const Destination& destination = admitted->destination;
    rec.vm = destination.vm.name;

    // A channel of its own, as a CONNECT tunnel has: the agent sees a new
    // connection, and max_connections (not the channel budget) bounds these.
    ChannelConnectTimer connect_timer(ctx_.metrics);
    auto channel = co_await open(destination, admitted->route.port, identity, rec);
    connect_timer.done(bool(channel));
    if (!channel) co_return refuse(rec, channel.error());
    Tunnel tunnel(ctx_.metrics, std::move(*channel));
    rec.status = 200;
    {
      // Closed under the relay if its VM goes away meanwhile.
      const ChannelWatch watch(ctx_.live, tunnel.key, tunnel.stream, &client_);
      if (co_await replay(hello, tunnel, rec)) {
        RelayResult relayed = co_await relay(client_, tunnel.stream, limits().idle_timeout);
        if (watch.revoked()) note_vm_gone(rec, relayed, watch.why());
        note_relayed(rec, relayed);
      }
    }
    close();
    // As for a CONNECT tunnel (proxy/tunnel.hpp): the record is written
    // before the channel closes and the open-tunnels gauge drops.
    record_.reset();
  }

 private:
  const LimitsConfig& limits() const { return ctx_.config.limits; }

  RequestRecord& start_record() {
    RequestRecord& rec = record_.emplace();
    rec.conn = id_;
    rec.listener = ctx_.listener.name;
    rec.client = peer_;
    rec.form = route_form_name(RouteForm::sni);
    rec.metrics = ctx_.metrics;
    rec.start = start_;
    return rec;
  }

  // Reads (never peeks: the bytes are replayed to the agent) until the
  // ClientHello is whole, within client_hello_timeout and client_hello_bytes.
  awaitable<NameRead> read_server_name(Buffer& hello) {
    const std::size_t limit = limits().client_hello_bytes;
    Deadline deadline(client_.get_executor());
    deadline.expires_after(limits().client_hello_timeout, [this] {
      error_code ignored;
      client_.close(ignored);
    });
    for (;;) {
      const auto* data = static_cast<const std::uint8_t*>(hello.data().data());
      ClientHelloScan scan = scan_client_hello(std::span(data, hello.size()));
      if (scan.status != Status::need_more) {
        start_record();
        co_return found_or_refused(std::move(scan));
      }
      if (scan.need > limit) {
        start_record();
        co_return Refusal{431, fmt::format("the ClientHello is longer than {} bytes "
                                           "(limits.client_hello_bytes)",
                                           limit)};
      }
      const std::size_t room =
          std::min(limit - hello.size(), std::max(scan.need - hello.size(), read_chunk));
      auto [ec, n] = co_await client_.async_read_some(hello.prepare(room), use_tuple);
      hello.commit(n);
      if (!ec) continue;
      if (deadline.expired()) {
        start_record();
        co_return Refusal{408, fmt::format("no whole ClientHello within {} ms "
                                           "(limits.client_hello_timeout_ms)",
                                           limits().client_hello_timeout.count())};
      }
      if (hello.size() == 0) co_return std::nullopt;
      start_record();
      co_return Refusal{499, ec == asio::error::eof
                                 ? std::string("the client closed the connection within its "
                                               "ClientHello")
                                 : fmt::format("reading the ClientHello: {}", ec.message())};
    }
  }

  static boost::system::result<std::string, Refusal> found_or_refused(ClientHelloScan scan) {
    switch (scan.status) {
      case Status::found:
        return std::move(scan.name);
      case Status::no_sni:
        return Refusal{400, fmt::format("no SNI server name to route on: {}", scan.reason)};
      case Status::not_tls:
        return Refusal{400, fmt::format("not TLS: {}", scan.reason)};
      case Status::malformed:
      case Status::need_more:
        break;
    }
    return Refusal{400, fmt::format("malformed ClientHello: {}", scan.reason)};
  }

  // The DNS-name form (route/request_route.hpp): the labels before the
  // host suffix name the VM; the listener's guest port is the agent's.
  boost::system::result<Route, Refusal> route_of(std::string_view name) const {
    const std::string& suffix = ctx_.config.routing.host_suffix;
    auto label = name_under_suffix(name, suffix);
    if (!label) {
      return Refusal{400, fmt::format("SNI name {} is not under the host suffix {}", name, suffix)};
    }
    auto target = parse_target(*label);
    if (!target) return Refusal{400, fmt::format("SNI name {}: {}", name, target.error())};
    return Route{.form = RouteForm::sni,
                 .target = std::move(*target),
                 .port = ctx_.listener.guest_port,
                 .origin_target = {}};
  }

  // The client's bytes so far to the agent, the agent's early ones (with
  // guestd's answer) to the client; then the buffers go, before the relay.
  awaitable<bool> replay(Buffer& hello, Tunnel& tunnel, RequestRecord& rec) {
    auto [ec, n] = co_await asio::async_write(tunnel.stream, hello.data(), use_tuple);
    rec.bytes_in += n;
    if (ec) {
      rec.reason = fmt::format("writing the ClientHello to the channel: {}", ec.message());
      co_return false;
    }
    hello.consume(hello.size());
    hello.shrink_to_fit();
    if (tunnel.early.size() > 0) {
      auto [wec, wn] = co_await asio::async_write(client_, tunnel.early.data(), use_tuple);
      rec.bytes_out += wn;
      if (wec) co_return false;
      tunnel.early.consume(wn);
      tunnel.early.shrink_to_fit();
    }
    co_return true;
  }

  // Unanswered: whatever hostd wrote would be read as a TLS record.
  // Here over the VM's transport or, for a VM on another host, through that
  // host's peer listener: the TLS bytes cross it untouched either way.
  awaitable<boost::system::result<Channel, Refusal>> open(const Destination& destination,
                                                          std::uint16_t port,
                                                          const Identity& identity,
                                                          const RequestRecord& rec) {
    // A named local: g++ 12 destroys a temporary in a co_await twice.
    const PeerRequest request{
        .client = peer_, .identity = identity.to_string(), .request_id = rec.id};
    co_return co_await open_vm_channel(ctx_.config.channel, ctx_.peers, destination.vm,
                                       destination.address, port, request);
  }

  void refuse(RequestRecord& rec, const Refusal& refusal) {
    rec.status = refusal.status;
    rec.reason = refusal.reason;
    close();
  }

  void close() {
    error_code ignored;
    client_.shutdown(asio::socket_base::shutdown_send, ignored);
    client_.close(ignored);
  }

  Stream client_;
  const ConnectionContext& ctx_;
  const std::uint64_t id_;
  const std::string peer_;
  const std::optional<asio::ip::address> peer_ip_;  // for a source identity
  const AdmissionContext admission_;
  const RequestRecord::clock::time_point start_ = RequestRecord::clock::now();
  // Logged when the connection ends; none for a client that sent nothing.
  std::optional<RequestRecord> record_;
};

}  // namespace

awaitable<void> serve_passthrough(Stream client, transport::PeerAddress peer,
                                  const ConnectionContext& context, std::uint64_t id,
                                  [[maybe_unused]] ConnectionSlot slot) {
  PassthroughConnection connection(std::move(client), std::move(peer), context, id);
  co_await connection.run();
}

}  // namespace vmgate::hostd
