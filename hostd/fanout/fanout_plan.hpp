// Which VMs a fan-out request goes to, decided once at admission
// (docs/architecture.md, "Fan-out"): for each VM the directory selected,
// either a channel address to deliver to, or the result it has already —
// not running (never tried), refused by the ACL rules, or without a channel.
//
// The ACL rules decide per VM, as for a unicast request (authz/access_policy):
//  - a VM this client may reach is delivered to;
//  - a VM it may not reach but named itself in the target (by name or UUID)
//    is reported as a 403 part, under the name it wrote and without a UUID,
//    so it learns nothing it did not say;
//  - a VM it may not reach and did not name (it came in through a group, a
//    network or a range) is never revealed: no part, not in the summary,
//    not counted;
//  - when that leaves nothing, the whole request is refused 403, worded as
//    for a unicast target it may not reach.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/transport.hpp"
#include "hostd/authz/access_policy.hpp"
#include "hostd/config/hostd_config.hpp"
#include "hostd/directory/directory.hpp"
#include "hostd/fanout/fanout_result.hpp"
#include "hostd/identity/identity.hpp"
#include "hostd/route/target.hpp"

namespace vmgate::hostd {

struct FanoutMember {
  VmRecord vm;
  transport::Address address;       // when `settled` is empty: where its guestd is
  std::optional<VmResult> settled;  // known without trying
  // Runs on another host (vm.host) and is delivered through it: no address here.
  bool remote = false;
};

struct FanoutPlan {
  std::vector<FanoutMember> members;  // in the directory's order
  // The first allow (what the record says let the request through), else
  // the first denial (what the 403 for an empty plan carries).
  std::optional<AccessDecision> access;

  std::size_t to_deliver() const;  // not settled, here or on other hosts
};

// Whether a target is answered as a fan-out (a part per VM, a summary),
// whatever number of VMs it turns out to name: a group, a network, a range,
// a list, an exclusion. A single name or UUID (or HOST/NAME) is unicast.
bool names_many(const Target& target);

// The text the client wrote that names `vm` itself (its name or UUID, any
// case, or a range it falls in), as a target or a member of a list; empty
// when only a group or network brought it in, or `!ITEM` names it.
std::optional<std::string> named_as(const Target& target, const VmRecord& vm);

// `unknown`: names the target lists that no VM has (Selection::unknown),
// each a part of its own after the VMs': 404 not_found, or, for a client that
// could not reach a VM of that name, the 403 a denied VM it named gets, so
// that it cannot tell the two apart (as for a unicast target).
//
// `local_host` (cluster mode: this host's name): a running VM on another host
// is a `remote` member, delivered through that host.
//
// `decided`, when set, hears each VM's ACL decision, those the plan hides
// included: the operator's log names every decision; the caller learns only
// what it named.
using AccessObserver = std::function<void(const VmRecord& vm, const AccessDecision& decision)>;
FanoutPlan plan_fanout(std::vector<VmRecord> vms, const Target& target, const Identity& identity,
                       std::uint16_t port, const AccessPolicy& policy, const ChannelConfig& channel,
                       const std::vector<std::string>& unknown = {},
                       std::string_view local_host = {}, const AccessObserver& decided = {});

// The plan of a fan-out message another host sent (peer_server.hpp): the
// VMs it lists, which its sender resolved and admitted. Only this host's own
// VMs, named by UUID, are delivered to; a name, a UUID the directory does
// not place on `local_host`, or one listed twice is a not_found member
// (a message is never forwarded again); one not running is not_running.
FanoutPlan plan_peer_fanout(const std::vector<std::string>& vms, const Directory& directory,
                            std::string_view local_host, const ChannelConfig& channel);

}  // namespace vmgate::hostd
