#include "hostd/cluster/cluster_sync.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "common/log.hpp"
#include "hostd/inventory/reconnect_backoff.hpp"

namespace vmgate::hostd {
namespace {

using namespace asio::experimental::awaitable_operators;

std::vector<transport::Address> endpoints_of(const ClusterConfig& config) {
  return config.etcd_endpoints;
}

}  // namespace

std::string ClusterStatus::last_error() const {
  std::lock_guard lock(mutex_);
  return last_error_;
}

void ClusterStatus::set_error(std::string error) {
  std::lock_guard lock(mutex_);
  last_error_ = std::move(error);
}

ClusterSync::ClusterSync(asio::any_io_executor executor, const ClusterConfig& config,
                         ClusterDirectory& directory, HostRecord self)
    : executor_(executor),
      config_(config),
      directory_(directory),
      self_(std::move(self)),
      client_(executor, endpoints_of(config), config.etcd_timeout),
      wake_publisher_(executor, asio::steady_timer::time_point::max()),
      session_timer_(executor) {
  // From the libvirt thread: the publisher hears of it on its own.
  directory_.on_local_change([this](const std::string& uuid) {
    asio::post(executor_, [this, uuid] { mark_dirty(uuid); });
  });
}

ClusterSync::~ClusterSync() {
  directory_.on_local_change({});
}

void ClusterSync::start() {
  asio::co_spawn(executor_, run(), [](std::exception_ptr e) {
    if (e) log::error("cluster_sync_failed").kv("error", log::describe(e));
  });
}

void ClusterSync::stop() {
  stopping_ = true;
  end_session("hostd is stopping");
  session_timer_.cancel();
}

void ClusterSync::mark_dirty(const std::string& uuid) {
  dirty_.insert(uuid);
  wake_publisher_.cancel();
}

void ClusterSync::end_session(std::string reason, bool lease_lost) {
  if (!end_) end_ = SessionEnd{std::move(reason), lease_lost};
  client_.stop_watch();
  wake_publisher_.cancel();
}

bool ClusterSync::lease_error(const EtcdError& error) const {
  return error.message.find("lease not found") != std::string::npos;
}

awaitable<void> ClusterSync::run() {
  ReconnectBackoff backoff(config_.reconnect_min, config_.reconnect_max);
  while (!stopping_) {
    SessionEnd end = co_await session();
    status_.connected_ = false;
    if (stopping_) break;
    status_.set_error(end.reason);
    if (end.lease_lost) {
      ++status_.lease_losses_;
      log::warn("etcd_lease_lost").kv("host", self_.name).kv("reason", end.reason);
      continue;
    }
    const auto wait = backoff.next();
    log::warn("etcd_unreachable")
        .kv("host", self_.name)
        .kv("endpoint", client_.current_endpoint())
        .kv("reason", end.reason)
        .kv("retry_ms", static_cast<long long>(wait.count()))
        .kv("cached_vms", directory_.size())
        .kv("revision", static_cast<long long>(status_.revision()));
    session_timer_.expires_after(wait);
    co_await session_timer_.async_wait(use_tuple);
    // A session that worked for a while starts the next loss from the minimum.
    if (status_.synced()) backoff.reset();
  }
}

awaitable<ClusterSync::SessionEnd> ClusterSync::session() {
  end_.reset();
  auto lease = co_await client_.grant_lease(config_.lease_ttl);
  if (!lease) co_return SessionEnd{lease.error().message};
  lease_ = lease->id;
  auto host = co_await client_.put(cluster_host_key(self_.name), encode_host_record(self_), lease_);
  if (!host) co_return SessionEnd{host.error().message};
  auto revision = co_await read_everything();
  if (!revision) co_return SessionEnd{revision.error().message};
  // Everything this host runs, claimed again under the new lease.
  for (const auto& uuid : directory_.local_uuids())
    dirty_.insert(uuid);
  status_.connected_ = true;
  const bool first = !status_.synced_.exchange(true);
  status_.set_error({});
  if (first && on_first_sync_) on_first_sync_();
  log::info("etcd_connected")
      .kv("host", self_.name)
      .kv("endpoint", client_.current_endpoint())
      .kv("lease", static_cast<long long>(lease_))
      .kv("revision", static_cast<long long>(*revision))
      .kv("vms", directory_.size());
  try {
    co_await (keep_alive_loop() || watch_loop(*revision) || publish_loop() || reconcile_loop());
  } catch (const std::exception& e) {
    // A loop cancelled by the one that ended first.
    end_session(e.what());
  }
  co_return end_.value_or(SessionEnd{"the session ended"});
}

awaitable<void> ClusterSync::keep_alive_loop() {
  asio::steady_timer timer(executor_);
  const auto interval =
      std::chrono::duration_cast<std::chrono::milliseconds>(config_.lease_ttl) / 3;
  for (;;) {
    timer.expires_after(interval);
    auto [ec] = co_await timer.async_wait(use_tuple);
    if (ec || end_) co_return;
    auto kept = co_await client_.keep_alive(lease_);
    if (!kept) {
      end_session(kept.error().message);
      co_return;
    }
    if (kept->ttl <= 0) {
      end_session(fmt::format("lease {} expired", lease_), true);
      co_return;
    }
  }
}

awaitable<void> ClusterSync::watch_loop(std::int64_t revision) {
  const std::string prefix(cluster_prefix);
  const std::string end = prefix_range_end(prefix);
  asio::steady_timer pause(executor_);
  // Named, not a temporary in the co_await (see client_connection.cpp).
  const EtcdClient::WatchHandler handler = [this](const EtcdWatchMessage& m) { on_watch(m); };
  watched_ = revision;
  for (;;) {
    auto ended = co_await client_.watch(prefix, end, watched_ + 1, handler);
    if (end_) co_return;
    if (ended.compact_revision == 0) {
      // The stream broke (a member restarted, a connection reset): watched
      // again from just after the last event it delivered, on whichever
      // member answers; the session ends only when none does.
      log::info("etcd_watch_broken")
          .kv("host", self_.name)
          .kv("reason", ended.reason)
          .kv("from", static_cast<long long>(watched_ + 1));
      pause.expires_after(config_.reconnect_min);
      auto [ec] = co_await pause.async_wait(use_tuple);
      if (ec || end_) co_return;
      auto alive = co_await client_.range(std::string(cluster_hosts_prefix), "", 0);
      if (!alive) {
        end_session(ended.reason + "; " + alive.error().message);
        co_return;
      }
      continue;
    }
    // The changes after `revision` are gone from etcd's history: the state
    // is read again, whole, at one revision, and watched from just after it.
    ++status_.compactions_;
    log::warn("etcd_watch_compacted")
        .kv("host", self_.name)
        .kv("watched_from", static_cast<long long>(watched_ + 1))
        .kv("compact_revision", static_cast<long long>(ended.compact_revision));
    auto reread = co_await read_everything();
    if (!reread) {
      end_session(reread.error().message);
      co_return;
    }
    for (const auto& uuid : directory_.local_uuids())
      mark_dirty(uuid);
    watched_ = *reread;
  }
}

awaitable<void> ClusterSync::publish_loop() {
  for (;;) {
    while (dirty_.empty()) {
      wake_publisher_.expires_at(asio::steady_timer::time_point::max());
      co_await wake_publisher_.async_wait(use_tuple);
      if (end_) co_return;
    }
    const std::string uuid = *dirty_.begin();
    dirty_.erase(dirty_.begin());
    auto published = co_await publish_claim(uuid);
    if (end_) {
      dirty_.insert(uuid);
      co_return;
    }
    if (!published) {
      dirty_.insert(uuid);
      end_session(published.error().message, lease_error(published.error()));
      co_return;
    }
  }
}

awaitable<void> ClusterSync::reconcile_loop() {
  asio::steady_timer timer(executor_);
  for (;;) {
    timer.expires_after(config_.reconcile_interval);
    auto [ec] = co_await timer.async_wait(use_tuple);
    if (ec || end_) co_return;
    auto revision = co_await read_everything();
    if (!revision) {
      end_session(revision.error().message);
      co_return;
    }
    for (const auto& uuid : directory_.local_uuids())
      mark_dirty(uuid);
  }
}

awaitable<EtcdResult<std::int64_t>> ClusterSync::read_everything() {
  const std::string prefix(cluster_prefix);
  auto range = co_await client_.range(prefix, prefix_range_end(prefix));
  if (!range) co_return range.error();
  std::vector<HostRecord> hosts;
  std::vector<VmClaim> claims;
  for (const auto& kv : range->kvs) {
    const ClusterKey key = parse_cluster_key(kv.key);
    if (key.kind == ClusterKey::Kind::host) {
      if (auto host = decode_host_record(kv.value); host && host->name == key.id)
        hosts.push_back(std::move(*host));
    } else if (key.kind == ClusterKey::Kind::vm) {
      auto claim = decode_vm_claim(kv.value);
      if (!claim || claim->vm.uuid != key.id) {
        log::warn("etcd_record_ignored")
            .kv("key", kv.key)
            .kv("reason",
                claim ? std::string("uuid differs from the key's") : claim.error().reason);
        continue;
      }
      // A claim this host left in an earlier life (another lease): it goes
      // unless this host still runs the VM, which claims it again anyway.
      if (claim->vm.host == self_.name && kv.lease != lease_) mark_dirty(key.id);
      claims.push_back(std::move(*claim));
    }
  }
  directory_.replace_remote(std::move(hosts), std::move(claims));
  status_.revision_ = range->revision;
  co_return range->revision;
}

awaitable<EtcdResult<void>> ClusterSync::publish_claim(const std::string& uuid) {
  const std::string key = cluster_vm_key(uuid);
  auto current = co_await client_.range(key, "");
  if (!current) co_return current.error();
  std::optional<EtcdKeyValue> held;
  if (!current->kvs.empty()) held = std::move(current->kvs.front());
  // A few rounds: each lost compare means another host wrote between our
  // read and our write, and its claim is judged again.
  for (int round = 0; round < 8; ++round) {
    const std::optional<VmClaim> mine = directory_.local_claim(uuid);
    std::optional<VmClaim> holder;
    if (held) {
      if (auto decoded = decode_vm_claim(held->value)) holder = std::move(*decoded);
    }
    EtcdTxn txn{.key = key, .mod_revision = held ? held->mod_revision : 0};
    if (!mine) {
      // Gone from libvirt here: the key goes only if it is still this host's.
      if (!held || (holder && holder->vm.host != self_.name)) co_return EtcdResult<void>{};
      txn.remove = true;
    } else {
      txn.value = encode_vm_claim(*mine);
      txn.lease = lease_;
      if (holder && !claim_wins(*mine, *holder)) {
        log::info("vm_claim_lost")
            .kv("vm", mine->vm.name)
            .kv("uuid", uuid)
            .kv("holder", holder->vm.host)
            .kv("holder_state", state_name(holder->vm.state));
        co_return EtcdResult<void>{};
      }
      if (held && held->value == txn.value && held->lease == lease_) co_return EtcdResult<void>{};
    }
    auto written = co_await client_.txn(txn);
    if (!written) co_return written.error();
    if (written->succeeded) {
      log::debug("vm_claimed")
          .kv("uuid", uuid)
          .kv("removed", txn.remove)
          .kv("revision", static_cast<long long>(written->revision));
      co_return EtcdResult<void>{};
    }
    held = std::move(written->current);
  }
  log::warn("vm_claim_contended").kv("uuid", uuid);
  mark_dirty(uuid);
  co_return EtcdResult<void>{};
}

void ClusterSync::on_watch(const EtcdWatchMessage& message) {
  status_.revision_ = message.revision;
  for (const auto& event : message.events) {
    watched_ = std::max(watched_, event.kv.mod_revision);
    const ClusterKey key = parse_cluster_key(event.kv.key);
    if (key.kind == ClusterKey::Kind::host) {
      if (event.deleted) {
        directory_.remove_remote_host(key.id);
        // This host's own record gone (its lease expired): the keepalive
        // will find out too; write it all again now.
        if (key.id == self_.name) end_session("this host's record was deleted", true);
      } else if (auto host = decode_host_record(event.kv.value); host && host->name == key.id) {
        directory_.put_remote_host(std::move(*host));
      }
      continue;
    }
    if (key.kind != ClusterKey::Kind::vm) continue;
    const std::optional<VmClaim> mine = directory_.local_claim(key.id);
    if (event.deleted) {
      directory_.remove_remote_claim(key.id);
      // The holder let go (undefined there, or its lease expired): a host
      // that has the VM claims it.
      if (mine) mark_dirty(key.id);
      continue;
    }
    auto claim = decode_vm_claim(event.kv.value);
    if (!claim || claim->vm.uuid != key.id) continue;
    if (mine && claim->vm.host != self_.name && claim_wins(*mine, *claim)) mark_dirty(key.id);
    directory_.put_remote_claim(std::move(*claim));
  }
}

}  // namespace vmgate::hostd
