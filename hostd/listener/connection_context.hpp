// What every connection on one hostd listener shares (ConnectionContext),
// and what each holds while it lives (ConnectionSlot): set up by the
// listener's server (hostd/listener/server), read by the connection, its
// handshake and its tunnel.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>

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

// How long a TLS client has to answer close_notify; nothing to wait for
// on a plaintext listener.
inline std::chrono::milliseconds close_limit(const ConnectionContext& context) {
  return context.tls ? context.tls->config().handshake_timeout : std::chrono::milliseconds(0);
}

}  // namespace vmgate::hostd
