// One client connection on a hostd listener, for its whole life: read a
// request head, admit it (hostd/admission), then deliver it (hostd/proxy:
// an exchange over a channel, or a CONNECT tunnel), and again while the
// client keeps the connection (docs/architecture.md, "The path of one
// request").
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "common/asio.hpp"
#include "common/transport.hpp"
#include "hostd/admission/connection_caps.hpp"
#include "hostd/authz/access_policy.hpp"
#include "hostd/channel/channel_budget.hpp"
#include "hostd/channel/channel_on_demand.hpp"
#include "hostd/channel/channel_pool.hpp"
#include "hostd/channel/live_channels.hpp"
#include "hostd/config/hostd_config.hpp"
#include "hostd/directory/directory.hpp"
#include "hostd/identity/tls_server.hpp"
#include "hostd/identity/token_file.hpp"
#include "hostd/listener/idle_connections.hpp"
#include "hostd/metrics/hostd_metrics.hpp"

namespace vmgate::hostd {

class PeerChannels;

struct ConnectionContext {
  const HostdConfig& config;
  const ListenerConfig& listener;
  const Directory& directory;
  const AccessPolicy& policy;
  ChannelBudget& budget;
  HostdMetrics* metrics = nullptr;    // null: not counted (tests)
  ChannelPool* pool = nullptr;        // null: a channel closes when its exchange ends
  const TlsServer* tls = nullptr;     // null: the listener is plaintext
  const TokenFile* tokens = nullptr;  // set for a listener with identity = "token"
  IdleConnections* idle = nullptr;    // null: not closed early on SIGTERM (tests)
  LiveChannels* live = nullptr;       // null: channels in use are not cut when their VM goes
  ConnectionCaps* caps = nullptr;     // null: tunnels are not capped (tests)
  // null: a VM without a vsock device is refused 503 (libvirt.attach_vsock_on_demand off).
  ChannelOnDemand* on_demand = nullptr;
  // Cluster mode: VMs on other hosts are reached through them. Null: every
  // VM is this host's.
  PeerChannels* peers = nullptr;
};

// A connection's place under max_connections, given back when the
// connection's coroutine ends. The count is shared: a connection may end
// while the server that accepted it is being torn down.
// It holds the connection's place under its address's cap too
// (limits.max_connections_per_client), and says when there was none.
class ConnectionSlot {
 public:
  ConnectionSlot() = default;
  explicit ConnectionSlot(std::shared_ptr<std::atomic<std::uint32_t>> count)
      : count_(std::move(count)) {}
  ConnectionSlot(ConnectionSlot&&) = default;
  ConnectionSlot& operator=(ConnectionSlot&&) = delete;
  ~ConnectionSlot() {
    if (count_) --*count_;
  }

  // `place` empty: the client's address had all its connections already;
  // the connection is refused (429 where HTTP can be spoken) and closed.
  void set_client_place(CapPlace place) {
    over_client_cap_ = !place;
    client_place_ = std::move(place);
  }
  bool over_client_cap() const { return over_client_cap_; }

 private:
  std::shared_ptr<std::atomic<std::uint32_t>> count_;
  CapPlace client_place_;
  bool over_client_cap_ = false;
};

// The identity a connection has from its listener and its socket alone:
// trusted, or its source address; anonymous otherwise, until a client
// certificate or proxy credentials say more. The address is noted either way.
// (A passthrough listener, which sees no credentials, has only this.)
Identity listener_identity(const ListenerConfig& listener,
                           const std::optional<asio::ip::address>& address);

// Runs until the client closes, a request ends the connection, a tunnel
// ends, or a limit is hit; then closes the connection. On a TLS listener the
// handshake comes first, within tls.handshake_timeout, and a client it fails
// for is logged with the reason and closed. Never throws for anything a
// client or guest does. `id` names the connection in records.
// `context_owner` keeps what `context` refers to while the connection lives:
// between requests the connection waits outside this coroutine (which then
// returns), and holds it there. `peer`: the client's address, from accept.
awaitable<void> serve_client(Stream client, transport::PeerAddress peer,
                             const ConnectionContext& context,
                             std::shared_ptr<const void> context_owner, std::uint64_t id,
                             ConnectionSlot slot);

}  // namespace vmgate::hostd
