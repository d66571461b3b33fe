// Opening a channel to a VM's guestd: transport connect, preamble, answer.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/asio.hpp"
#include "common/transport.hpp"
#include "hostd/config/hostd_config.hpp"
#include "hostd/directory/directory.hpp"
#include "hostd/refusal.hpp"

namespace vmgate::hostd {

struct Channel {
  Stream stream;
  std::string leftover;   // bytes the agent sent right after guestd's answer
  std::string transport;  // for logs
};

// The transport that reaches this VM's guestd, from the configured template.
boost::system::result<transport::Address, Refusal> channel_address(const ChannelConfig& config,
                                                                   const VmRecord& vm);

// Connects, sends `VMGATE/1 CONNECT port`, and waits for guestd's answer,
// all within config.connect_timeout. Refusals map guestd's answer and
// transport errors to the status the client should see (502/503/504/403).
awaitable<boost::system::result<Channel, Refusal>> open_channel(const ChannelConfig& config,
                                                                const VmRecord& vm,
                                                                std::uint16_t port,
                                                                std::string_view client,
                                                                std::string_view request_id);

}  // namespace vmgate::hostd
