#include "hostd/directory/vm_index.hpp"

#include <algorithm>

#include "hostd/directory/name_index.hpp"

namespace vmgate::hostd {

void VmIndex::insert(VmRecord vm, bool with_cid) {
  vm.uuid = to_lower(vm.uuid);
  erase(vm.uuid);  // drops the old name and CID too, when they changed
  uuid_by_name_.emplace(vm.name, vm.uuid);
  if (vm.cid && with_cid) uuid_by_cid_.emplace(*vm.cid, vm.uuid);
  std::string uuid = vm.uuid;
  by_uuid_.emplace(std::move(uuid), std::move(vm));
}

void VmIndex::erase(const std::string& uuid) {
  auto it = by_uuid_.find(uuid);
  if (it == by_uuid_.end()) return;
  erase_entry(uuid_by_name_, it->second.name, uuid);
  if (it->second.cid) erase_entry(uuid_by_cid_, *it->second.cid, uuid);
  by_uuid_.erase(it);
}

Lookup VmIndex::find(std::string_view name_or_uuid) const {
  // The matches are keys of the index, named without copying them (one
  // lookup per request).
  std::vector<const std::string*> uuids;
  auto add = [&uuids](const std::string& uuid) {
    if (std::ranges::none_of(uuids, [&](const std::string* u) { return *u == uuid; }))
      uuids.push_back(&uuid);
  };
  auto [first, last] = uuid_by_name_.equal_range(name_or_uuid);
  for (auto it = first; it != last; ++it)
    add(it->second);
  if (auto it = by_uuid_.find(to_lower(name_or_uuid)); it != by_uuid_.end()) add(it->first);
  if (uuids.empty()) {
    for (const auto& [name, uuid] : uuid_by_name_)
      if (equal_ignoring_case(name, name_or_uuid)) add(uuid);
  }
  std::ranges::sort(uuids, [](const std::string* a, const std::string* b) { return *a < *b; });

  Lookup result;
  if (uuids.empty()) return result;
  if (uuids.size() == 1) {
    result.status = LookupStatus::found;
    result.vm = by_uuid_.find(*uuids.front())->second;
    return result;
  }
  result.status = LookupStatus::ambiguous;
  for (const std::string* uuid : uuids) {
    const VmRecord& vm = by_uuid_.find(*uuid)->second;
    result.candidates.push_back(vm.name + " (" + vm.uuid + ")");
  }
  return result;
}

std::optional<VmRecord> VmIndex::by_cid(std::uint32_t cid) const {
  auto [first, last] = uuid_by_cid_.equal_range(cid);
  if (first == last || std::next(first) != last) return std::nullopt;
  return by_uuid_.find(first->second)->second;
}

std::vector<VmRecord> VmIndex::snapshot() const {
  std::vector<VmRecord> out;
  out.reserve(by_uuid_.size());
  for (const auto& [uuid, vm] : by_uuid_)
    out.push_back(vm);
  return out;
}

Directory::ObserverId DirectoryObservers::add(Directory::Observer observer) {
  std::lock_guard lock(mutex_);
  const Directory::ObserverId id = next_++;
  observers_.emplace_back(id, std::move(observer));
  return id;
}

void DirectoryObservers::remove(Directory::ObserverId id) {
  std::lock_guard lock(mutex_);
  std::erase_if(observers_, [id](const auto& entry) { return entry.first == id; });
}

void DirectoryObservers::notify(const DirectoryChange& change) {
  std::lock_guard lock(mutex_);
  for (const auto& [id, observer] : observers_)
    observer(change);
}

}  // namespace vmgate::hostd
