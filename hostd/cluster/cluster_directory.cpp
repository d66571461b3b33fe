#include "hostd/cluster/cluster_directory.hpp"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <set>

#include "hostd/directory/group_membership.hpp"
#include "hostd/directory/name_index.hpp"

namespace vmgate::hostd {
namespace {

std::int64_t wall_clock_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// What a VM is, apart from where the directory says it runs: a record the
// inventory sends again unchanged (a resynchronisation) keeps its stamp.
bool same_vm(const VmRecord& a, const VmRecord& b) {
  return a.uuid == b.uuid && a.name == b.name && a.cid == b.cid && a.state == b.state &&
         a.networks == b.networks && a.groups == b.groups;
}

}  // namespace

ClusterDirectory::ClusterDirectory(std::string host, Clock clock)
    : host_(std::move(host)), clock_(clock ? std::move(clock) : Clock(wall_clock_ns)) {}

EventStamp ClusterDirectory::stamp() {
  return EventStamp{clock_(), ++sequence_};
}

void ClusterDirectory::on_local_change(std::function<void(const std::string&)> callback) {
  local_callback_ = std::move(callback);
}

void ClusterDirectory::local_changed(const std::vector<std::string>& uuids) {
  if (!local_callback_) return;
  for (const auto& uuid : uuids)
    local_callback_(uuid);
}

void ClusterDirectory::replace_all(std::vector<VmRecord> vms) {
  std::vector<std::string> changed;
  {
    std::lock_guard lock(mutex_);
    std::map<std::string, VmClaim, std::less<>> fresh;
    for (auto& vm : vms) {
      vm.uuid = to_lower(vm.uuid);
      vm.host = host_;
      auto old = local_.find(vm.uuid);
      if (old != local_.end() && same_vm(old->second.vm, vm)) {
        fresh.emplace(vm.uuid, old->second);
        continue;
      }
      changed.push_back(vm.uuid);
      std::string uuid = vm.uuid;
      fresh.emplace(std::move(uuid), VmClaim{std::move(vm), stamp()});
    }
    for (const auto& [uuid, claim] : local_)
      if (!fresh.contains(uuid)) changed.push_back(uuid);
    local_ = std::move(fresh);
    rebuild();
  }
  observers_.notify(DirectoryChange{.everything = true});
  local_changed(changed);
}

void ClusterDirectory::upsert(VmRecord vm) {
  vm.uuid = to_lower(vm.uuid);
  vm.host = host_;
  const std::string uuid = vm.uuid;
  {
    std::lock_guard lock(mutex_);
    auto& claim = local_[uuid];
    claim.vm = std::move(vm);
    claim.event = stamp();
    refresh(uuid);
  }
  observers_.notify(DirectoryChange{.uuids = {uuid}});
  local_changed({uuid});
}

void ClusterDirectory::remove(std::string_view uuid_text) {
  const std::string uuid = to_lower(uuid_text);
  {
    std::lock_guard lock(mutex_);
    local_.erase(uuid);
    refresh(uuid);
  }
  observers_.notify(DirectoryChange{.uuids = {uuid}});
  local_changed({uuid});
}

void ClusterDirectory::replace_remote(std::vector<HostRecord> hosts, std::vector<VmClaim> claims) {
  {
    std::lock_guard lock(mutex_);
    hosts_.clear();
    for (auto& host : hosts) {
      if (host.name == host_) continue;
      std::string name = host.name;
      hosts_.insert_or_assign(std::move(name), std::move(host));
    }
    remote_.clear();
    for (auto& claim : claims) {
      claim.vm.uuid = to_lower(claim.vm.uuid);
      claim.vm.cid.reset();
      if (claim.vm.host == host_) continue;
      std::string uuid = claim.vm.uuid;
      remote_.insert_or_assign(std::move(uuid), std::move(claim));
    }
    rebuild();
  }
  observers_.notify(DirectoryChange{.everything = true});
}

void ClusterDirectory::put_remote_host(HostRecord host) {
  if (host.name == host_) return;
  std::lock_guard lock(mutex_);
  std::string name = host.name;
  hosts_.insert_or_assign(std::move(name), std::move(host));
}

void ClusterDirectory::remove_remote_host(std::string_view name) {
  std::lock_guard lock(mutex_);
  if (auto it = hosts_.find(name); it != hosts_.end()) hosts_.erase(it);
}

void ClusterDirectory::put_remote_claim(VmClaim claim) {
  claim.vm.uuid = to_lower(claim.vm.uuid);
  claim.vm.cid.reset();
  const std::string uuid = claim.vm.uuid;
  {
    std::lock_guard lock(mutex_);
    // Its own claim read back, or a claim by another host on a VM this host
    // had until now: only another host's claim is remote.
    if (claim.vm.host == host_) {
      remote_.erase(uuid);
    } else {
      remote_.insert_or_assign(uuid, std::move(claim));
    }
    refresh(uuid);
  }
  observers_.notify(DirectoryChange{.uuids = {uuid}});
}

void ClusterDirectory::remove_remote_claim(std::string_view uuid_text) {
  const std::string uuid = to_lower(uuid_text);
  {
    std::lock_guard lock(mutex_);
    if (remote_.erase(uuid) == 0) return;
    refresh(uuid);
  }
  observers_.notify(DirectoryChange{.uuids = {uuid}});
}

std::optional<HostRecord> ClusterDirectory::host_record(std::string_view name) const {
  std::lock_guard lock(mutex_);
  auto it = hosts_.find(name);
  if (it == hosts_.end()) return std::nullopt;
  return it->second;
}

std::optional<VmClaim> ClusterDirectory::local_claim(std::string_view uuid) const {
  std::lock_guard lock(mutex_);
  auto it = local_.find(to_lower(uuid));
  if (it == local_.end()) return std::nullopt;
  return it->second;
}

std::vector<std::string> ClusterDirectory::local_uuids() const {
  std::lock_guard lock(mutex_);
  std::vector<std::string> out;
  for (const auto& [uuid, claim] : local_)
    out.push_back(uuid);
  return out;
}

std::optional<VmClaim> ClusterDirectory::remote_claim(std::string_view uuid) const {
  std::lock_guard lock(mutex_);
  auto it = remote_.find(to_lower(uuid));
  if (it == remote_.end()) return std::nullopt;
  return it->second;
}

void ClusterDirectory::refresh(const std::string& uuid) {
  index_.erase(uuid);
  const VmClaim* routed = nullptr;
  auto local = local_.find(uuid);
  auto remote = remote_.find(uuid);
  if (local != local_.end()) routed = &local->second;
  if (remote != remote_.end() && (routed == nullptr || !claim_wins(*routed, remote->second)))
    routed = &remote->second;
  if (routed == nullptr) return;
  // Only this host's VMs have a CID that means anything here: a guest's
  // traffic arrives on its own host.
  const bool with_cid = routed->vm.host == host_;
  index_.insert(routed->vm, with_cid);
}

void ClusterDirectory::rebuild() {
  index_ = VmIndex{};
  std::set<std::string> uuids;
  for (const auto& [uuid, claim] : local_)
    uuids.insert(uuid);
  for (const auto& [uuid, claim] : remote_)
    uuids.insert(uuid);
  for (const auto& uuid : uuids)
    refresh(uuid);
}

Lookup ClusterDirectory::find(std::string_view name_or_uuid) const {
  std::lock_guard lock(mutex_);
  return index_.find(name_or_uuid);
}

void ClusterDirectory::use_groups(const GroupsConfig& groups, const FanoutConfig& limits,
                                  const GroupMembership* joins) {
  groups_ = &groups;
  limits_ = &limits;
  joins_ = joins;
}

GroupSources ClusterDirectory::group_sources(const std::vector<GuestJoin>& joins) const {
  static const GroupsConfig no_groups;
  static const FanoutConfig default_limits;
  return GroupSources{groups_ ? *groups_ : no_groups, joins, limits_ ? *limits_ : default_limits};
}

std::vector<VmRecord> ClusterDirectory::snapshot_by_name() const {
  std::vector<VmRecord> vms = snapshot();
  std::ranges::stable_sort(vms,
                           [](const VmRecord& a, const VmRecord& b) { return a.name < b.name; });
  return vms;
}

Resolution ClusterDirectory::resolve(const Target& target) const {
  // One VM, or HOST/NAME: as select() finds it.
  if (target.single_vm() || (target.kind == Target::Kind::host_vm && !target.exclude))
    return Directory::resolve(target);
  // The resolver is the embedded directory's, over a copy of every host's
  // VMs, outside the lock: one group resolves alike on every host.
  const std::vector<VmRecord> vms = snapshot_by_name();
  const std::vector<GuestJoin> joins = joins_ ? joins_->joins() : std::vector<GuestJoin>{};
  return resolve_target(target, vms, group_sources(joins));
}

std::vector<GroupReport> ClusterDirectory::groups() const {
  const std::vector<VmRecord> vms = snapshot_by_name();
  const std::vector<GuestJoin> joins = joins_ ? joins_->joins() : std::vector<GuestJoin>{};
  return report_groups(vms, group_sources(joins));
}

Selection ClusterDirectory::select(const Target& target) const {
  Selection selection;
  if (target.kind == Target::Kind::host_vm && !target.exclude) return select_on_host(target);
  if (!target.single_vm()) return resolve(target).selection();
  selection.name = target.value;
  auto lookup = find(target.value);
  switch (lookup.status) {
    case LookupStatus::found:
      selection.status = Selection::Status::found;
      selection.vms.push_back(std::move(*lookup.vm));
      break;
    case LookupStatus::ambiguous:
      selection.status = Selection::Status::ambiguous;
      selection.candidates = std::move(lookup.candidates);
      break;
    case LookupStatus::not_found:
      break;
  }
  return selection;
}

// HOST/NAME: a name (or UUID) among the VMs the directory places on HOST,
// for names that are ambiguous across the cluster.
Selection ClusterDirectory::select_on_host(const Target& target) const {
  Selection selection;
  selection.name = target.to_string();
  std::lock_guard lock(mutex_);
  std::vector<const VmRecord*> matches;
  auto collect = [&](bool ignoring_case) {
    for (const auto& [uuid, vm] : index_.by_uuid()) {
      if (vm.host != target.host) continue;
      const bool named = ignoring_case ? equal_ignoring_case(vm.name, target.value)
                                       : vm.name == target.value || uuid == to_lower(target.value);
      if (named) matches.push_back(&vm);
    }
  };
  collect(false);
  if (matches.empty()) collect(true);
  if (matches.size() == 1) {
    selection.status = Selection::Status::found;
    selection.vms.push_back(*matches.front());
  } else if (matches.size() > 1) {
    selection.status = Selection::Status::ambiguous;
    for (const VmRecord* vm : matches)
      selection.candidates.push_back(vm->name + " (" + vm->uuid + ")");
  }
  return selection;
}

std::optional<VmRecord> ClusterDirectory::by_cid(std::uint32_t cid) const {
  std::lock_guard lock(mutex_);
  return index_.by_cid(cid);
}

std::vector<VmRecord> ClusterDirectory::snapshot() const {
  std::lock_guard lock(mutex_);
  return index_.snapshot();
}

std::size_t ClusterDirectory::size() const {
  std::lock_guard lock(mutex_);
  return index_.size();
}

Directory::ObserverId ClusterDirectory::observe(Observer observer) {
  return observers_.add(std::move(observer));
}

void ClusterDirectory::unobserve(ObserverId id) {
  observers_.remove(id);
}

}  // namespace vmgate::hostd
