// What every directory backend keeps of the VMs it routes to, and how it
// finds them: by lower-case UUID, by name (several VMs may briefly share
// one, as libvirt events show a new domain before the old one is gone),
// and by CID. Not locked: the directory that owns one guards it. Its
// observers are kept beside it (DirectoryObservers), with their own lock,
// so that notifying never holds the index's.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "hostd/directory/directory.hpp"

namespace vmgate::hostd {

class VmIndex {
 public:
  // `vm` under its UUID (lower-cased here), replacing what was there, its
  // old name and CID too; its CID is indexed only if `with_cid`.
  void insert(VmRecord vm, bool with_cid = true);
  void erase(const std::string& uuid);

  // An exact name and a UUID (any case) alike; then a name ignoring case
  // (DNS names and TLS SNI arrive case-folded). Several VMs: ambiguous,
  // listed in UUID order.
  Lookup find(std::string_view name_or_uuid) const;
  // The one VM holding `cid`: none when two do (a restore in progress).
  std::optional<VmRecord> by_cid(std::uint32_t cid) const;
  std::vector<VmRecord> snapshot() const;  // in UUID order
  std::size_t size() const { return by_uuid_.size(); }
  const std::map<std::string, VmRecord, std::less<>>& by_uuid() const { return by_uuid_; }

 private:
  std::map<std::string, VmRecord, std::less<>> by_uuid_;
  std::multimap<std::string, std::string, std::less<>> uuid_by_name_;
  std::multimap<std::uint32_t, std::string> uuid_by_cid_;
};

// Directory::observe for a backend: called in order, on the thread that
// changed the directory, after the change.
class DirectoryObservers {
 public:
  Directory::ObserverId add(Directory::Observer observer);
  void remove(Directory::ObserverId id);
  void notify(const DirectoryChange& change);

 private:
  std::mutex mutex_;
  std::vector<std::pair<Directory::ObserverId, Directory::Observer>> observers_;
  Directory::ObserverId next_ = 1;
};

}  // namespace vmgate::hostd
