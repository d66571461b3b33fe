#include "hostd/directory/directory.hpp"

#include <algorithm>
#include <cctype>
#include <set>

namespace vmgate::hostd {
namespace {

std::string to_lower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

bool equal_ignoring_case(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

}  // namespace

std::string_view state_name(VmState state) {
  switch (state) {
    case VmState::running:
      return "running";
    case VmState::paused:
      return "paused";
    case VmState::shut_off:
      return "shut_off";
    case VmState::crashed:
      return "crashed";
    case VmState::suspended:
      return "suspended";
    case VmState::other:
      return "other";
  }
  return "other";
}

void Directory::replace_all(std::vector<VmRecord> vms) {
  std::lock_guard lock(mutex_);
  by_uuid_.clear();
  uuid_by_name_.clear();
  for (auto& vm : vms)
    insert_locked(std::move(vm));
}

void Directory::upsert(VmRecord vm) {
  std::lock_guard lock(mutex_);
  insert_locked(std::move(vm));
}

void Directory::remove(std::string_view uuid) {
  std::lock_guard lock(mutex_);
  erase_locked(to_lower(uuid));
}

Lookup Directory::find(std::string_view name_or_uuid) const {
  std::lock_guard lock(mutex_);
  // An exact name and a UUID (any case) are equally valid answers; if they
  // point at different VMs, saying so beats guessing.
  std::set<std::string> uuids;
  auto [first, last] = uuid_by_name_.equal_range(name_or_uuid);
  for (auto it = first; it != last; ++it)
    uuids.insert(it->second);
  if (by_uuid_.contains(to_lower(name_or_uuid))) uuids.insert(to_lower(name_or_uuid));
  // Host names (DNS form, TLS SNI) arrive case-folded; fall back to a name
  // match ignoring case only when nothing matched exactly.
  if (uuids.empty()) {
    for (const auto& [name, uuid] : uuid_by_name_) {
      if (equal_ignoring_case(name, name_or_uuid)) uuids.insert(uuid);
    }
  }

  Lookup result;
  if (uuids.empty()) return result;
  if (uuids.size() == 1) {
    result.status = LookupStatus::found;
    result.vm = by_uuid_.find(*uuids.begin())->second;
    return result;
  }
  result.status = LookupStatus::ambiguous;
  for (const auto& uuid : uuids) {
    const VmRecord& vm = by_uuid_.find(uuid)->second;
    result.candidates.push_back(vm.name + " (" + vm.uuid + ")");
  }
  return result;
}

std::vector<VmRecord> Directory::snapshot() const {
  std::lock_guard lock(mutex_);
  std::vector<VmRecord> out;
  out.reserve(by_uuid_.size());
  for (const auto& [uuid, vm] : by_uuid_)
    out.push_back(vm);
  return out;
}

std::size_t Directory::size() const {
  std::lock_guard lock(mutex_);
  return by_uuid_.size();
}

void Directory::insert_locked(VmRecord vm) {
  vm.uuid = to_lower(vm.uuid);
  erase_locked(vm.uuid);  // drops the old name too, when the VM was renamed
  uuid_by_name_.emplace(vm.name, vm.uuid);
  std::string uuid = vm.uuid;
  by_uuid_.emplace(std::move(uuid), std::move(vm));
}

void Directory::erase_locked(const std::string& uuid) {
  auto it = by_uuid_.find(uuid);
  if (it == by_uuid_.end()) return;
  auto [first, last] = uuid_by_name_.equal_range(it->second.name);
  for (auto name_it = first; name_it != last; ++name_it) {
    if (name_it->second == uuid) {
      uuid_by_name_.erase(name_it);
      break;
    }
  }
  by_uuid_.erase(it);
}

}  // namespace vmgate::hostd
