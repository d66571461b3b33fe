#include "hostd/channel/channel_revoker.hpp"

#include <map>
#include <set>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "common/log.hpp"

namespace vmgate::hostd {
namespace {

std::string cid_text(const std::optional<std::uint32_t>& cid) {
  return cid ? std::to_string(*cid) : std::string("none");
}

}  // namespace

std::optional<std::string> channel_gone(const ChannelKey& key, const VmRecord* now) {
  if (now == nullptr) return fmt::format("vm {} is no longer defined", key.name);
  if (now->state == VmState::shut_off || now->state == VmState::crashed)
    return fmt::format("vm {} is {}", key.name, state_name(now->state));
  // The channel's address came from these (the transport template).
  if (now->cid != key.cid)
    return fmt::format("vm {} changed its vsock CID from {} to {}", key.name, cid_text(key.cid),
                       cid_text(now->cid));
  if (now->name != key.name) return fmt::format("vm {} was renamed {}", key.name, now->name);
  if (!key.host.empty() && now->host != key.host)
    return fmt::format("vm {} moved from host {} to {}", key.name, key.host, now->host);
  return std::nullopt;
}

std::optional<std::string> channel_gone(const ChannelKey& key, const Directory& directory) {
  Lookup lookup = directory.find(key.uuid);
  // Ambiguous (a name that equals this UUID): not proof that the VM left.
  if (lookup.status == LookupStatus::ambiguous) return std::nullopt;
  return channel_gone(key, lookup.vm ? &*lookup.vm : nullptr);
}

ChannelRevoker::ChannelRevoker(Directory& directory, LiveChannels& live, ChannelPool* pool)
    : directory_(directory), live_(live), pool_(pool) {
  observer_ = directory_.observe([this](const DirectoryChange& change) { changed(change); });
}

ChannelRevoker::~ChannelRevoker() {
  directory_.unobserve(observer_);
}

// On the thread that changed the directory (libvirt's), outside its lock.
// What the VMs are now is read first, so the registry and the pool hold
// their locks only to compare.
void ChannelRevoker::changed(const DirectoryChange& change) {
  std::map<std::string, std::optional<VmRecord>, std::less<>> now;
  if (change.everything) {
    for (auto& vm : directory_.snapshot()) {
      std::string uuid = vm.uuid;
      now.emplace(std::move(uuid), std::move(vm));
    }
  } else {
    for (const auto& uuid : change.uuids) {
      Lookup lookup = directory_.find(uuid);
      if (lookup.status == LookupStatus::ambiguous) continue;
      now.emplace(uuid, std::move(lookup.vm));
    }
  }
  std::set<std::string> left;  // the names of the VMs whose channels go, for the log
  auto gone = [&](const ChannelKey& key) -> std::optional<std::string> {
    auto it = now.find(key.uuid);
    // Not among the changed VMs, it stays; in a full resynchronisation, it is gone.
    if (it == now.end() && !change.everything) return std::nullopt;
    auto why = channel_gone(key, it != now.end() && it->second ? &*it->second : nullptr);
    if (why) left.insert(key.name);
    return why;
  };
  const std::size_t cut = live_.revoke_if(gone);
  const std::size_t dropped = pool_ ? pool_->drop_if(gone) : 0;
  if (cut > 0 || dropped > 0) {
    std::string names;
    for (const auto& name : left)
      names += (names.empty() ? "" : ",") + name;
    log::info("vm_channels_revoked")
        .kv("vms", names)
        .kv("in_use", cut)
        .kv("idle", dropped)
        .kv("resync", change.everything ? "yes" : "no");
  }
}

}  // namespace vmgate::hostd
