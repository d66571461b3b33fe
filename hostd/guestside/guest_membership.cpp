#include "hostd/guestside/guest_membership.hpp"

#include <fmt/format.h>

namespace vmgate::hostd {
namespace {

// The store says why in words; the preamble's token says which kind of
// refusal in one (the store's wording is pinned by guest_membership_test).
GuestAnswer refusal_of(const std::string& reason) {
  if (reason.find("is not joinable") != std::string::npos)
    return GuestAnswer{403, "not-joinable", reason};
  if (reason.find("may not join") != std::string::npos)
    return GuestAnswer{403, "not-allowed", reason};
  if (reason.find("not a group name") != std::string::npos)
    return GuestAnswer{400, "bad-group", reason};
  // The state file could not be written: nothing changed.
  return GuestAnswer{503, "not-recorded", reason};
}

}  // namespace

GuestAnswer change_membership(GroupMembership& store, const VmRecord& vm, preamble::Verb verb,
                              std::string_view group) {
  const bool joining = verb == preamble::Verb::join;
  auto changed = joining ? store.join(vm, group) : store.leave(vm.uuid, group);
  if (!changed) return refusal_of(changed.error());
  GuestAnswer ok;
  if (!*changed)
    ok.reason = joining ? fmt::format("vm {} was a member of {} already", vm.name, group)
                        : fmt::format("vm {} was not a member of {}", vm.name, group);
  return ok;
}

MembershipChange membership_change(GroupMembership& store) {
  return [&store](const VmRecord& vm, preamble::Verb verb, std::string_view group) {
    return change_membership(store, vm, verb, group);
  };
}

}  // namespace vmgate::hostd
