// JOIN and LEAVE from a guest, for the VM its connection's arrival names,
// through the group-membership store (hostd/directory/group_membership.hpp):
// only groups [groups.joinable] lists, and only by the VMs it lets; each
// change written to the state file before it is answered.
#pragma once

#include "hostd/directory/group_membership.hpp"
#include "hostd/guestside/guest_session.hpp"

namespace vmgate::hostd {

// The answer to a guest's JOIN or LEAVE of `group`, made on `store`.
GuestAnswer change_membership(GroupMembership& store, const VmRecord& vm, preamble::Verb verb,
                              std::string_view group);

// What GuestServices calls for JOIN and LEAVE; `store` outlives it.
MembershipChange membership_change(GroupMembership& store);

}  // namespace vmgate::hostd
