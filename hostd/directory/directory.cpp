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
  // Built and later freed outside the lock: at thousands of VMs that is
  // milliseconds during which every lookup of a request would wait.
  Index fresh;
  for (auto& vm : vms)
    insert_into(fresh, std::move(vm));
  {
    std::lock_guard lock(mutex_);
    std::swap(index_, fresh);
  }
}

void Directory::upsert(VmRecord vm) {
  std::lock_guard lock(mutex_);
  insert_into(index_, std::move(vm));
}

void Directory::remove(std::string_view uuid) {
  std::lock_guard lock(mutex_);
  erase_from(index_, to_lower(uuid));
}

Lookup Directory::find(std::string_view name_or_uuid) const {
  std::lock_guard lock(mutex_);
  // An exact name and a UUID (any case) are equally valid answers; if they
  // point at different VMs, saying so beats guessing.
  std::set<std::string> uuids;
  auto [first, last] = index_.uuid_by_name.equal_range(name_or_uuid);
  for (auto it = first; it != last; ++it)
    uuids.insert(it->second);
  if (index_.by_uuid.contains(to_lower(name_or_uuid))) uuids.insert(to_lower(name_or_uuid));
  // Host names (DNS form, TLS SNI) arrive case-folded; fall back to a name
  // match ignoring case only when nothing matched exactly.
  if (uuids.empty()) {
    for (const auto& [name, uuid] : index_.uuid_by_name) {
      if (equal_ignoring_case(name, name_or_uuid)) uuids.insert(uuid);
    }
  }

  Lookup result;
  if (uuids.empty()) return result;
  if (uuids.size() == 1) {
    result.status = LookupStatus::found;
    result.vm = index_.by_uuid.find(*uuids.begin())->second;
    return result;
  }
  result.status = LookupStatus::ambiguous;
  for (const auto& uuid : uuids) {
    const VmRecord& vm = index_.by_uuid.find(uuid)->second;
    result.candidates.push_back(vm.name + " (" + vm.uuid + ")");
  }
  return result;
}

std::vector<VmRecord> Directory::snapshot() const {
  std::lock_guard lock(mutex_);
  std::vector<VmRecord> out;
  out.reserve(index_.by_uuid.size());
  for (const auto& [uuid, vm] : index_.by_uuid)
    out.push_back(vm);
  return out;
}

std::size_t Directory::size() const {
  std::lock_guard lock(mutex_);
  return index_.by_uuid.size();
}

void Directory::insert_into(Index& index, VmRecord vm) {
  vm.uuid = to_lower(vm.uuid);
  erase_from(index, vm.uuid);  // drops the old name too, when the VM was renamed
  index.uuid_by_name.emplace(vm.name, vm.uuid);
  std::string uuid = vm.uuid;
  index.by_uuid.emplace(std::move(uuid), std::move(vm));
}

void Directory::erase_from(Index& index, const std::string& uuid) {
  auto it = index.by_uuid.find(uuid);
  if (it == index.by_uuid.end()) return;
  auto [first, last] = index.uuid_by_name.equal_range(it->second.name);
  for (auto name_it = first; name_it != last; ++name_it) {
    if (name_it->second == uuid) {
      index.uuid_by_name.erase(name_it);
      break;
    }
  }
  index.by_uuid.erase(it);
}

}  // namespace vmgate::hostd
