#include "hostd/cluster/cluster_metrics.hpp"

#include <fmt/format.h>

#include "hostd/cluster/cluster_sync.hpp"
#include "hostd/cluster/peer_channels.hpp"
#include "hostd/cluster/peer_server.hpp"

namespace vmgate::hostd {

std::string render_cluster_metrics(const ClusterStatus& status, const PeerChannels& sent,
                                   const PeerServer& received) {
  return fmt::format(
      "# HELP vmgate_peer_messages_total Messages between hosts, sent by this host to another "
      "host's peer listener or received from one: a unicast link to one VM (CONNECT), or a "
      "fan-out's one message to a host for all of its VMs.\n"
      "# TYPE vmgate_peer_messages_total counter\n"
      "vmgate_peer_messages_total{{direction=\"sent\"}} {}\n"
      "vmgate_peer_messages_total{{direction=\"received\"}} {}\n"
      "# HELP vmgate_peer_failures_total Messages to other hosts that failed, were refused, or "
      "whose fan-out results were cut.\n"
      "# TYPE vmgate_peer_failures_total counter\n"
      "vmgate_peer_failures_total {}\n"
      "# HELP vmgate_cluster_etcd_connected Whether this host's etcd session is up (1) or "
      "it routes from its cache (0).\n"
      "# TYPE vmgate_cluster_etcd_connected gauge\n"
      "vmgate_cluster_etcd_connected {}\n"
      "# HELP vmgate_cluster_revision The etcd revision the cluster directory has seen.\n"
      "# TYPE vmgate_cluster_revision gauge\n"
      "vmgate_cluster_revision {}\n"
      "# HELP vmgate_cluster_watch_compactions_total Watches whose revision was compacted "
      "(each followed by a full read).\n"
      "# TYPE vmgate_cluster_watch_compactions_total counter\n"
      "vmgate_cluster_watch_compactions_total {}\n"
      "# HELP vmgate_cluster_lease_losses_total Leases that expired while hostd lived "
      "(each followed by a republish).\n"
      "# TYPE vmgate_cluster_lease_losses_total counter\n"
      "vmgate_cluster_lease_losses_total {}\n",
      sent.sent(), received.received(), sent.failed(), status.connected() ? 1 : 0,
      status.revision(), status.compactions(), status.lease_losses());
}

}  // namespace vmgate::hostd
