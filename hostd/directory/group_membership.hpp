// Guests' group joins (docs/architecture.md, "Targets and groups"): which
// VMs joined which groups through guestd's JOIN, kept in the embedded
// directory's state file so that they survive a restart of hostd.
//
// Only groups [groups.joinable] lists may be joined, and only by the VMs it
// lets (name globs or UUIDs). The caller names the VM from what hostd knows
// of the channel (the peer CID), never from what the guest says. Each change
// is written to the state file before it is answered (temp file, fsync,
// rename), so an answered JOIN is never lost; a VM the directory no longer
// knows (undefined) loses its joins.
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/system/result.hpp>

#include "hostd/config/hostd_config.hpp"
#include "hostd/directory/directory.hpp"
#include "hostd/directory/target_resolver.hpp"

namespace vmgate::hostd {

// Why a join or leave changed nothing: the kind for whoever answers the
// guest, the words for the guest and the log.
struct MembershipRefusal {
  enum class Kind { bad_group, not_joinable, not_allowed, not_recorded };
  Kind kind;
  std::string reason;
};

class GroupMembership {
 public:
  // Reads `state_file`; a missing file is an empty store. One that cannot
  // be read or is not a state file is an error naming it.
  static boost::system::result<std::unique_ptr<GroupMembership>, std::string> open(
      std::string state_file, std::vector<JoinableGroup> joinable);
  ~GroupMembership();
  GroupMembership(const GroupMembership&) = delete;
  GroupMembership& operator=(const GroupMembership&) = delete;

  // true: the VM joined (left); false: it already was (was not) a member.
  // not_recorded: the state file could not be written, and nothing changed.
  boost::system::result<bool, MembershipRefusal> join(const VmRecord& vm, std::string_view group);
  boost::system::result<bool, MembershipRefusal> leave(std::string_view vm_uuid,
                                                       std::string_view group);
  // Drops every join of a VM that is gone.
  void forget(std::string_view vm_uuid);

  std::vector<GuestJoin> joins() const;
  const std::string& state_file() const { return state_file_; }

  // From now on a VM `directory` no longer knows loses its joins; until
  // the store is destroyed.
  void follow(Directory& directory);
  // Stops following, for a directory that goes before the store does.
  void unfollow();

 private:
  GroupMembership(std::string state_file, std::vector<JoinableGroup> joinable)
      : state_file_(std::move(state_file)), joinable_(std::move(joinable)) {}
  // Writes `joins` to the state file atomically; the reason when it could not.
  boost::system::result<void, std::string> save(const std::vector<GuestJoin>& joins) const;
  void forget_unknown(const Directory& directory, const DirectoryChange& change);

  const std::string state_file_;
  const std::vector<JoinableGroup> joinable_;
  mutable std::mutex mutex_;
  std::vector<GuestJoin> joins_;  // in the order joined
  Directory* followed_ = nullptr;
  Directory::ObserverId observer_ = 0;
};

}  // namespace vmgate::hostd
