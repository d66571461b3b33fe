// Keeps this host's part of the cluster directory in etcd, and the rest of
// it in this host's cache (docs/architecture.md, "Cluster"):
//
//   - a lease of cluster.lease_ttl_s, kept alive at a third of it; this
//     host's record and its VMs' claims are written under it, so they vanish
//     when the host dies. A lease that expired while hostd lives (a long
//     pause, a partition) is replaced, and everything written again, at once.
//   - every local change is claimed in a transaction on the key's
//     mod_revision, after claim_wins() against the claim it replaces: two
//     hosts claiming one VM never overwrite each other by accident.
//   - the cache is read whole at one revision, then watched from that
//     revision + 1. A watch whose revision was compacted reads everything
//     again and watches from the new read's revision + 1 (never from the
//     compact revision, which would skip what changed in between). Every
//     cluster.reconcile_interval_ms it is read whole anyway.
//   - etcd unreachable: routing goes on from the cache, the status says
//     degraded (/readyz), and etcd is tried again with jittered exponential
//     backoff, so a restarted etcd is not met by every host at once.
//
// Runs on one executor (the admin thread's); the directory is shared.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "common/asio.hpp"
#include "hostd/cluster/cluster_directory.hpp"
#include "hostd/cluster/etcd_client.hpp"
#include "hostd/config/hostd_config.hpp"

namespace vmgate::hostd {

// What readiness and metrics read, from any thread.
class ClusterStatus {
 public:
  bool connected() const { return connected_; }
  bool synced() const { return synced_; }  // read whole at least once
  std::int64_t revision() const { return revision_; }
  std::uint64_t compactions() const { return compactions_; }
  std::uint64_t lease_losses() const { return lease_losses_; }
  std::string last_error() const;

 private:
  friend class ClusterSync;
  void set_error(std::string error);
  std::atomic<bool> connected_{false};
  std::atomic<bool> synced_{false};
  std::atomic<std::int64_t> revision_{0};
  std::atomic<std::uint64_t> compactions_{0};
  std::atomic<std::uint64_t> lease_losses_{0};
  mutable std::mutex mutex_;
  std::string last_error_;
};

class ClusterSync {
 public:
  ClusterSync(asio::any_io_executor executor, const ClusterConfig& config,
              ClusterDirectory& directory, HostRecord self);
  ~ClusterSync();
  ClusterSync(const ClusterSync&) = delete;
  ClusterSync& operator=(const ClusterSync&) = delete;

  // Called once, on the executor, when etcd was read whole the first time.
  void on_first_sync(std::function<void()> callback) { on_first_sync_ = std::move(callback); }
  // Starts on the executor; runs until stop().
  void start();
  // Ends the session; its lease is left to expire. On the executor.
  void stop();
  const ClusterStatus& status() const { return status_; }

 private:
  struct SessionEnd {
    std::string reason;
    bool lease_lost = false;  // replace the lease at once, without backoff
  };
  awaitable<void> run();
  awaitable<SessionEnd> session();
  awaitable<void> keep_alive_loop();
  awaitable<void> watch_loop(std::int64_t revision);
  awaitable<void> publish_loop();
  awaitable<void> reconcile_loop();
  // Reads the prefix whole into the directory; its revision.
  awaitable<EtcdResult<std::int64_t>> read_everything();
  awaitable<EtcdResult<void>> publish_claim(const std::string& uuid);
  void on_watch(const EtcdWatchMessage& message);
  void mark_dirty(const std::string& uuid);
  // The first loop to end ends the session, and says why.
  void end_session(std::string reason, bool lease_lost = false);
  bool lease_error(const EtcdError& error) const;

  asio::any_io_executor executor_;
  const ClusterConfig& config_;
  ClusterDirectory& directory_;
  const HostRecord self_;
  EtcdClient client_;
  ClusterStatus status_;
  std::int64_t lease_ = 0;
  // The revision of the last change the watch delivered (or of the read it
  // started after): a broken watch resumes just after it.
  std::int64_t watched_ = 0;
  std::optional<SessionEnd> end_;
  std::set<std::string> dirty_;
  asio::steady_timer wake_publisher_;
  asio::steady_timer session_timer_;  // backoff between sessions
  bool stopping_ = false;
  std::function<void()> on_first_sync_;
};

}  // namespace vmgate::hostd
