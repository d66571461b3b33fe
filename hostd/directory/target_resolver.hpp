// Resolving a target that names many VMs (docs/architecture.md, "Targets and
// groups"): a pure function of a directory snapshot, the config's groups and
// the guests' joins, so that any directory backend (the embedded one here,
// a cluster one later) resolves exactly alike.
//
// Groups nest: a config group may name VMs, ranges, networks and groups; a
// VM's <vmgate:groups> metadata and a guest's join add that VM alone.
// Resolution is de-duplicated (a VM's first rule is the one shown), refuses
// a cycle or nesting past fanout.max_group_depth with a 400 naming the path,
// and never expands partially: any refusal refuses the whole target.
// Exclusion always wins, whatever order the list is written in.
#pragma once

#include <string>
#include <vector>

#include "hostd/config/hostd_config.hpp"
#include "hostd/directory/directory.hpp"
#include "hostd/route/target.hpp"

namespace vmgate::hostd {

// A guest's membership of a group (directory/group_membership.hpp).
struct GuestJoin {
  std::string uuid;  // lower-case
  std::string group;
  friend bool operator==(const GuestJoin&, const GuestJoin&) = default;
};

// What groups are made of, besides each VM's own metadata.
struct GroupSources {
  const GroupsConfig& config;
  const std::vector<GuestJoin>& joins;
  const FanoutConfig& limits;
};

Resolution resolve_target(const Target& target, const std::vector<VmRecord>& vms,
                          const GroupSources& sources);

// Every group named by the config, a VM's metadata or a join, by name.
std::vector<GroupReport> report_groups(const std::vector<VmRecord>& vms,
                                       const GroupSources& sources);

}  // namespace vmgate::hostd
