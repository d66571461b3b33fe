// The libvirt inventory: keeps the directory current from libvirt.
//
// libvirt calls block, so all of them happen on the inventory's own thread,
// which also runs libvirt's default event loop, and, while it synchronises,
// on a few reader threads it starts and joins, sharing its connection. On
// start it lists every domain, then follows lifecycle events. If the
// connection closes (libvirtd restarted: its close callback, or keepalive
// for a daemon that hangs), the directory keeps its last view, and the
// inventory reconnects with exponential, jittered backoff (reconnect_min_ms
// doubling up to reconnect_max_ms) and resynchronises in full.
//
// One inventory per process: libvirt's default event loop is process-wide,
// and a second thread running it could dispatch this inventory's events.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "hostd/channel/vsock_attacher.hpp"
#include "hostd/config/hostd_config.hpp"
#include "hostd/directory/directory.hpp"

namespace vmgate::hostd {

struct InventoryStats {
  std::atomic<std::uint64_t> events{0};      // domain events received
  std::atomic<std::uint64_t> reconnects{0};  // connections opened after the first one
  std::atomic<std::uint64_t> syncs{0};       // full resynchronisations (replace_all)
  std::atomic<bool> connected{false};
};

// It is also how a channel is formed on demand (VsockAttacher): the attach
// is queued for its thread, which runs it between turns of the event loop.
class LibvirtInventory final : public VsockAttacher {
 public:
  LibvirtInventory(LibvirtConfig options, DirectoryFeed& directory);
  ~LibvirtInventory();
  LibvirtInventory(const LibvirtInventory&) = delete;
  LibvirtInventory& operator=(const LibvirtInventory&) = delete;

  // Throws std::runtime_error if libvirt's event loop cannot be registered;
  // an unreachable URI is not an error (it is retried with backoff).
  void start();
  // Wakes the event loop, joins the thread, closes the connection. The
  // directory keeps its last contents.
  void stop();
  // Waits until the first full synchronisation has completed.
  bool wait_first_sync(std::chrono::milliseconds timeout);

  const InventoryStats& stats() const { return stats_; }

  // VIR_DOMAIN_AFFECT_LIVE: the device lasts until the domain stops, and its
  // persistent definition is left as the operator wrote it. Needs a
  // read-write connection (libvirt.read_only = false); while libvirt is not
  // connected, or once stop() has begun, `done` is told so at once.
  void attach_vsock(const std::string& uuid, std::function<void(VsockAttachOutcome)> done) override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  InventoryStats stats_;
};

}  // namespace vmgate::hostd
