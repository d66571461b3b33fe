// hostd's listeners: accept loops, one per I/O thread and listener, that run
// each client connection on the thread that accepted it.
#pragma once

#include <atomic>
#include <memory>
#include <vector>

#include "common/asio.hpp"
#include "hostd/admission/connection_caps.hpp"
#include "hostd/authz/access_policy.hpp"
#include "hostd/channel/channel_pool.hpp"
#include "hostd/channel/live_channels.hpp"
#include "hostd/config/hostd_config.hpp"
#include "hostd/directory/directory.hpp"
#include "hostd/identity/token_file.hpp"
#include "hostd/listener/idle_connections.hpp"
#include "hostd/metrics/hostd_metrics.hpp"
#include "hostd/reload/running_config.hpp"

namespace vmgate::hostd {

class ConnectionSlot;

class Server {
 public:
  // Each listener is accepted from on every one of `session_executors` (each
  // an io_context run by one thread; `io` alone when the list is empty), and a
  // client connection runs on the executor that accepted it.
  // A connection takes `current`'s snapshot when it is accepted and keeps it.
  Server(asio::io_context& io, const CurrentConfig& current, const Directory& directory,
         ChannelBudget& budget, HostdMetrics* metrics = nullptr, ChannelPool* pool = nullptr,
         std::vector<asio::any_io_executor> session_executors = {},
         const TokenFile* tokens = nullptr, IdleConnections* idle = nullptr,
         LiveChannels* live = nullptr);
  ~Server();
  // Binds every listener; throws std::runtime_error naming the listener on failure.
  void start();
  // Stops accepting; connections in progress continue until they end.
  void stop_accepting();
  // Reads every TLS listener's certificate, key and CAs again (SIGHUP): new
  // connections get them, open ones keep theirs. A listener whose files fail
  // keeps its old ones, and that is logged; false if any failed.
  bool reload_tls();
  // "tcp:127.0.0.1:41234" for each listener, in config order (resolves port 0).
  std::vector<std::string> bound_addresses() const;
  // Client connections and tunnels open now, on every listener.
  std::uint32_t open_connections() const { return connections_->load(); }

 private:
  struct Listener;
  awaitable<void> accept_loop(Listener& listener, Acceptor& acceptor);
  bool take_connection_slot(const LimitsConfig& limits);
  bool take_client_place(const Listener& listener, Stream& socket, const LimitsConfig& limits,
                         ConnectionSlot& slot);

  asio::io_context& io_;
  const CurrentConfig& current_;
  const Directory& directory_;
  ChannelBudget& budget_;
  HostdMetrics* metrics_;
  ChannelPool* pool_;
  std::vector<asio::any_io_executor> session_executors_;
  const TokenFile* tokens_;
  IdleConnections* idle_;
  LiveChannels* live_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  // Shared with the connections (ConnectionSlot): one may end, and give its
  // slot back, while the server itself is being torn down.
  std::shared_ptr<std::atomic<std::uint32_t>> connections_ =
      std::make_shared<std::atomic<std::uint32_t>>(0);
  std::atomic<std::uint64_t> next_connection_id_{0};
  // Per client address and CONNECT tunnels (limits.max_connections_per_client, max_tunnels).
  ConnectionCaps caps_;
};

}  // namespace vmgate::hostd
