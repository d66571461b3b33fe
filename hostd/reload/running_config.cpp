#include "hostd/reload/running_config.hpp"

namespace vmgate::hostd {

namespace {

// Sets `next` back to `running` when they differ, and says so under `key`.
template <typename T>
void keep(std::vector<std::string>& changed, const char* key, const T& running, T& next) {
  if (next == running) return;
  changed.emplace_back(key);
  next = running;
}

}  // namespace

std::vector<std::string> keep_restart_only(const HostdConfig& running, HostdConfig& next) {
  std::vector<std::string> changed;
  keep(changed, "libvirt.uri", running.libvirt.uri, next.libvirt.uri);
  keep(changed, "libvirt.read_only", running.libvirt.read_only, next.libvirt.read_only);
  keep(changed, "libvirt.reconnect_min_ms", running.libvirt.reconnect_min,
       next.libvirt.reconnect_min);
  keep(changed, "libvirt.reconnect_max_ms", running.libvirt.reconnect_max,
       next.libvirt.reconnect_max);
  keep(changed, "libvirt.attach_vsock_on_demand", running.libvirt.attach_vsock_on_demand,
       next.libvirt.attach_vsock_on_demand);
  keep(changed, "libvirt.attach_timeout_ms", running.libvirt.attach_timeout,
       next.libvirt.attach_timeout);
  keep(changed, "libvirt.attached_guestd_timeout_ms", running.libvirt.attached_guestd_timeout,
       next.libvirt.attached_guestd_timeout);
  keep(changed, "threads", running.threads, next.threads);
  // The channel section as a whole: the budget and pool are built from it
  // once, and a connection's channels must agree with them.
  const ChannelConfig& rc = running.channel;
  ChannelConfig& nc = next.channel;
  keep(changed, "channel.transport", rc.transport_template, nc.transport_template);
  keep(changed, "channel.guestd_port", rc.guestd_port, nc.guestd_port);
  keep(changed, "channel.connect_timeout_ms", rc.connect_timeout, nc.connect_timeout);
  keep(changed, "channel.connect_retry_min_ms", rc.connect_retry_min, nc.connect_retry_min);
  keep(changed, "channel.connect_retry_max_ms", rc.connect_retry_max, nc.connect_retry_max);
  keep(changed, "channel.pool_max_idle", rc.pool_max_idle, nc.pool_max_idle);
  keep(changed, "channel.pool_idle_timeout_ms", rc.pool_idle_timeout, nc.pool_idle_timeout);
  keep(changed, "channel.max_per_vm", rc.max_per_vm, nc.max_per_vm);
  keep(changed, "channel.max_private_per_vm", rc.max_private_per_vm, nc.max_private_per_vm);
  keep(changed, "channel.wait_timeout_ms", rc.wait_timeout, nc.wait_timeout);
  keep(changed, "channel.max_waiting_per_vm", rc.max_waiting_per_vm, nc.max_waiting_per_vm);
  keep(changed, "admin.enabled", running.admin.enabled, next.admin.enabled);
  keep(changed, "admin.address", running.admin.address, next.admin.address);
  keep(changed, "admin.allow_remote", running.admin.allow_remote, next.admin.allow_remote);
  // The etcd session, this host's name and the peer listener are built once.
  keep(changed, "cluster", running.cluster, next.cluster);
  // The guests' listeners are bound once, from the first snapshot; the
  // host services, peer CIDs and timeouts follow each snapshot.
  keep(changed, "inbound.listen", running.inbound.listen, next.inbound.listen);
  keep(changed, "inbound.per_vm", running.inbound.per_vm_template, next.inbound.per_vm_template);
  keep(changed, "inbound.hybrid_port", running.inbound.hybrid_port, next.inbound.hybrid_port);
  keep(changed, "inbound.max_connections", running.inbound.max_connections,
       next.inbound.max_connections);
  // Its sockets are bound once, and its zone answers from the first snapshot.
  keep(changed, "dns", running.dns, next.dns);
  if (running.dns.enabled())
    keep(changed, "routing.host_suffix", running.routing.host_suffix, next.routing.host_suffix);
  return changed;
}

}  // namespace vmgate::hostd
