// hostd's Prometheus metrics (docs/architecture.md, "Observability"): what the request
// path counts, and what is read from the directory and the libvirt inventory
// when /metrics is scraped.
//
// The request path pays one call per request, per tunnel and per channel
// connect; label children are looked up once and cached, so the steady-state
// cost of a request is a few atomic operations and no lock.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "hostd/channel/channel_budget.hpp"
#include "hostd/channel/channel_pool.hpp"
#include "hostd/directory/directory.hpp"
#include "hostd/inventory/libvirt_inventory.hpp"

namespace vmgate::hostd {

class FanoutSummary;

class HostdMetrics {
 public:
  // `inventory` may be null (tests without libvirt).
  HostdMetrics(const Directory& directory, const InventoryStats* inventory);
  ~HostdMetrics();
  HostdMetrics(const HostdMetrics&) = delete;
  HostdMetrics& operator=(const HostdMetrics&) = delete;

  // One client request ended (the fields of its `event=request` log line).
  // `form` is a route form name ("connect", "header", "absolute", "host", "sni") or
  // anything else for a request that never got a route.
  void request_done(std::string_view form, unsigned status, std::uint64_t bytes_in,
                    std::uint64_t bytes_out);
  void tunnel_opened();
  void tunnel_closed();
  // Transport connect + preamble + guestd's answer, successful or not.
  void channel_connected(std::chrono::steady_clock::duration elapsed, bool ok);
  // A request is about to be forwarded over a channel opened for it, or over
  // one reused (taken from the pool, or its connection's private one).
  void channel_used(bool reused);
  // The ACL rules decided one request (not a trusted listener's, whose
  // clients no rule applies to).
  void acl_decided(bool allowed);
  // One fan-out request ended: how many VMs it named, how long it took from
  // admission to the summary, and the class of each VM (fanout_result.hpp).
  void fanout_done(const FanoutSummary& summary, std::chrono::steady_clock::duration elapsed);
  // The pool whose idle count and discards /metrics reports; null: none.
  void set_channel_pool(const ChannelPoolStats* pool);
  // The budget whose open channels and waits /metrics reports, with the
  // VMs that have the most channels open; null: none.
  void set_channel_budget(const ChannelBudget* budget);
  // More metrics in the text format, appended at each scrape (cluster
  // mode's, hostd/cluster/cluster_metrics.hpp); empty: none.
  void set_extra(std::function<std::string()> render);

  // Every metric in the Prometheus text exposition format 0.0.4.
  std::string render();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Counts an open CONNECT tunnel for as long as it lives. Null metrics: no-op.
class OpenTunnel {
 public:
  explicit OpenTunnel(HostdMetrics* metrics) : metrics_(metrics) {
    if (metrics_) metrics_->tunnel_opened();
  }
  ~OpenTunnel() {
    if (metrics_) metrics_->tunnel_closed();
  }
  OpenTunnel(OpenTunnel&& other) noexcept : metrics_(std::exchange(other.metrics_, nullptr)) {}
  OpenTunnel(const OpenTunnel&) = delete;
  OpenTunnel& operator=(const OpenTunnel&) = delete;

 private:
  HostdMetrics* metrics_;
};

// Times one channel open: started at construction, observed by done().
class ChannelConnectTimer {
 public:
  explicit ChannelConnectTimer(HostdMetrics* metrics)
      : metrics_(metrics), start_(std::chrono::steady_clock::now()) {}
  void done(bool ok) const {
    if (metrics_) metrics_->channel_connected(std::chrono::steady_clock::now() - start_, ok);
  }

 private:
  HostdMetrics* metrics_;
  std::chrono::steady_clock::time_point start_;
};

inline constexpr std::string_view metrics_content_type = "text/plain; version=0.0.4; charset=utf-8";

}  // namespace vmgate::hostd
