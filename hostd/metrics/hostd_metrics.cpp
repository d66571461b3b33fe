#include "hostd/metrics/hostd_metrics.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <map>
#include <mutex>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include "hostd/fanout/fanout_result.hpp"

namespace vmgate::hostd {
namespace {

namespace prom = prometheus;

// Route forms as the request log names them, plus "none" for requests that
// were refused before a route was found (400, 431).
constexpr std::array<std::string_view, 6> form_labels = {"connect", "header", "absolute",
                                                         "host",    "sni",    "none"};
constexpr std::size_t form_index(std::string_view form) {
  for (std::size_t i = 0; i + 1 < form_labels.size(); ++i)
    if (form_labels[i] == form) return i;
  return form_labels.size() - 1;
}
constexpr unsigned status_slots = 600;  // 0 (no status) .. 599

// From sub-millisecond (vsock, unix) to the default 3 s connect timeout and past it.
const prom::Histogram::BucketBoundaries connect_buckets = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

// Fan-out sizes from a pair of VMs to a large host's every VM; durations from
// a LAN round trip to fanout.vm_timeout_ms's default and past it.
const prom::Histogram::BucketBoundaries fanout_size_buckets = {
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000};
const prom::Histogram::BucketBoundaries fanout_duration_buckets = {
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};

double seconds_since_epoch() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

}  // namespace

struct HostdMetrics::Impl {
  Impl(const Directory& directory_in, const InventoryStats* inventory_in)
      : directory(directory_in), inventory(inventory_in) {}

  const Directory& directory;
  const InventoryStats* inventory;
  std::function<std::string()> extra;  // under scrape_mutex
  prom::Registry registry;

  prom::Family<prom::Counter>& requests = prom::BuildCounter()
                                              .Name("vmgate_requests_total")
                                              .Help("Client requests by route form and status")
                                              .Register(registry);
  // requests.Add() takes a lock and hashes the labels: done once per
  // (form, status), then read from here without a lock.
  std::array<std::atomic<prom::Counter*>, form_labels.size() * status_slots> request_children{};

  prom::Counter& received = prom::BuildCounter()
                                .Name("vmgate_client_received_bytes_total")
                                .Help("Bytes received from clients (bodies and tunnel data)")
                                .Register(registry)
                                .Add({});
  prom::Counter& sent = prom::BuildCounter()
                            .Name("vmgate_client_sent_bytes_total")
                            .Help("Bytes sent to clients (heads, bodies and tunnel data)")
                            .Register(registry)
                            .Add({});
  prom::Gauge& tunnels = prom::BuildGauge()
                             .Name("vmgate_tunnels_open")
                             .Help("CONNECT tunnels open now")
                             .Register(registry)
                             .Add({});
  prom::Family<prom::Histogram>& connect_family =
      prom::BuildHistogram()
          .Name("vmgate_channel_connect_duration_seconds")
          .Help("Opening a channel: transport connect, preamble and guestd's answer")
          .Register(registry);
  prom::Histogram& connect_ok = connect_family.Add({{"result", "ok"}}, connect_buckets);
  prom::Histogram& connect_error = connect_family.Add({{"result", "error"}}, connect_buckets);
  prom::Family<prom::Counter>& channel_requests =
      prom::BuildCounter()
          .Name("vmgate_channel_requests_total")
          .Help("Requests forwarded over a newly opened channel or a reused one")
          .Register(registry);
  prom::Counter& channel_new = channel_requests.Add({{"channel", "new"}});
  prom::Counter& channel_reused = channel_requests.Add({{"channel", "reused"}});
  prom::Family<prom::Counter>& acl_decisions =
      prom::BuildCounter()
          .Name("vmgate_acl_decisions_total")
          .Help("Requests the ACL rules let through or refused (trusted listeners' not counted)")
          .Register(registry);
  prom::Counter& acl_allow = acl_decisions.Add({{"result", "allow"}});
  prom::Counter& acl_deny = acl_decisions.Add({{"result", "deny"}});

  prom::Histogram& fanout_size = prom::BuildHistogram()
                                     .Name("vmgate_fanout_vms")
                                     .Help("VMs one fan-out request named (its parts)")
                                     .Register(registry)
                                     .Add({}, fanout_size_buckets);
  prom::Histogram& fanout_duration = prom::BuildHistogram()
                                         .Name("vmgate_fanout_duration_seconds")
                                         .Help("One fan-out request, from admission to its summary")
                                         .Register(registry)
                                         .Add({}, fanout_duration_buckets);
  prom::Family<prom::Counter>& fanout_results_family =
      prom::BuildCounter()
          .Name("vmgate_fanout_vm_results_total")
          .Help("VMs of fan-out requests, by the class each ended in")
          .Register(registry);
  std::array<prom::Counter*, vm_class_count> fanout_results = [this] {
    std::array<prom::Counter*, vm_class_count> out{};
    for (std::size_t i = 0; i < vm_class_count; ++i)
      out[i] =
          &fanout_results_family.Add({{"class", std::string(class_name(static_cast<VmClass>(i)))}});
    return out;
  }();

  // Read from the channel pool at scrape time.
  const ChannelPoolStats* pool = nullptr;
  prom::Gauge& pool_idle = prom::BuildGauge()
                               .Name("vmgate_channel_pool_idle")
                               .Help("Idle channels kept in the pool now")
                               .Register(registry)
                               .Add({});
  prom::Family<prom::Counter>& pool_discarded_family =
      prom::BuildCounter()
          .Name("vmgate_channel_pool_discarded_total")
          .Help(
              "Idle channels closed instead of reused: expired, closed by the peer, "
              "returned to a full pool, or their VM went away")
          .Register(registry);
  prom::Counter& pool_expired = pool_discarded_family.Add({{"reason", "expired"}});
  prom::Counter& pool_closed = pool_discarded_family.Add({{"reason", "closed"}});
  prom::Counter& pool_full = pool_discarded_family.Add({{"reason", "full"}});
  prom::Counter& pool_evicted = pool_discarded_family.Add({{"reason", "evicted"}});
  prom::Counter& pool_vm_gone = pool_discarded_family.Add({{"reason", "vm_gone"}});

  // Read from the channel budget at scrape time.
  const ChannelBudget* budget = nullptr;
  // Per VM for the few with the most channels open: enough to see which VM
  // is short of channels, without a series for every VM of the host.
  static constexpr std::size_t busiest_vms = 5;
  prom::Family<prom::Gauge>& busiest_family =
      prom::BuildGauge()
          .Name("vmgate_channels_open_busiest")
          .Help("HTTP channels open to each of the five VMs that have the most open")
          .Register(registry);
  std::map<std::string, prom::Gauge*> busiest_shown;  // by VM name
  prom::Family<prom::Gauge>& channels_family =
      prom::BuildGauge()
          .Name("vmgate_channels")
          .Help(
              "HTTP channels open now (tunnels excepted): in use by a request, idle in the "
              "pool, or private to a client connection whose agent authentication is bound to it")
          .Register(registry);
  prom::Gauge& channels_in_use = channels_family.Add({{"state", "in_use"}});
  prom::Gauge& channels_idle = channels_family.Add({{"state", "idle"}});
  prom::Gauge& channels_private = channels_family.Add({{"state", "private"}});
  prom::Gauge& channel_waiting = prom::BuildGauge()
                                     .Name("vmgate_channel_waiting")
                                     .Help("Requests waiting for a channel to their VM now")
                                     .Register(registry)
                                     .Add({});
  prom::Family<prom::Counter>& channel_waits_family =
      prom::BuildCounter()
          .Name("vmgate_channel_waits_total")
          .Help(
              "Requests that found every channel to their VM in use and waited: granted one, "
              "timed out, or refused because too many waited already")
          .Register(registry);
  prom::Counter& waits_granted = channel_waits_family.Add({{"result", "granted"}});
  prom::Counter& waits_timed_out = channel_waits_family.Add({{"result", "timed_out"}});
  prom::Counter& waits_refused = channel_waits_family.Add({{"result", "queue_full"}});

  // Read from the directory and the inventory at scrape time.
  prom::Gauge& directory_vms = prom::BuildGauge()
                                   .Name("vmgate_directory_vms")
                                   .Help("VMs the directory knows (any state)")
                                   .Register(registry)
                                   .Add({});
  prom::Counter& libvirt_events = prom::BuildCounter()
                                      .Name("vmgate_libvirt_events_total")
                                      .Help("libvirt domain events received")
                                      .Register(registry)
                                      .Add({});
  prom::Counter& libvirt_reconnects = prom::BuildCounter()
                                          .Name("vmgate_libvirt_reconnects_total")
                                          .Help("libvirt connections opened after the first one")
                                          .Register(registry)
                                          .Add({});
  prom::Counter& libvirt_syncs = prom::BuildCounter()
                                     .Name("vmgate_libvirt_syncs_total")
                                     .Help("Full resynchronisations with libvirt")
                                     .Register(registry)
                                     .Add({});
  prom::Gauge& libvirt_connected = prom::BuildGauge()
                                       .Name("vmgate_libvirt_connected")
                                       .Help("1 while the libvirt connection is open")
                                       .Register(registry)
                                       .Add({});
  prom::Gauge& start_time = prom::BuildGauge()
                                .Name("process_start_time_seconds")
                                .Help("Start time of the process since unix epoch in seconds")
                                .Register(registry)
                                .Add({});

  // The inventory's counters are plain atomics; a scrape adds what is new.
  std::mutex scrape_mutex;
  std::uint64_t seen_events = 0;
  std::uint64_t seen_reconnects = 0;
  std::uint64_t seen_syncs = 0;
  std::uint64_t seen_expired = 0;
  std::uint64_t seen_closed = 0;
  std::uint64_t seen_full = 0;
  std::uint64_t seen_evicted = 0;
  std::uint64_t seen_vm_gone = 0;
  std::uint64_t seen_granted = 0;
  std::uint64_t seen_timed_out = 0;
  std::uint64_t seen_refused = 0;

  prom::Counter& request_counter(std::string_view form, unsigned status) {
    std::size_t form_i = form_index(form);
    std::size_t slot = form_i * status_slots + (status < status_slots ? status : 0);
    prom::Counter* counter = request_children[slot].load(std::memory_order_acquire);
    if (counter == nullptr) {
      // Two threads may race here; Family::Add returns the same child for the same labels.
      counter = &requests.Add({{"form", std::string(form_labels[form_i])},
                               {"status", std::to_string(status < status_slots ? status : 0)}});
      request_children[slot].store(counter, std::memory_order_release);
    }
    return *counter;
  }

  static void add_new(prom::Counter& counter, std::uint64_t now, std::uint64_t& seen) {
    if (now > seen) counter.Increment(static_cast<double>(now - seen));
    seen = now;
  }

  void refresh_busiest() {
    std::map<std::string, double> now;
    for (const auto& [uuid, count] : budget->busiest(busiest_vms)) {
      auto found = directory.find(uuid);
      now[found.vm ? found.vm->name : uuid] = count;
    }
    for (auto it = busiest_shown.begin(); it != busiest_shown.end();) {
      if (now.contains(it->first)) {
        ++it;
        continue;
      }
      busiest_family.Remove(it->second);
      it = busiest_shown.erase(it);
    }
    for (const auto& [name, count] : now) {
      auto& gauge = busiest_shown[name];
      if (gauge == nullptr) gauge = &busiest_family.Add({{"vm", name}});
      gauge->Set(count);
    }
  }

  void refresh() {
    std::lock_guard lock(scrape_mutex);
    directory_vms.Set(static_cast<double>(directory.size()));
    if (pool != nullptr) {
      pool_idle.Set(static_cast<double>(pool->idle.load()));
      add_new(pool_expired, pool->expired.load(), seen_expired);
      add_new(pool_closed, pool->closed.load(), seen_closed);
      add_new(pool_full, pool->full.load(), seen_full);
      add_new(pool_evicted, pool->evicted.load(), seen_evicted);
      add_new(pool_vm_gone, pool->revoked.load(), seen_vm_gone);
    }
    if (budget != nullptr) {
      const ChannelBudgetStats& b = budget->stats();
      const double open = static_cast<double>(b.open.load());
      const double idle = pool ? static_cast<double>(pool->idle.load()) : 0;
      const double priv = static_cast<double>(b.private_.load());
      channels_idle.Set(idle);
      channels_private.Set(priv);
      channels_in_use.Set(std::max(0.0, open - idle - priv));
      channel_waiting.Set(static_cast<double>(b.waiting.load()));
      add_new(waits_granted, b.waits_granted.load(), seen_granted);
      add_new(waits_timed_out, b.waits_timed_out.load(), seen_timed_out);
      add_new(waits_refused, b.waits_refused.load(), seen_refused);
      refresh_busiest();
    }
    if (inventory == nullptr) return;
    add_new(libvirt_events, inventory->events.load(), seen_events);
    add_new(libvirt_reconnects, inventory->reconnects.load(), seen_reconnects);
    add_new(libvirt_syncs, inventory->syncs.load(), seen_syncs);
    libvirt_connected.Set(inventory->connected.load() ? 1 : 0);
  }
};

HostdMetrics::HostdMetrics(const Directory& directory, const InventoryStats* inventory)
    : impl_(std::make_unique<Impl>(directory, inventory)) {
  impl_->start_time.Set(seconds_since_epoch());
}

HostdMetrics::~HostdMetrics() = default;

void HostdMetrics::request_done(std::string_view form, unsigned status, std::uint64_t bytes_in,
                                std::uint64_t bytes_out) {
  impl_->request_counter(form, status).Increment();
  if (bytes_in) impl_->received.Increment(static_cast<double>(bytes_in));
  if (bytes_out) impl_->sent.Increment(static_cast<double>(bytes_out));
}

void HostdMetrics::tunnel_opened() {
  impl_->tunnels.Increment();
}

void HostdMetrics::tunnel_closed() {
  impl_->tunnels.Decrement();
}

void HostdMetrics::channel_connected(std::chrono::steady_clock::duration elapsed, bool ok) {
  double seconds = std::chrono::duration<double>(elapsed).count();
  (ok ? impl_->connect_ok : impl_->connect_error).Observe(seconds);
}

void HostdMetrics::channel_used(bool reused) {
  (reused ? impl_->channel_reused : impl_->channel_new).Increment();
}

void HostdMetrics::acl_decided(bool allowed) {
  (allowed ? impl_->acl_allow : impl_->acl_deny).Increment();
}

void HostdMetrics::fanout_done(const FanoutSummary& summary,
                               std::chrono::steady_clock::duration elapsed) {
  impl_->fanout_size.Observe(static_cast<double>(summary.total()));
  impl_->fanout_duration.Observe(std::chrono::duration<double>(elapsed).count());
  for (std::size_t i = 0; i < vm_class_count; ++i) {
    const std::size_t n = summary.count(static_cast<VmClass>(i));
    if (n) impl_->fanout_results[i]->Increment(static_cast<double>(n));
  }
}

void HostdMetrics::set_channel_pool(const ChannelPoolStats* pool) {
  std::lock_guard lock(impl_->scrape_mutex);
  impl_->pool = pool;
}

void HostdMetrics::set_channel_budget(const ChannelBudget* budget) {
  std::lock_guard lock(impl_->scrape_mutex);
  impl_->budget = budget;
}

void HostdMetrics::set_extra(std::function<std::string()> render) {
  std::lock_guard lock(impl_->scrape_mutex);
  impl_->extra = std::move(render);
}

std::string HostdMetrics::render() {
  impl_->refresh();
  std::string text = prom::TextSerializer().Serialize(impl_->registry.Collect());
  std::lock_guard lock(impl_->scrape_mutex);
  if (impl_->extra) text += impl_->extra();
  return text;
}

}  // namespace vmgate::hostd
