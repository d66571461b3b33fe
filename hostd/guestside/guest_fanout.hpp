// A guest's SEND that names many VMs (a group, list, range or network),
// delivered by hostd/fanout as a client's is (guest_session.cpp).
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include <boost/system/result.hpp>

#include "common/asio.hpp"
#include "hostd/fanout/fanout_plan.hpp"
#include "hostd/guestside/guest_session.hpp"
#include "hostd/route/target.hpp"

namespace vmgate::hostd::guestside {

// Which of the VMs the caller may reach, decided per VM as for a client's
// fan-out (fanout_plan.hpp: a VM it may not reach and did not name is never
// revealed), each decision logged. A refusal of the whole SEND is worded
// from what the guest wrote, as for a unicast target.
using Planned = boost::system::result<FanoutPlan, GuestAnswer>;

Planned plan_guest_fanout(const VmRecord& caller, const Target& target,
                          std::optional<std::uint16_t> port, std::string_view form,
                          const RunningConfig& running, const GuestServices& services,
                          std::string_view request_id);

// After the 200 to the SEND: the guest's one HTTP request, its head read
// here (the caller's claims of who it is dropped, X-VM-Uuid set), then the
// fan-out delivers it to every VM of the plan and streams the parts back,
// exactly as for a client; the connection closes after it.
awaitable<void> send_to_many(Stream stream, std::string_view leftover, const VmRecord& caller,
                             const Target& target, std::uint16_t port, const FanoutPlan& plan,
                             const RunningConfig& running, const GuestServices& services,
                             std::string_view request_id, std::uint64_t id);

}  // namespace vmgate::hostd::guestside
