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
  VmIndex fresh;
  for (auto& vm : vms) {
    vm.host = host_;
    fresh.insert(std::move(vm));
  }
  {
    std::lock_guard lock(mutex_);
    std::swap(index_, fresh);
  }
  observers_.notify(DirectoryChange{.everything = true});
}

void EmbeddedDirectory::upsert(VmRecord vm) {
  DirectoryChange change{.uuids = {to_lower(vm.uuid)}};
  vm.host = host_;
  {
    std::lock_guard lock(mutex_);
    index_.insert(std::move(vm));
  }
  observers_.notify(change);
}

void EmbeddedDirectory::remove(std::string_view uuid) {
  DirectoryChange change{.uuids = {to_lower(uuid)}};
  {
    std::lock_guard lock(mutex_);
    index_.erase(change.uuids.front());
  }
  observers_.notify(change);
}

Lookup EmbeddedDirectory::find(std::string_view name_or_uuid) const {
  std::lock_guard lock(mutex_);
  return index_.find(name_or_uuid);
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
  return index_.by_cid(cid);
}

std::vector<VmRecord> EmbeddedDirectory::snapshot() const {
  std::lock_guard lock(mutex_);
  return index_.snapshot();
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
  return index_.size();
}

Directory::ObserverId EmbeddedDirectory::observe(Observer observer) {
  return observers_.add(std::move(observer));
}

void EmbeddedDirectory::unobserve(ObserverId id) {
  observers_.remove(id);
}

}  // namespace vmgate::hostd
