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
  notify(DirectoryChange{.everything = true});
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
  notify(DirectoryChange{.uuids = {uuid}});
  local_changed({uuid});
}

void ClusterDirectory::remove(std::string_view uuid_text) {
  const std::string uuid = to_lower(uuid_text);
  {
    std::lock_guard lock(mutex_);
    local_.erase(uuid);
    refresh(uuid);
  }
  notify(DirectoryChange{.uuids = {uuid}});
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
  notify(DirectoryChange{.everything = true});
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
  notify(DirectoryChange{.uuids = {uuid}});
}

void ClusterDirectory::remove_remote_claim(std::string_view uuid_text) {
  const std::string uuid = to_lower(uuid_text);
  {
    std::lock_guard lock(mutex_);
    if (remote_.erase(uuid) == 0) return;
    refresh(uuid);
  }
  notify(DirectoryChange{.uuids = {uuid}});
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
  if (auto it = index_.by_uuid.find(uuid); it != index_.by_uuid.end()) {
    erase_entry(index_.uuid_by_name, it->second.name, uuid);
    if (it->second.cid) erase_entry(index_.uuid_by_cid, *it->second.cid, uuid);
    index_.by_uuid.erase(it);
  }
  const VmClaim* routed = nullptr;
  auto local = local_.find(uuid);
  auto remote = remote_.find(uuid);
  if (local != local_.end()) routed = &local->second;
  if (remote != remote_.end() && (routed == nullptr || !claim_wins(*routed, remote->second)))
    routed = &remote->second;
  if (routed == nullptr) return;
  const VmRecord& vm = routed->vm;
  index_.uuid_by_name.emplace(vm.name, uuid);
  // Only this host's VMs have a CID that means anything here: a guest's
  // traffic arrives on its own host.
  if (vm.cid && vm.host == host_) index_.uuid_by_cid.emplace(*vm.cid, uuid);
  index_.by_uuid.emplace(uuid, vm);
}

void ClusterDirectory::rebuild() {
  index_ = Index{};
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
  // As the embedded directory finds (embedded_directory.cpp): a name and a
  // UUID alike, then a name ignoring case; several matches are ambiguous.
  std::vector<const std::string*> uuids;
  auto add = [&uuids](const std::string& uuid) {
    if (std::ranges::none_of(uuids, [&](const std::string* u) { return *u == uuid; }))
      uuids.push_back(&uuid);
  };
  auto [first, last] = index_.uuid_by_name.equal_range(name_or_uuid);
  for (auto it = first; it != last; ++it)
    add(it->second);
  if (auto it = index_.by_uuid.find(to_lower(name_or_uuid)); it != index_.by_uuid.end())
    add(it->first);
  if (uuids.empty()) {
    for (const auto& [name, uuid] : index_.uuid_by_name)
      if (equal_ignoring_case(name, name_or_uuid)) add(uuid);
  }
  std::ranges::sort(uuids, [](const std::string* a, const std::string* b) { return *a < *b; });
  Lookup result;
  if (uuids.empty()) return result;
  if (uuids.size() == 1) {
    result.status = LookupStatus::found;
    result.vm = index_.by_uuid.find(*uuids.front())->second;
    return result;
  }
  result.status = LookupStatus::ambiguous;
  for (const std::string* uuid : uuids) {
    const VmRecord& vm = index_.by_uuid.find(*uuid)->second;
    result.candidates.push_back(vm.name + " (" + vm.uuid + ")");
  }
  return result;
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
    for (const auto& [uuid, vm] : index_.by_uuid) {
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
  auto [first, last] = index_.uuid_by_cid.equal_range(cid);
  if (first == last || std::next(first) != last) return std::nullopt;
  return index_.by_uuid.find(first->second)->second;
}

std::vector<VmRecord> ClusterDirectory::snapshot() const {
  std::lock_guard lock(mutex_);
  std::vector<VmRecord> out;
  out.reserve(index_.by_uuid.size());
  for (const auto& [uuid, vm] : index_.by_uuid)
    out.push_back(vm);
  return out;
}

std::size_t ClusterDirectory::size() const {
  std::lock_guard lock(mutex_);
  return index_.by_uuid.size();
}

Directory::ObserverId ClusterDirectory::observe(Observer observer) {
  std::lock_guard lock(observers_mutex_);
  const ObserverId id = next_observer_++;
  observers_.emplace_back(id, std::move(observer));
  return id;
}

void ClusterDirectory::unobserve(ObserverId id) {
  std::lock_guard lock(observers_mutex_);
  std::erase_if(observers_, [id](const auto& entry) { return entry.first == id; });
}

void ClusterDirectory::notify(const DirectoryChange& change) {
  std::lock_guard lock(observers_mutex_);
  for (const auto& [id, observer] : observers_)
    observer(change);
}

}  // namespace vmgate::hostd
