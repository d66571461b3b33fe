// Where a guest's SEND to one destination leads, connected (guest_session.cpp):
// a host service from [host_services], or another VM's agent port over its
// channel (or through the host that runs it) once an ACL rule allowed it.
// Every refusal is a GuestAnswer that says why.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <boost/beast/core/flat_buffer.hpp>
#include <boost/system/result.hpp>

#include "common/asio.hpp"
#include "common/transport.hpp"
#include "hostd/guestside/guest_session.hpp"
#include "hostd/route/target.hpp"

namespace vmgate::hostd::guestside {

// What a SEND reaches, connected and ready for the guest's bytes.
struct Upstream {
  Stream stream;
  // Bytes already read from it (a channel's agent bytes behind guestd's answer).
  boost::beast::flat_buffer buffer;
  std::string name;  // "host:monitor", "vm:web1:5986" for logs
  transport::Kind kind = transport::Kind::tcp;
};

using Reached = boost::system::result<Upstream, GuestAnswer>;

awaitable<Reached> reach_host_service(const VmRecord& caller, std::string_view service,
                                      const RunningConfig& running, std::string_view request_id);
awaitable<Reached> reach_vm(const VmRecord& caller, const Target& target,
                            std::optional<std::uint16_t> port, const RunningConfig& running,
                            const GuestServices& services, std::string_view request_id);

}  // namespace vmgate::hostd::guestside
