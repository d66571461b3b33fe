#include "hostd/guestside/guest_membership.hpp"

#include <fmt/format.h>

namespace vmgate::hostd {
namespace {

// The preamble's token says which kind of refusal in one word; the store's
// reason says why in words.
GuestAnswer refusal_of(MembershipRefusal refusal) {
  switch (refusal.kind) {
    case MembershipRefusal::Kind::bad_group:
      return GuestAnswer{400, "bad-group", std::move(refusal.reason)};
    case MembershipRefusal::Kind::not_joinable:
      return GuestAnswer{403, "not-joinable", std::move(refusal.reason)};
    case MembershipRefusal::Kind::not_allowed:
      return GuestAnswer{403, "not-allowed", std::move(refusal.reason)};
    case MembershipRefusal::Kind::not_recorded:
      break;
  }
  // The state file could not be written: nothing changed.
  return GuestAnswer{503, "not-recorded", std::move(refusal.reason)};
}

}  // namespace

GuestAnswer change_membership(GroupMembership& store, const VmRecord& vm, preamble::Verb verb,
                              std::string_view group) {
  const bool joining = verb == preamble::Verb::join;
  auto changed = joining ? store.join(vm, group) : store.leave(vm.uuid, group);
  if (!changed) return refusal_of(std::move(changed.error()));
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
