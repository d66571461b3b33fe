// Whether hostd is ready to serve: its listeners are bound and the first
// libvirt synchronisation is done (before it, every VM would be a 404).
// The same answer goes to systemd (sd_notify READY=1, Type=notify) and to
// the admin listener's /readyz.
#pragma once

#include <atomic>
#include <string>

#include "hostd/inventory/libvirt_inventory.hpp"

namespace vmgate::hostd {
class ClusterStatus;
}

namespace vmgate::hostd {

class Readiness {
 public:
  // `inventory` may be null (tests); it only adds detail to the reason.
  Readiness(std::string libvirt_uri, const InventoryStats* inventory);

  // Each may come from any thread; the one that completes readiness tells
  // systemd, once.
  void listeners_bound();
  void libvirt_synced();
  // Cluster mode: the directory was read from etcd for the first time.
  void cluster_synced() { notify_if_ready(); }
  // Shutting down: no longer ready, and systemd is told STOPPING=1.
  void stopping();

  bool ready() const;
  // Empty when ready; otherwise why not, "; "-separated.
  std::string reason() const;
  // Cluster mode: ready needs the cluster directory read once from etcd;
  // afterwards, etcd out of reach is `degraded`, not unready: requests are
  // still routed from the cache, and every host losing etcd at once must
  // not take the fleet out of its load balancers. Null: not a cluster.
  void set_cluster(const ClusterStatus* cluster) { cluster_ = cluster; }
  // Ready, but serving from a cache etcd cannot refresh: why (empty: not so).
  std::string degraded() const;

 private:
  void notify_if_ready();

  const std::string libvirt_uri_;
  const InventoryStats* inventory_;
  const ClusterStatus* cluster_ = nullptr;
  std::atomic<bool> listeners_{false};
  std::atomic<bool> synced_{false};
  std::atomic<bool> stopping_{false};
  std::atomic<bool> notified_{false};
};

}  // namespace vmgate::hostd
