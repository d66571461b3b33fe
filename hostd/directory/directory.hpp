// The embedded directory: the one place that answers "where is this VM".
// Fed by the libvirt inventory (its own thread) and read by request
// coroutines, so every member is safe to call from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace vmgate::hostd {

// libvirt's virDomainState, reduced to what routing needs.
enum class VmState { running, paused, shut_off, crashed, suspended, other };
std::string_view state_name(VmState state);

struct VmRecord {
  std::string uuid;  // lower-case, with dashes
  std::string name;
  std::optional<std::uint32_t> cid;  // /domain/devices/vsock/cid/@address
  VmState state = VmState::other;
  std::vector<std::string> networks;  // libvirt networks of its interfaces
  std::vector<std::string> groups;    // <vmgate:groups> metadata

  friend bool operator==(const VmRecord&, const VmRecord&) = default;
};

enum class LookupStatus { found, not_found, ambiguous };

struct Lookup {
  LookupStatus status = LookupStatus::not_found;
  std::optional<VmRecord> vm;           // when found
  std::vector<std::string> candidates;  // when ambiguous: "name (uuid)"
};

class Directory {
 public:
  // A full resynchronisation (start-up, libvirt reconnect).
  void replace_all(std::vector<VmRecord> vms);
  void upsert(VmRecord vm);
  void remove(std::string_view uuid);

  // By libvirt name or UUID (any case). A name that equals another VM's UUID
  // is ambiguous rather than silently picking one. When nothing matches
  // exactly, a name is matched ignoring case (DNS names arrive case-folded);
  // several such matches are ambiguous too.
  Lookup find(std::string_view name_or_uuid) const;

  std::vector<VmRecord> snapshot() const;
  std::size_t size() const;

 private:
  struct Index {
    std::map<std::string, VmRecord, std::less<>> by_uuid;  // key: lower-case UUID
    // libvirt keeps names unique per host, but events can briefly show a new
    // domain before the old one with the same name is gone: several entries.
    std::multimap<std::string, std::string, std::less<>> uuid_by_name;
  };
  static void insert_into(Index& index, VmRecord vm);
  static void erase_from(Index& index, const std::string& uuid);

  mutable std::mutex mutex_;
  Index index_;
};

}  // namespace vmgate::hostd
