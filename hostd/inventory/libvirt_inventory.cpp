#include "hostd/inventory/libvirt_inventory.hpp"

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "common/log.hpp"
#include "hostd/inventory/domain_xml.hpp"
#include "hostd/inventory/reconnect_backoff.hpp"

namespace vmgate::hostd {
namespace {

// libvirt prints every error to stderr unless a handler is installed; we
// report the ones that matter ourselves, naming the step and the value.
void ignore_libvirt_error(void*, virErrorPtr) {}

// libvirt wants its default event loop registered once per process, before
// the first connection is opened.
bool prepare_libvirt_once() {
  static const bool prepared = [] {
    virSetErrorFunc(nullptr, ignore_libvirt_error);
    return virInitialize() == 0 && virEventRegisterDefaultImpl() == 0;
  }();
  return prepared;
}

std::string last_libvirt_error() {
  const char* message = virGetLastErrorMessage();
  return message != nullptr ? message : "unknown error";
}

VmState to_vm_state(int state) {
  switch (state) {
    case VIR_DOMAIN_RUNNING:
    case VIR_DOMAIN_BLOCKED:
      return VmState::running;
    case VIR_DOMAIN_PAUSED:
      return VmState::paused;
    case VIR_DOMAIN_SHUTOFF:
      return VmState::shut_off;
    case VIR_DOMAIN_CRASHED:
      return VmState::crashed;
    case VIR_DOMAIN_PMSUSPENDED:
      return VmState::suspended;
    default:
      return VmState::other;  // no state, being shut down
  }
}

std::string_view close_reason_name(int reason) {
  switch (reason) {
    case VIR_CONNECT_CLOSE_REASON_ERROR:
      return "error";
    case VIR_CONNECT_CLOSE_REASON_EOF:
      return "eof";
    case VIR_CONNECT_CLOSE_REASON_KEEPALIVE:
      return "keepalive";
    case VIR_CONNECT_CLOSE_REASON_CLIENT:
      return "client";
    default:
      return "unknown";
  }
}

std::string cid_text(const std::optional<std::uint32_t>& cid) {
  return cid ? std::to_string(*cid) : std::string("none");
}

struct DomainFree {
  void operator()(virDomainPtr domain) const { virDomainFree(domain); }
};
using DomainHandle = std::unique_ptr<std::remove_pointer_t<virDomainPtr>, DomainFree>;

// Lower-case, with dashes. virDomainGetUUID, like virDomainRef and
// virDomainFree, formats the UUID with snprintf for libvirt's debug log,
// logging or not (~8,000 instructions under callgrind);
// virDomainGetUUIDString then formats it once more.
std::optional<std::string> uuid_text(virDomainPtr domain) {
  unsigned char bytes[VIR_UUID_BUFLEN];
  if (virDomainGetUUID(domain, bytes) < 0) return std::nullopt;
  constexpr char kHex[] = "0123456789abcdef";
  std::string text;
  text.reserve(VIR_UUID_STRING_BUFLEN - 1);
  for (int i = 0; i < VIR_UUID_BUFLEN; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) text.push_back('-');
    text.push_back(kHex[bytes[i] >> 4]);
    text.push_back(kHex[bytes[i] & 0xf]);
  }
  return text;
}

// A domain as the listing gave it, with its virDomainState when the listing
// carried one. The handle is borrowed from the listing.
struct ListedDomain {
  virDomainPtr domain = nullptr;
  std::optional<int> state;
};

struct StatsRecordsFree {
  void operator()(virDomainStatsRecordPtr* records) const { virDomainStatsRecordListFree(records); }
};

struct DomainListFree {
  int count = 0;
  void operator()(virDomainPtr* list) const {
    for (int i = 0; i < count; ++i)
      virDomainFree(list[i]);
    std::free(list);
  }
};

// Owns the handles it lists. They are borrowed rather than referenced and
// freed once more: every virDomainRef and virDomainFree formats the UUID for
// libvirt's debug log, whether or not it logs (callgrind: ~8,000
// instructions each).
struct DomainListing {
  std::unique_ptr<virDomainStatsRecordPtr[], StatsRecordsFree> records;
  std::unique_ptr<virDomainPtr[], DomainListFree> handles;
  std::vector<ListedDomain> domains;
};

// Every domain, active or not, with its state, in one call: through libvirtd
// asking each domain for its state is one more round trip per domain, and
// those were half of the per-domain calls of a synchronisation.
std::optional<DomainListing> list_with_states(virConnectPtr connection) {
  virDomainStatsRecordPtr* records = nullptr;
  int count = virConnectGetAllDomainStats(connection, VIR_DOMAIN_STATS_STATE, &records, 0);
  if (count < 0) return std::nullopt;
  DomainListing listing;
  listing.records.reset(records);
  listing.domains.reserve(static_cast<std::size_t>(count));
  for (int i = 0; i < count; ++i) {
    ListedDomain listed{records[i]->dom, std::nullopt};
    int state = VIR_DOMAIN_NOSTATE;
    // VIR_DOMAIN_STATS_STATE_STATE, which libvirt 9.0's headers do not name yet.
    if (virTypedParamsGetInt(records[i]->params, records[i]->nparams, "state.state", &state) == 1) {
      listed.state = state;
    }
    listing.domains.push_back(listed);
  }
  return listing;
}

// For drivers without virConnectGetAllDomainStats: each domain's state is
// then read with the rest of it.
std::optional<DomainListing> list_without_states(virConnectPtr connection) {
  virDomainPtr* handles = nullptr;
  int count = virConnectListAllDomains(connection, &handles, 0);
  if (count < 0) return std::nullopt;
  DomainListing listing;
  listing.handles = {handles, DomainListFree{count}};
  listing.domains.reserve(static_cast<std::size_t>(count));
  for (int i = 0; i < count; ++i)
    listing.domains.push_back({handles[i], std::nullopt});
  return listing;
}

// Name, UUID, state and the XML facts of one domain. The CID is read from
// the XML every time: a restore or a redefine can change it. The live XML
// (flags 0), not VIR_DOMAIN_XML_INACTIVE: a CID libvirt assigned at start
// (auto='yes') is only in the live definition.
std::optional<VmRecord> read_domain(virDomainPtr domain, std::optional<int> known_state) {
  const char* name = virDomainGetName(domain);
  if (name == nullptr) return std::nullopt;
  int state = known_state.value_or(VIR_DOMAIN_NOSTATE);
  int reason = 0;
  if (!known_state && virDomainGetState(domain, &state, &reason, 0) < 0) return std::nullopt;
  std::unique_ptr<char, decltype(&std::free)> xml(virDomainGetXMLDesc(domain, 0), &std::free);
  if (!xml) return std::nullopt;

  DomainFacts facts = parse_domain_xml(xml.get());
  // From the XML in hand rather than from the handle (see uuid_text).
  std::optional<std::string> uuid =
      facts.uuid.empty() ? uuid_text(domain) : std::optional(std::move(facts.uuid));
  if (!uuid) return std::nullopt;
  VmRecord vm;
  vm.uuid = std::move(*uuid);
  vm.name = name;
  vm.cid = facts.cid;
  vm.state = to_vm_state(state);
  vm.networks = std::move(facts.networks);
  vm.groups = std::move(facts.groups);
  return vm;
}

// Through libvirtd each read is a round trip, and the daemon serves several
// calls of one connection at once (max_client_requests, default 5), while the
// remote driver lets other threads' calls proceed during a call. The XML of
// 5,000 domains through a session libvirtd on 2 busy cores: one reader
// 540-820 ms, two ~400 ms, four 220-500 ms; four connections 340-410 ms, no
// better than one. So the readers share the inventory's connection (one view,
// no extra clients for the daemon to admit), and more than four would only
// queue in the daemon.
constexpr std::size_t kMaxReaders = 4;
// Below this many domains per reader, starting a thread costs more than it saves.
constexpr std::size_t kDomainsPerReader = 32;

struct ReadResult {
  std::vector<VmRecord> vms;
  std::optional<std::string> error;  // set when the picture would be partial
};

ReadResult read_all(const std::vector<ListedDomain>& domains) {
  std::vector<std::optional<VmRecord>> slots(domains.size());
  std::atomic<std::size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex error_mutex;
  std::string error;
  auto reader = [&] {
    for (std::size_t i = next++; i < domains.size() && !failed; i = next++) {
      virResetLastError();  // libvirt's last error is per thread
      slots[i] = read_domain(domains[i].domain, domains[i].state);
      // Undefined since the listing is fine (its event follows); anything
      // else means a partial picture, which must not replace a complete one.
      if (!slots[i] && virGetLastErrorCode() != VIR_ERR_NO_DOMAIN) {
        std::lock_guard lock(error_mutex);
        if (!failed.exchange(true)) error = last_libvirt_error();
      }
    }
  };

  std::size_t helpers = std::min(kMaxReaders - 1, domains.size() / kDomainsPerReader);
  std::vector<std::thread> threads;
  threads.reserve(helpers);
  for (std::size_t i = 0; i < helpers; ++i) {
    try {
      threads.emplace_back(reader);
    } catch (const std::system_error&) {
      break;  // fewer readers is only slower
    }
  }
  reader();
  for (auto& thread : threads)
    thread.join();

  ReadResult result;
  if (failed) {
    result.error = std::move(error);
    return result;
  }
  result.vms.reserve(domains.size());
  for (auto& slot : slots) {
    if (slot) result.vms.push_back(std::move(*slot));
  }
  return result;
}

void wake_event_loop(int, void*) {}

// A one-shot wake-up: the event loop returns, and the work queued runs.
void wake_once(int timer, void*) {
  virEventRemoveTimeout(timer);
}

// libvirt's formatdomain "Vsock": a CID of libvirt's choosing (QEMU picks a
// free one when the device is attached to a running domain).
constexpr const char* kOnDemandVsock = "<vsock model='virtio'><cid auto='yes'/></vsock>";

}  // namespace

struct LibvirtInventory::Impl {
  Impl(LibvirtConfig options_in, DirectoryFeed& directory_in, InventoryStats& stats_in)
      : options(std::move(options_in)), directory(directory_in), stats(stats_in) {}

  void run();
  bool connect();
  bool register_callbacks();
  bool synchronise();
  void follow_events();
  void refresh_pending_domains();
  void refresh_domain(const std::string& uuid);
  void disconnect();
  bool wait_or_stop(std::chrono::milliseconds delay);  // true when stopping

  struct Attach {
    std::string uuid;
    std::function<void(VsockAttachOutcome)> done;
  };
  void run_attaches();
  void attach_now(const Attach& attach);
  void refuse_attaches(const std::string& reason);

  void mark_pending(virDomainPtr domain);
  static int on_lifecycle(virConnectPtr, virDomainPtr domain, int, int, void* opaque);
  static void on_metadata_change(virConnectPtr, virDomainPtr domain, int, const char*,
                                 void* opaque);
  static void on_device_change(virConnectPtr, virDomainPtr domain, const char*, void* opaque);
  static void on_close(virConnectPtr, int reason, void* opaque);

  const LibvirtConfig options;
  DirectoryFeed& directory;
  InventoryStats& stats;
  std::thread thread;

  // Only the inventory thread touches the connection and its callback ids.
  virConnectPtr connection = nullptr;
  std::vector<int> callback_ids;
  bool close_callback_registered = false;
  bool connected_before = false;
  std::atomic<bool> closed{false};
  std::atomic<int> close_reason{0};

  // Shared with stop(), wait_first_sync() and the event callbacks.
  std::mutex mutex;
  std::condition_variable changed;
  std::atomic<bool> stopping{false};
  bool first_sync_done = false;
  std::set<std::string> pending;  // UUIDs named by events, not yet re-read
  std::deque<Attach> attaches;    // run on the inventory thread while connected
  bool following = false;         // the event loop runs on a live connection
};

// The directory keeps its last view while libvirt is away: requests go on
// being routed from it, and the resynchronisation after the reconnect puts
// right what changed meanwhile (a domain defined, another undefined).
void LibvirtInventory::Impl::run() {
  ReconnectBackoff backoff(options.reconnect_min, options.reconnect_max);
  while (!stopping) {
    const bool followed = connect() && synchronise();
    if (followed) {
      backoff.reset();
      follow_events();
    }
    disconnect();
    if (stopping) break;
    const auto wait = backoff.next();
    if (followed) {
      log::warn("libvirt_disconnected")
          .kv("uri", options.uri)
          .kv("reason", closed ? close_reason_name(close_reason) : "event loop failed")
          .kv("retry_ms", static_cast<long long>(wait.count()));
    }
    if (wait_or_stop(wait)) break;
  }
}

bool LibvirtInventory::Impl::connect() {
  const char* uri = options.uri.c_str();
  connection = options.read_only ? virConnectOpenReadOnly(uri) : virConnectOpen(uri);
  if (connection == nullptr) {
    log::warn("libvirt_connect_failed").kv("uri", options.uri).kv("error", last_libvirt_error());
    return false;
  }
  closed = false;
  // Detects a dead remote daemon; local drivers do not support it (an error
  // we ignore).
  virConnectSetKeepAlive(connection, 5, 3);
  if (!register_callbacks()) {
    log::warn("libvirt_event_register_failed")
        .kv("uri", options.uri)
        .kv("error", last_libvirt_error());
    return false;
  }
  stats.connected = true;
  if (connected_before) {
    ++stats.reconnects;
    log::info("libvirt_reconnected").kv("uri", options.uri);
  } else {
    log::info("libvirt_connected").kv("uri", options.uri);
  }
  connected_before = true;
  return true;
}

// Before listing, so no change between the list and the first event is lost.
bool LibvirtInventory::Impl::register_callbacks() {
  if (virConnectRegisterCloseCallback(connection, on_close, this, nullptr) < 0) return false;
  close_callback_registered = true;

  int id = virConnectDomainEventRegisterAny(connection, nullptr, VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                            VIR_DOMAIN_EVENT_CALLBACK(on_lifecycle), this, nullptr);
  if (id < 0) return false;
  callback_ids.push_back(id);

  // Optional: group metadata and hot-plugged vsock devices. Drivers without
  // these events still give us the lifecycle.
  std::pair<int, virConnectDomainEventGenericCallback> optional_events[] = {
      {VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, VIR_DOMAIN_EVENT_CALLBACK(on_metadata_change)},
      {VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, VIR_DOMAIN_EVENT_CALLBACK(on_device_change)},
      {VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, VIR_DOMAIN_EVENT_CALLBACK(on_device_change)},
  };
  for (auto [event, callback] : optional_events) {
    id = virConnectDomainEventRegisterAny(connection, nullptr, event, callback, this, nullptr);
    if (id >= 0) callback_ids.push_back(id);
  }
  return true;
}

bool LibvirtInventory::Impl::synchronise() {
  std::optional<DomainListing> listing = list_with_states(connection);
  if (!listing) {
    log::debug("libvirt_domain_stats_failed")
        .kv("uri", options.uri)
        .kv("error", last_libvirt_error());
    listing = list_without_states(connection);
  }
  if (!listing) {
    log::warn("libvirt_list_failed").kv("uri", options.uri).kv("error", last_libvirt_error());
    return false;
  }

  ReadResult read = read_all(listing->domains);
  if (read.error) {
    log::warn("libvirt_read_failed").kv("uri", options.uri).kv("error", *read.error);
    return false;
  }
  std::size_t domain_count = read.vms.size();
  directory.replace_all(std::move(read.vms));
  ++stats.syncs;
  log::info("libvirt_sync").kv("uri", options.uri).kv("domains", domain_count);
  {
    std::lock_guard lock(mutex);
    first_sync_done = true;
  }
  changed.notify_all();
  return true;
}

void LibvirtInventory::Impl::follow_events() {
  {
    std::lock_guard lock(mutex);
    following = true;
  }
  while (!stopping && !closed) {
    run_attaches();
    if (virEventRunDefaultImpl() < 0) {
      log::warn("libvirt_event_loop_failed").kv("error", last_libvirt_error());
      break;
    }
    refresh_pending_domains();
  }
  {
    std::lock_guard lock(mutex);
    following = false;
  }
  refuse_attaches(fmt::format("hostd lost its libvirt connection ({})", options.uri));
}

void LibvirtInventory::Impl::run_attaches() {
  std::deque<Attach> queued;
  {
    std::lock_guard lock(mutex);
    queued.swap(attaches);
  }
  for (const auto& attach : queued)
    attach_now(attach);
}

void LibvirtInventory::Impl::refuse_attaches(const std::string& reason) {
  std::deque<Attach> queued;
  {
    std::lock_guard lock(mutex);
    queued.swap(attaches);
  }
  for (const auto& attach : queued)
    attach.done(reason);
}

// The device only if the live XML has none: a domain may have gained one
// (another request's attach, an operator's) since the directory read it.
// The live XML is read again after the attach for the CID libvirt chose.
void LibvirtInventory::Impl::attach_now(const Attach& attach) {
  virResetLastError();
  DomainHandle domain(virDomainLookupByUUIDString(connection, attach.uuid.c_str()));
  if (!domain) {
    attach.done(fmt::format("looking up domain {}: {}", attach.uuid, last_libvirt_error()));
    return;
  }
  std::unique_ptr<char, decltype(&std::free)> xml(virDomainGetXMLDesc(domain.get(), 0), &std::free);
  if (!xml) {
    attach.done(fmt::format("reading domain {}: {}", attach.uuid, last_libvirt_error()));
    return;
  }
  if (!parse_domain_xml(xml.get()).vsock &&
      virDomainAttachDeviceFlags(domain.get(), kOnDemandVsock, VIR_DOMAIN_AFFECT_LIVE) < 0) {
    attach.done(last_libvirt_error());
    return;
  }
  std::optional<VmRecord> vm = read_domain(domain.get(), std::nullopt);
  if (!vm) {
    attach.done(
        fmt::format("reading domain {} after the attach: {}", attach.uuid, last_libvirt_error()));
    return;
  }
  std::optional<std::uint32_t> cid = vm->cid;
  directory.upsert(std::move(*vm));
  attach.done(cid);
}

void LibvirtInventory::Impl::refresh_pending_domains() {
  std::set<std::string> uuids;
  {
    std::lock_guard lock(mutex);
    uuids.swap(pending);
  }
  for (const auto& uuid : uuids)
    refresh_domain(uuid);
}

void LibvirtInventory::Impl::refresh_domain(const std::string& uuid) {
  virResetLastError();
  DomainHandle domain(virDomainLookupByUUIDString(connection, uuid.c_str()));
  std::optional<VmRecord> vm = domain ? read_domain(domain.get(), std::nullopt) : std::nullopt;
  if (vm) {
    // At info: a domain changes rarely, and what hostd last heard of it is
    // the first thing an operator asks when a VM will not answer.
    log::info("libvirt_domain_changed")
        .kv("vm", vm->name)
        .kv("uuid", vm->uuid)
        .kv("state", state_name(vm->state))
        .kv("cid", cid_text(vm->cid));
    directory.upsert(std::move(*vm));
  } else if (virGetLastErrorCode() == VIR_ERR_NO_DOMAIN) {
    log::info("libvirt_domain_removed").kv("uuid", uuid);
    directory.remove(uuid);
  } else {
    // The connection is failing; the resynchronisation after it will cover this domain.
    log::warn("libvirt_read_failed").kv("uuid", uuid).kv("error", last_libvirt_error());
  }
}

void LibvirtInventory::Impl::disconnect() {
  stats.connected = false;
  if (connection == nullptr) return;
  // On a dead connection these fail after dropping the local registration;
  // that is all we need.
  for (int id : callback_ids)
    virConnectDomainEventDeregisterAny(connection, id);
  callback_ids.clear();
  if (close_callback_registered) virConnectUnregisterCloseCallback(connection, on_close);
  close_callback_registered = false;
  virConnectClose(connection);
  connection = nullptr;
  std::lock_guard lock(mutex);
  pending.clear();  // the next synchronisation reads everything
}

// While libvirt is away, an attach asked for meanwhile is refused at once
// rather than left waiting for the reconnect.
bool LibvirtInventory::Impl::wait_or_stop(std::chrono::milliseconds delay) {
  const auto until = std::chrono::steady_clock::now() + delay;
  std::unique_lock lock(mutex);
  for (;;) {
    if (changed.wait_until(lock, until, [this] { return stopping.load() || !attaches.empty(); })) {
      if (stopping) return true;
      lock.unlock();
      refuse_attaches(fmt::format("hostd is not connected to libvirt ({})", options.uri));
      lock.lock();
      continue;
    }
    return false;
  }
}

void LibvirtInventory::Impl::mark_pending(virDomainPtr domain) {
  // Only the UUID (a local accessor, no call to the daemon): the domain is
  // re-read after the event loop returns.
  std::optional<std::string> uuid = uuid_text(domain);
  if (!uuid) return;
  ++stats.events;
  std::lock_guard lock(mutex);
  pending.insert(std::move(*uuid));
}

int LibvirtInventory::Impl::on_lifecycle(virConnectPtr, virDomainPtr domain, int, int,
                                         void* opaque) {
  static_cast<Impl*>(opaque)->mark_pending(domain);
  return 0;
}

void LibvirtInventory::Impl::on_metadata_change(virConnectPtr, virDomainPtr domain, int,
                                                const char*, void* opaque) {
  static_cast<Impl*>(opaque)->mark_pending(domain);
}

void LibvirtInventory::Impl::on_device_change(virConnectPtr, virDomainPtr domain, const char*,
                                              void* opaque) {
  static_cast<Impl*>(opaque)->mark_pending(domain);
}

void LibvirtInventory::Impl::on_close(virConnectPtr, int reason, void* opaque) {
  auto* impl = static_cast<Impl*>(opaque);
  impl->close_reason = reason;
  impl->closed = true;
}

LibvirtInventory::LibvirtInventory(LibvirtConfig options, DirectoryFeed& directory)
    : impl_(std::make_unique<Impl>(std::move(options), directory, stats_)) {}

LibvirtInventory::~LibvirtInventory() {
  stop();
}

void LibvirtInventory::start() {
  if (impl_->thread.joinable()) return;
  if (!prepare_libvirt_once()) {
    throw std::runtime_error("libvirt: cannot register the default event loop: " +
                             last_libvirt_error());
  }
  impl_->stopping = false;
  impl_->thread = std::thread([impl = impl_.get()] { impl->run(); });
}

void LibvirtInventory::stop() {
  if (!impl_->thread.joinable()) return;
  {
    std::lock_guard lock(impl_->mutex);
    impl_->stopping = true;
  }
  impl_->changed.notify_all();
  // A zero-interval timer makes the blocked virEventRunDefaultImpl() return;
  // removed once the thread has seen `stopping`.
  int wake_timer = virEventAddTimeout(0, wake_event_loop, nullptr, nullptr);
  impl_->thread.join();
  if (wake_timer >= 0) virEventRemoveTimeout(wake_timer);
  impl_->refuse_attaches("hostd is stopping");
}

void LibvirtInventory::attach_vsock(const std::string& uuid,
                                    std::function<void(VsockAttachOutcome)> done) {
  bool queued = false;
  bool following = false;
  {
    std::lock_guard lock(impl_->mutex);
    if (!impl_->stopping && impl_->thread.joinable()) {
      impl_->attaches.push_back({uuid, std::move(done)});
      queued = true;
      following = impl_->following;
    }
  }
  if (!queued) {
    done(std::string("hostd is stopping"));
    return;
  }
  // Wakes whichever waits: the event loop (outside our lock, as libvirt takes
  // its own), or the wait before a reconnect.
  if (following) virEventAddTimeout(0, wake_once, nullptr, nullptr);
  impl_->changed.notify_all();
}

bool LibvirtInventory::wait_first_sync(std::chrono::milliseconds timeout) {
  std::unique_lock lock(impl_->mutex);
  return impl_->changed.wait_for(lock, timeout, [this] { return impl_->first_sync_done; });
}

}  // namespace vmgate::hostd
