#include "hostd/listener/established_tunnel.hpp"

#include <optional>
#include <utility>

#include "common/log.hpp"
#include "common/relay.hpp"

namespace vmgate::hostd {
namespace {

// A tunnel over TLS, to its end: the relay, then the record, the channel and
// the client connection, in that order (EstablishedTunnel). The connection's
// slot is held until then.
awaitable<void> run_tls_tunnel(EstablishedTunnel tunnel, [[maybe_unused]] ConnectionSlot slot,
                               std::chrono::milliseconds idle,
                               std::chrono::milliseconds close_within, LiveChannels* live) {
  RelayResult relayed;
  {
    // Closed under the relay if its VM goes away meanwhile.
    const ChannelWatch watch(live, tunnel.tunnel.key, tunnel.tunnel.stream,
                             &tunnel.client.socket());
    relayed = co_await relay_tunnel(tunnel.client, tunnel.tunnel.stream, idle);
    if (watch.revoked()) note_vm_gone(tunnel.record, relayed, watch.why());
  }
  note_relayed(tunnel.record, relayed);
  co_await tunnel.client.close(!relayed.error && !relayed.idle_timeout, close_within);
}

// A plaintext tunnel while its relay runs: owned by the relay's completion
// handler, not a coroutine, so an idle one is this, the relay's state and
// two readiness waits. (bench/idle_connections.py, 10,000 idle CONNECT
// tunnels, hostd RSS: 5.7 KiB per tunnel while the connection's coroutine
// awaited the relay, 5.0 KiB in a coroutine of its own, 3.6 KiB so.)
// Members end in reverse order: the watch before the tunnel's channel.
struct RelayedTunnel {
  RelayedTunnel(EstablishedTunnel&& established, ConnectionSlot&& slot_, LiveChannels* live)
      : tunnel(std::move(established)),
        slot(std::move(slot_)),
        watch(std::in_place, live, tunnel.tunnel.key, tunnel.tunnel.stream,
              &tunnel.client.socket()) {}

  EstablishedTunnel tunnel;
  ConnectionSlot slot;
  // Closes the channel under the relay if its VM goes away meanwhile.
  std::optional<ChannelWatch> watch;
};

void start_plaintext_tunnel(std::unique_ptr<RelayedTunnel> relayed_tunnel,
                            std::chrono::milliseconds idle) {
  RelayedTunnel& t = *relayed_tunnel;
  start_relay(t.tunnel.client.socket(), t.tunnel.tunnel.stream, idle, {},
              relay_done([owned = std::move(relayed_tunnel)](RelayResult relayed) {
                EstablishedTunnel& tunnel = owned->tunnel;
                if (owned->watch->revoked())
                  note_vm_gone(tunnel.record, relayed, owned->watch->why());
                owned->watch.reset();
                note_relayed(tunnel.record, relayed);
                tunnel.client.close_plaintext(!relayed.error && !relayed.idle_timeout);
              }));
}

}  // namespace

void run_established_tunnel(std::unique_ptr<EstablishedTunnel> tunnel, ConnectionSlot slot,
                            std::chrono::milliseconds idle, std::chrono::milliseconds close_within,
                            LiveChannels* live) {
  if (!tunnel->client.tls()) {
    start_plaintext_tunnel(
        std::make_unique<RelayedTunnel>(std::move(*tunnel), std::move(slot), live), idle);
    return;
  }
  const std::uint64_t id = tunnel->record.conn;
  auto executor = tunnel->client.get_executor();
  asio::co_spawn(executor,
                 run_tls_tunnel(std::move(*tunnel), std::move(slot), idle, close_within, live),
                 [id](std::exception_ptr e) {
                   if (e) {
                     log::error("tunnel_failed")
                         .kv("conn", static_cast<unsigned long long>(id))
                         .kv("error", log::describe(e));
                   }
                 });
}

}  // namespace vmgate::hostd
