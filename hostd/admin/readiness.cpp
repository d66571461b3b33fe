#include "hostd/admin/readiness.hpp"

#include <systemd/sd-daemon.h>

#include "common/log.hpp"
#include "hostd/cluster/cluster_sync.hpp"

namespace vmgate::hostd {

Readiness::Readiness(std::string libvirt_uri, const InventoryStats* inventory)
    : libvirt_uri_(std::move(libvirt_uri)), inventory_(inventory) {}

void Readiness::listeners_bound() {
  listeners_ = true;
  notify_if_ready();
}

void Readiness::libvirt_synced() {
  synced_ = true;
  notify_if_ready();
}

void Readiness::stopping() {
  if (stopping_.exchange(true)) return;
  sd_notify(0, "STOPPING=1");
}

bool Readiness::ready() const {
  return listeners_ && synced_ && !stopping_ && (cluster_ == nullptr || cluster_->synced());
}

std::string Readiness::degraded() const {
  if (cluster_ == nullptr || !cluster_->synced() || cluster_->connected()) return {};
  return "etcd unreachable (" + cluster_->last_error() +
         "); routing from the cluster directory as read at revision " +
         std::to_string(cluster_->revision());
}

std::string Readiness::reason() const {
  std::string out;
  auto add = [&out](std::string_view why) {
    if (!out.empty()) out += "; ";
    out += why;
  };
  if (stopping_) add("hostd is stopping");
  if (!listeners_) add("listeners are not bound yet");
  if (cluster_ != nullptr && !cluster_->synced()) {
    std::string error = cluster_->last_error();
    add("cluster: the directory has not been read from etcd yet" +
        (error.empty() ? std::string() : " (" + error + ")"));
  }
  if (!synced_) {
    bool connected = inventory_ != nullptr && inventory_->connected;
    add("libvirt: first synchronisation with " + libvirt_uri_ + " not done yet" +
        (connected ? "" : " (not connected; see libvirt_connect_failed in the log)"));
  }
  return out;
}

void Readiness::notify_if_ready() {
  if (!ready()) return;
  if (notified_.exchange(true)) return;
  log::info("ready");
  // Without NOTIFY_SOCKET (not under systemd) sd_notify does nothing.
  sd_notify(0, "READY=1");
}

}  // namespace vmgate::hostd
