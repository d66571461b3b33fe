#include "hostd/directory/embedded_directory.hpp"

#include <algorithm>
#include <cctype>
#include <tuple>
#include <vector>

#include "hostd/directory/group_membership.hpp"
#include "hostd/directory/name_index.hpp"
#include "hostd/directory/target_resolver.hpp"

namespace vmgate::hostd {

void EmbeddedDirectory::replace_all(std::vector<VmRecord> vms) {
  // Built and later freed outside the lock: at thousands of VMs that is
  // milliseconds during which every lookup of a request would wait.
  Index fresh;
  for (auto& vm : vms)
    insert_into(fresh, std::move(vm));
  {
    std::lock_guard lock(mutex_);
    std::swap(index_, fresh);
  }
  notify(DirectoryChange{.everything = true});
}

void EmbeddedDirectory::upsert(VmRecord vm) {
  DirectoryChange change{.uuids = {to_lower(vm.uuid)}};
  {
    std::lock_guard lock(mutex_);
    insert_into(index_, std::move(vm));
  }
  notify(change);
}

void EmbeddedDirectory::remove(std::string_view uuid) {
  DirectoryChange change{.uuids = {to_lower(uuid)}};
  {
    std::lock_guard lock(mutex_);
    erase_from(index_, change.uuids.front());
  }
  notify(change);
}

Lookup EmbeddedDirectory::find(std::string_view name_or_uuid) const {
  std::lock_guard lock(mutex_);
  // An exact name and a UUID (any case) are equally valid answers; if they
  // point at different VMs, saying so beats guessing. The matches are keys
  // of the index, named without copying them (one lookup per request).
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
  // Host names (DNS form, TLS SNI) arrive case-folded; fall back to a name
  // match ignoring case only when nothing matched exactly.
  if (uuids.empty()) {
    for (const auto& [name, uuid] : index_.uuid_by_name) {
      if (equal_ignoring_case(name, name_or_uuid)) add(uuid);
    }
  }
  // Listed in UUID order, whatever order they matched in.
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

void EmbeddedDirectory::use_groups(const GroupsConfig& groups, const FanoutConfig& limits,
                                   const hostd::GroupMembership* joins) {
  groups_ = &groups;
  limits_ = &limits;
  joins_ = joins;
}

Resolution EmbeddedDirectory::resolve(const Target& target) const {
  if (target.single_vm()) return Directory::resolve(target);
  if (target.kind == Target::Kind::host_vm) {
    Resolution out;
    out.status = Selection::Status::unsupported;
    return out;
  }
  // A copy of the VMs, then no lock held: resolving a large group does not
  // hold up the lookups of unicast requests.
  const std::vector<VmRecord> vms = snapshot_by_name();
  const std::vector<GuestJoin> joins = joins_ ? joins_->joins() : std::vector<GuestJoin>{};
  return resolve_target(target, vms, GroupSources{*groups_, joins, *limits_});
}

std::vector<GroupReport> EmbeddedDirectory::groups() const {
  const std::vector<VmRecord> vms = snapshot_by_name();
  const std::vector<GuestJoin> joins = joins_ ? joins_->joins() : std::vector<GuestJoin>{};
  return report_groups(vms, GroupSources{*groups_, joins, *limits_});
}

Selection EmbeddedDirectory::select(const Target& target) const {
  Selection selection;
  if (!target.single_vm()) {
    if (target.kind == Target::Kind::host_vm) {
      selection.status = Selection::Status::unsupported;
      return selection;
    }
    return resolve(target).selection();
  }
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

std::optional<VmRecord> EmbeddedDirectory::by_cid(std::uint32_t cid) const {
  std::lock_guard lock(mutex_);
  auto [first, last] = index_.uuid_by_cid.equal_range(cid);
  if (first == last || std::next(first) != last) return std::nullopt;
  return index_.by_uuid.find(first->second)->second;
}

std::vector<VmRecord> EmbeddedDirectory::snapshot() const {
  std::lock_guard lock(mutex_);
  std::vector<VmRecord> out;
  out.reserve(index_.by_uuid.size());
  for (const auto& [uuid, vm] : index_.by_uuid)
    out.push_back(vm);
  return out;
}

// A group's members are listed in name order, as an operator reads them.
std::vector<VmRecord> EmbeddedDirectory::snapshot_by_name() const {
  std::vector<VmRecord> vms = snapshot();
  std::ranges::sort(vms, [](const VmRecord& a, const VmRecord& b) {
    return std::tie(a.name, a.uuid) < std::tie(b.name, b.uuid);
  });
  return vms;
}

std::size_t EmbeddedDirectory::size() const {
  std::lock_guard lock(mutex_);
  return index_.by_uuid.size();
}

Directory::ObserverId EmbeddedDirectory::observe(Observer observer) {
  std::lock_guard lock(observers_mutex_);
  const ObserverId id = next_observer_++;
  observers_.emplace_back(id, std::move(observer));
  return id;
}

void EmbeddedDirectory::unobserve(ObserverId id) {
  std::lock_guard lock(observers_mutex_);
  std::erase_if(observers_, [id](const auto& entry) { return entry.first == id; });
}

void EmbeddedDirectory::notify(const DirectoryChange& change) {
  std::lock_guard lock(observers_mutex_);
  for (const auto& [id, observer] : observers_)
    observer(change);
}

void EmbeddedDirectory::insert_into(Index& index, VmRecord vm) const {
  vm.uuid = to_lower(vm.uuid);
  vm.host = host_;
  erase_from(index, vm.uuid);  // drops the old name and CID too, when they changed
  index.uuid_by_name.emplace(vm.name, vm.uuid);
  if (vm.cid) index.uuid_by_cid.emplace(*vm.cid, vm.uuid);
  std::string uuid = vm.uuid;
  index.by_uuid.emplace(std::move(uuid), std::move(vm));
}

void EmbeddedDirectory::erase_from(Index& index, const std::string& uuid) {
  auto it = index.by_uuid.find(uuid);
  if (it == index.by_uuid.end()) return;
  erase_entry(index.uuid_by_name, it->second.name, uuid);
  if (it->second.cid) erase_entry(index.uuid_by_cid, *it->second.cid, uuid);
  index.by_uuid.erase(it);
}

}  // namespace vmgate::hostd
