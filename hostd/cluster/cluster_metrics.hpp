// Cluster mode's metrics, in the Prometheus text format, appended to
// hostd's /metrics (HostdMetrics::set_extra). Messages between hosts are
// counted at both ends: a host's `sent` are the CONNECTs its client
// connections opened to other hosts (a pooled link carries several requests
// to one VM) and the fan-out messages it sent (one per other host a fan-out
// reaches, whatever the number of its VMs), its `received` the ones other
// hosts sent it.
#pragma once

#include <string>

namespace vmgate::hostd {

class ClusterStatus;
class PeerChannels;
class PeerServer;

std::string render_cluster_metrics(const ClusterStatus& status, const PeerChannels& sent,
                                   const PeerServer& received);

}  // namespace vmgate::hostd
