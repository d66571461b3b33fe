// hostd's listeners: accept loops, one per I/O thread and listener, that run
// each client connection on the thread that accepted it.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <vector>

#include "common/asio.hpp"
#include "hostd/admission/connection_caps.hpp"
#include "hostd/authz/access_policy.hpp"
#include "hostd/channel/channel_on_demand.hpp"
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
class PeerChannels;

class Server {
  struct Listener;

 public:
  // What a SIGHUP makes of the listeners, prepared (prepare_listeners) and
  // not yet in force: the new listening sockets, bound but not accepted
  // from, and the settings the running ones are to take. Dropped unused,
  // its sockets close and nothing has changed.
  class ListenerReload {
   public:
    ListenerReload(ListenerReload&&) noexcept;
    ListenerReload& operator=(ListenerReload&&) noexcept;
    ~ListenerReload();

   private:
    friend class Server;
    ListenerReload();
    struct Next;
    std::vector<Next> next_;  // in the new config's order
  };

  // Each listener is accepted from on every one of `session_executors` (each
  // an io_context run by one thread; `io` alone when the list is empty), and a
  // client connection runs on the executor that accepted it.
  // A connection takes `current`'s snapshot when it is accepted and keeps it.
  Server(asio::io_context& io, const CurrentConfig& current, const Directory& directory,
         ChannelBudget& budget, HostdMetrics* metrics = nullptr, ChannelPool* pool = nullptr,
         std::vector<asio::any_io_executor> session_executors = {},
         const TokenFile* tokens = nullptr, IdleConnections* idle = nullptr,
         LiveChannels* live = nullptr, ChannelOnDemand* on_demand = nullptr,
         PeerChannels* peers = nullptr);
  ~Server();
  // Binds every listener; throws std::runtime_error naming the listener
  // ("FILE:LINE: listener[N].address: cannot listen on ...") on failure.
  void start();
  // Stops accepting; connections in progress continue until they end.
  void stop_accepting();

  // SIGHUP, in two steps, both on `io`'s thread. A listener of `next` is the
  // running one with the same address (unix path, or host and port; those on
  // port 0 by their order among the listeners on the same address), else a
  // new one. First, what can fail: binds the listeners `next` adds and reads
  // the TLS files of those it adds or whose [listener.tls] changed. Throws
  // std::runtime_error "FILE:LINE: listener[N].address: reason" for the
  // first that fails, having changed nothing: a port in use refuses the
  // whole reload, as a config error does (see the comment in server.cpp).
  ListenerReload prepare_listeners(const HostdConfig& next);
  // Then what cannot fail: the added listeners start accepting, the changed
  // ones give their new settings (identity, mode, TLS, guest port, name) to
  // the connections they accept from now on, and the removed ones close
  // their listening sockets. A connection already open, on any of them,
  // keeps the settings it was accepted with and runs to its own end.
  void apply_listeners(ListenerReload reload);

  // Reads every TLS listener's certificate, key and CAs again (SIGHUP): new
  // connections get them, open ones keep theirs. A listener whose files fail
  // keeps its old ones, and that is logged; false if any failed.
  bool reload_tls();
  // "tcp:127.0.0.1:41234" for each listener, in config order (resolves port 0).
  std::vector<std::string> bound_addresses() const;
  // Client connections and tunnels open now, on every listener.
  std::uint32_t open_connections() const { return connections_->load(); }

 private:
  std::shared_ptr<Listener> open_listener(const ListenerConfig& config, std::string key);
  void start_accepting(const std::shared_ptr<Listener>& listener);
  static void close_acceptors(Listener& listener, std::function<void()> closed = {});
  awaitable<void> accept_loop(Listener& listener, Acceptor& acceptor);
  bool take_connection_slot(const LimitsConfig& limits);
  bool take_client_place(const ListenerConfig& listener, Stream& socket,
                         const transport::PeerAddress& peer, const LimitsConfig& limits,
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
  ChannelOnDemand* on_demand_;
  PeerChannels* peers_;
  // The running listeners, in config order, and those removed whose accept
  // loops may not have ended yet; changed on `io`'s thread only. Owned here,
  // not by the loops, so that all are gone before the io_contexts.
  std::vector<std::shared_ptr<Listener>> listeners_;
  std::vector<std::shared_ptr<Listener>> retired_;
  // Shared with the connections (ConnectionSlot): one may end, and give its
  // slot back, while the server itself is being torn down.
  std::shared_ptr<std::atomic<std::uint32_t>> connections_ =
      std::make_shared<std::atomic<std::uint32_t>>(0);
  std::atomic<std::uint64_t> next_connection_id_{0};
  // Per client address and CONNECT tunnels (limits.max_connections_per_client, max_tunnels).
  ConnectionCaps caps_;
};

}  // namespace vmgate::hostd
