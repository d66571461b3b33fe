// vmgate-hostd: the KVM host's gateway into its guests' agents.
#include <malloc.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "common/config_reader.hpp"
#include "common/hangup.hpp"
#include "common/log.hpp"
#include "hostd/admin/admin_server.hpp"
#include "hostd/admin/readiness.hpp"
#include "hostd/authz/access_policy.hpp"
#include "hostd/channel/channel_on_demand.hpp"
#include "hostd/channel/channel_pool.hpp"
#include "hostd/channel/channel_revoker.hpp"
#include "hostd/channel/live_channels.hpp"
#include "hostd/cluster/cluster_directory.hpp"
#include "hostd/cluster/cluster_metrics.hpp"
#include "hostd/cluster/cluster_sync.hpp"
#include "hostd/cluster/peer_channels.hpp"
#include "hostd/cluster/peer_server.hpp"
#include "hostd/cluster/peer_tls.hpp"
#include "hostd/config/hostd_config.hpp"
#include "hostd/directory/embedded_directory.hpp"
#include "hostd/directory/group_membership.hpp"
#include "hostd/dns/dns_server.hpp"
#include "hostd/dns/vm_zone.hpp"
#include "hostd/guestside/guest_listeners.hpp"
#include "hostd/guestside/guest_membership.hpp"
#include "hostd/identity/tls_server.hpp"
#include "hostd/identity/token_file.hpp"
#include "hostd/inventory/libvirt_inventory.hpp"
#include "hostd/listener/idle_connections.hpp"
#include "hostd/listener/server.hpp"
#include "hostd/metrics/hostd_metrics.hpp"
#include "hostd/reload/running_config.hpp"

#ifndef VMGATE_VERSION
#define VMGATE_VERSION "0.0.0"
#endif

namespace {

// This host's name in the directory (a VM's `host`).
std::string host_name() {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

// This host's name: the directory's `host` of its VMs, and in a cluster its
// record's name in etcd, which its peer certificate must carry.
std::string this_host_name(const vmgate::hostd::HostdConfig& config) {
  if (!config.cluster.host_name.empty()) return config.cluster.host_name;
  return host_name();
}

constexpr std::string_view usage =
    "usage: vmgate-hostd --config FILE [--check-config] [--log-level debug|info|warn|error]\n"
    "       vmgate-hostd --version\n";

// SIGHUP: the file read again into a new snapshot, which new connections
// take, with the listeners it adds, changes or removes and the tokens file
// it names. What can fail comes first: the file loaded, new listeners bound
// and their TLS files read, a tokens file at a new path read. A failure is
// logged (FILE:LINE: KEY: reason) and the running snapshot, listeners and
// tokens all stay; else it all takes effect together. True when the tokens
// file was read here, at its new path.
bool reload_config(const std::string& path, vmgate::hostd::CurrentConfig& current,
                   vmgate::hostd::Server& server, vmgate::hostd::TokenFile& tokens) {
  using namespace vmgate;
  auto running = current.get();
  try {
    hostd::HostdConfig next = hostd::load_hostd_config(path);
    for (const auto& key : hostd::keep_restart_only(running->config, next))
      log::warn("reload_needs_restart").kv("file", path).kv("key", key);
    auto listeners = server.prepare_listeners(next);
    const bool tokens_moved = next.auth.tokens_file != tokens.path();
    hostd::TokenStore moved_tokens;
    if (tokens_moved && !next.auth.tokens_file.empty())
      moved_tokens = hostd::TokenStore::load(next.auth.tokens_file);
    auto snapshot = std::make_shared<const hostd::RunningConfig>(std::move(next));
    // Nothing below fails. The tokens first, then the snapshot: a listener
    // that starts asking for tokens finds them in place.
    if (tokens_moved) {
      tokens.replace(snapshot->config.auth.tokens_file, std::move(moved_tokens));
      log::info("tokens_reloaded").kv("file", tokens.path()).kv("tokens", tokens.current()->size());
    }
    current.set(snapshot);
    server.apply_listeners(std::move(listeners));
    log::info("config_reloaded")
        .kv("file", path)
        .kv("acl_rules", snapshot->config.acl.size())
        .kv("listeners", snapshot->config.listeners.size());
    return tokens_moved;
  } catch (const std::exception& e) {
    log::error("config_reload_failed").kv("file", path).kv("error", e.what());
    return false;
  }
}

int run(const std::string& config_path, vmgate::hostd::HostdConfig loaded,
        vmgate::hostd::TokenFile& tokens) {
  using namespace vmgate;
  // The first snapshot, kept for hostd's life: the admin listener, the
  // inventory and the channels, which a reload does not change, refer to it.
  const auto first = std::make_shared<const hostd::RunningConfig>(std::move(loaded));
  const hostd::HostdConfig& config = first->config;
  hostd::CurrentConfig current(first);
  // Guests' group joins, from the state file; the one store, which guest
  // JOIN and LEAVE write. Groups and limits are the first config's: a
  // reload does not change them.
  auto memberships =
      hostd::GroupMembership::open(config.directory.state_file, config.groups.joinable);
  if (!memberships) {
    log::error("directory_state_unreadable").kv("error", memberships.error());
    return 1;
  }
  hostd::GroupMembership& group_membership = **memberships;
  // One host on its own (the default), or one of a cluster whose directory
  // is in etcd (docs/architecture.md, "Cluster").
  const bool clustered = config.cluster.enabled;
  const std::string this_host = this_host_name(config);
  std::optional<hostd::EmbeddedDirectory> embedded;
  std::optional<hostd::ClusterDirectory> cluster_directory;
  if (clustered) {
    cluster_directory.emplace(this_host);
    cluster_directory->use_groups(config.groups, config.fanout, &group_membership);
  } else {
    embedded.emplace(this_host);
    embedded->use_groups(config.groups, config.fanout, &group_membership);
  }
  hostd::Directory& directory =
      clustered ? static_cast<hostd::Directory&>(*cluster_directory) : *embedded;
  hostd::DirectoryFeed& feed =
      clustered ? static_cast<hostd::DirectoryFeed&>(*cluster_directory) : *embedded;
  group_membership.follow(directory);
  // The store is declared before the directories and outlives them: it stops
  // following before they go, or its destructor would reach a dead one.
  struct Unfollow {
    hostd::GroupMembership& store;
    ~Unfollow() { store.unfollow(); }
  } unfollow_directory{group_membership};
  hostd::LibvirtInventory inventory(config.libvirt, feed);
  hostd::HostdMetrics metrics(directory, &inventory.stats());
  hostd::Readiness readiness(config.libvirt.uri, &inventory.stats());
  inventory.start();

  // One io_context per I/O thread, each run by that thread alone: a client
  // connection stays on one thread, needs no strand, and the threads do not
  // wake each other for every completion as they do sharing one io_context.
  // `io` (the first) also accepts, and runs the admin API and signals.
  unsigned threads =
      config.threads ? config.threads : std::max(1u, std::thread::hardware_concurrency());
  // Declared before the io_contexts: a connection's frame, destroyed with
  // them, leaves it as it ends.
  hostd::IdleConnections idle_connections;
  // Likewise: an exchange's or tunnel's watch of its channel ends with it.
  hostd::LiveChannels live_channels(
      [&directory](const hostd::ChannelKey& key) { return hostd::channel_gone(key, directory); });
  // Declared before the io_contexts too: their coroutines, destroyed with
  // them, refer to these.
  std::optional<hostd::ClusterSync> cluster_sync;
  std::optional<hostd::PeerChannels> peers;
  std::optional<hostd::PeerServer> peer_server;
  asio::io_context io{1};
  // Caught from here on, before anything listens: a signal that comes
  // before its handler is waiting is kept for it, and never kills hostd.
  asio::signal_set signals(io, SIGINT, SIGTERM);
  asio::signal_set hangup(io, SIGHUP);
  std::vector<std::unique_ptr<asio::io_context>> more_io;
  std::vector<asio::any_io_executor> session_executors{io.get_executor()};
  for (unsigned i = 1; i < threads; ++i) {
    more_io.push_back(std::make_unique<asio::io_context>(1));
    session_executors.push_back(more_io.back()->get_executor());
  }
  // Declared after the io_contexts: its idle channels are closed while they
  // exist. The budget outlives the pool, whose channels give their tickets back.
  hostd::ChannelBudget channel_budget(config.channel);
  hostd::ChannelPool channel_pool(io.get_executor(), config.channel);
  metrics.set_channel_pool(&channel_pool.stats());
  metrics.set_channel_budget(&channel_budget);
  // A VM that stops, vanishes or takes a new CID loses its channels, in use
  // and idle, as the directory hears of it (channel/channel_revoker.hpp).
  hostd::ChannelRevoker revoker(directory, live_channels, &channel_pool);
  // libvirt.attach_vsock_on_demand: the inventory attaches the devices.
  std::optional<hostd::ChannelOnDemand> on_demand;
  if (config.libvirt.attach_vsock_on_demand)
    on_demand.emplace(inventory, config.libvirt.attach_timeout, config.libvirt.attach_retry_after);
  if (clustered) {
    const hostd::ClusterConfig& cc = config.cluster;
    hostd::PeerTls tls = hostd::load_peer_tls(cc, this_host);
    peers.emplace(cc, *cluster_directory, tls.client, config.limits.idle_timeout,
                  config.fanout.max_response);
    peer_server.emplace(io.get_executor(), config, *cluster_directory, tls.server, &live_channels,
                        hostd::PeerFanoutDelivery{
                            .budget = &channel_budget, .pool = &channel_pool, .metrics = &metrics});
    peer_server->start();
    hostd::HostRecord self{
        .name = this_host,
        .peer_address = cc.peer_address.empty() ? cc.peer_listen.to_string() : cc.peer_address,
        .version = VMGATE_VERSION,
        .client_addresses = cc.client_addresses};
    cluster_sync.emplace(io.get_executor(), cc, *cluster_directory, std::move(self));
    readiness.set_cluster(&cluster_sync->status());
    cluster_sync->on_first_sync([&readiness] { readiness.cluster_synced(); });
    metrics.set_extra([&] {
      return hostd::render_cluster_metrics(cluster_sync->status(), *peers, *peer_server);
    });
    cluster_sync->start();
  }
  hostd::Server server(io, current, directory, channel_budget, &metrics, &channel_pool,
                       session_executors, &tokens, &idle_connections, &live_channels,
                       on_demand ? &*on_demand : nullptr, peers ? &*peers : nullptr);
  server.start();
  // The host end of the channels guests start ([inbound]), when configured.
  // A guest's SEND to many VMs shares each VM's channels with the clients'.
  const hostd::GuestFanout guest_fanout{
      .budget = channel_budget, .pool = &channel_pool, .live = &live_channels, .metrics = &metrics};
  std::optional<hostd::GuestListeners> guest_listeners;
  if (config.inbound.enabled()) {
    guest_listeners.emplace(io.get_executor(), directory,
                            hostd::GuestServices{current, config.channel, directory,
                                                 hostd::membership_change(group_membership),
                                                 &guest_fanout, peers ? &*peers : nullptr},
                            config.inbound);
    if (auto ec = guest_listeners->start()) {
      log::error("guest_listen_failed")
          .kv("listen", config.inbound.listen ? config.inbound.listen->to_string() : "")
          .kv("error", ec.message());
      return 1;
    }
  }
  std::optional<hostd::AdminServer> admin;
  if (config.admin.enabled) {
    admin.emplace(io, config.admin,
                  hostd::AdminContext{config, directory, metrics, readiness, first->policy,
                                      peers ? &*peers : nullptr, first.get()},
                  &current);
    admin->start();
  }
  std::optional<hostd::DnsServer> dns;
  if (config.dns.enabled()) {
    // In a cluster, another host's VMs answer the addresses its record publishes.
    dns.emplace(io, config.dns,
                hostd::vm_zone(directory, config, this_host,
                               cluster_directory ? hostd::published_addresses(*cluster_directory)
                                                 : hostd::HostAddresses{}));
    dns->start();
  }
  readiness.listeners_bound();
  // Ready once libvirt has been read too. wait_first_sync blocks, so it waits
  // on a thread of its own, never on the io_context; it gives up if hostd
  // stops first.
  std::jthread first_sync([&](std::stop_token stop) {
    while (!stop.stop_requested()) {
      if (inventory.wait_first_sync(std::chrono::milliseconds(200))) {
        readiness.libvirt_synced();
        return;
      }
    }
  });

  asio::steady_timer drain(io);
  using clock = std::chrono::steady_clock;
  // A connection ends on its own thread and tells nobody: the shared count
  // is looked at every 20 ms instead, and the stop is over when it is zero.
  // Guests' connections (on `io`, as this is) count too: a guest's request
  // in progress, a fan-out most of all, finishes like a client's.
  std::function<void(clock::time_point)> drain_until = [&](clock::time_point grace_end) {
    const std::uint32_t open =
        server.open_connections() + (guest_listeners ? guest_listeners->open_connections() : 0);
    if (open == 0 || clock::now() >= grace_end) {
      if (open != 0) log::warn("stop_grace_expired").kv("connections", open);
      io.stop();
      for (auto& other : more_io)
        other->stop();
      return;
    }
    drain.expires_after(std::chrono::milliseconds(20));
    drain.async_wait([&, grace_end](error_code ec) {
      if (!ec) drain_until(grace_end);
    });
  };
  // What can change without a restart: the config file's listeners, ACL
  // rules, limits and routing (for new connections), TLS certificates, keys
  // and CAs, and the tokens file. Whatever fails to load is logged and stays
  // as it was. TLS first: a listener the file adds or changes reads its own.
  on_each_hangup(hangup, [&server, &current, &config_path, &tokens] {
    log::info("reloading").kv("signal", "SIGHUP").kv("what", "config,listeners,tls,tokens");
    server.reload_tls();
    const bool tokens_read = reload_config(config_path, current, server, tokens);
    if (tokens_read || tokens.path().empty()) return;
    if (std::string error = tokens.reload(); !error.empty()) {
      log::error("tokens_reload_failed").kv("file", tokens.path()).kv("error", error);
    } else {
      log::info("tokens_reloaded").kv("file", tokens.path()).kv("tokens", tokens.current()->size());
    }
  });
  signals.async_wait([&](error_code ec, int signal) {
    if (ec) return;
    log::info("stopping").kv("signal", signal);
    error_code ignored;
    hangup.cancel(ignored);
    readiness.stopping();  // /readyz answers 503 while sessions drain
    server.stop_accepting();
    if (peer_server) peer_server->stop();
    if (cluster_sync) cluster_sync->stop();
    if (guest_listeners) guest_listeners->stop();
    if (dns) dns->stop();
    // Connections between requests close now; requests and tunnels in
    // progress get limits.stop_grace to finish, then what is left is closed.
    idle_connections.stop(session_executors);
    drain_until(clock::now() + current.get()->config.limits.stop_grace);
  });

  std::vector<std::jthread> io_threads;
  for (auto& other : more_io) {
    // Kept running while it has no connection, until stop().
    io_threads.emplace_back([&other] {
      auto work = asio::make_work_guard(*other);
      other->run();
    });
  }
  io.run();
  io.stop();
  for (auto& other : more_io)
    other->stop();
  io_threads.clear();
  metrics.set_channel_pool(nullptr);
  metrics.set_channel_budget(nullptr);
  metrics.set_extra({});
  first_sync.request_stop();
  first_sync.join();
  inventory.stop();
  log::info("stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace vmgate;
  // Connections allocate and free 64 KiB body buffers all the time. With
  // glibc's defaults each free at the top of the heap can give the pages back
  // and the next allocation faults them in again, zeroed: keep them instead.
  // Buffers stay on the heap (below the mmap threshold) for the same reason.
  ::mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024);
  ::mallopt(M_MMAP_THRESHOLD, 1024 * 1024);
  std::string config_path;
  bool check_only = false;
  std::vector<std::string> args(argv + 1, argv + argc);
  for (std::size_t i = 0; i < args.size(); ++i) {
    const auto& a = args[i];
    if (a == "--config" && i + 1 < args.size()) {
      config_path = args[++i];
    } else if (a == "--check-config") {
      check_only = true;
    } else if (a == "--version") {
      std::cout << "vmgate-hostd " << VMGATE_VERSION << "\n";
      return 0;
    } else if (a == "--log-level" && i + 1 < args.size()) {
      const auto& level = args[++i];
      if (level == "debug")
        log::set_min_level(log::Level::debug);
      else if (level == "info")
        log::set_min_level(log::Level::info);
      else if (level == "warn")
        log::set_min_level(log::Level::warn);
      else if (level == "error")
        log::set_min_level(log::Level::error);
      else {
        std::cerr << "vmgate-hostd: unknown log level '" << level << "'\n" << usage;
        return 2;
      }
    } else if (a == "--help" || a == "-h") {
      std::cout << usage;
      return 0;
    } else {
      std::cerr << "vmgate-hostd: unknown argument '" << a << "'\n" << usage;
      return 2;
    }
  }
  if (config_path.empty()) {
    std::cerr << "vmgate-hostd: --config FILE is required\n" << usage;
    return 2;
  }
  hostd::HostdConfig config;
  try {
    config = hostd::load_hostd_config(config_path);
  } catch (const config::ConfigError& e) {
    std::cerr << "vmgate-hostd: config error: " << e.what() << "\n";
    return 2;
  }
  // The files the config names are checked now, before anything listens:
  // a tokens file others may read, or a key that does not match its
  // certificate, stops hostd (and --check-config) here.
  std::optional<hostd::TokenFile> tokens;
  try {
    if (config.auth.tokens_file.empty())
      tokens.emplace();  // none, until a reload names a file
    else
      tokens.emplace(config.auth.tokens_file);
    for (const auto& listener : config.listeners) {
      if (listener.tls) hostd::TlsServer check(listener.name, *listener.tls);
    }
    if (config.cluster.enabled) {
      const std::string name = this_host_name(config);
      if (!hostd::valid_host_name(name))
        throw std::runtime_error(
            fmt::format("cluster.host_name: this host's name '{}' cannot be "
                        "part of an etcd key; set cluster.host_name",
                        name));
      hostd::load_peer_tls(config.cluster, name);
    }
  } catch (const std::exception& e) {
    std::cerr << "vmgate-hostd: config error: " << e.what() << "\n";
    return 2;
  }
  if (check_only) {
    std::cout << "vmgate-hostd: " << config_path << " is valid\n";
    return 0;
  }
  // Process-wide, and so here: a write (or splice) to a connection whose peer
  // has gone must come back as EPIPE, not kill the daemon.
  std::signal(SIGPIPE, SIG_IGN);
  try {
    return run(config_path, std::move(config), *tokens);
  } catch (const std::exception& e) {
    log::error("fatal").kv("error", e.what());
    return 1;
  }
}
