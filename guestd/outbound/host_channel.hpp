// A channel guestd opens to hostd for a guest app or a script: the transport
// connect to the host end ([outbound] hostd, CID 2 on a vsock guest), a
// preamble with a guest verb (`SEND target`, `JOIN group`, `LEAVE group`),
// and hostd's answer (docs/architecture.md, "Guest-originated traffic").
// hostd knows who is calling from where the connection arrives, so nothing
// here says which VM this is.
#pragma once

#include <string>

#include <boost/system/result.hpp>

#include "common/asio.hpp"
#include "common/preamble.hpp"
#include "guestd/config/guestd_config.hpp"

namespace vmgate::guestd {

struct HostChannel {
  Stream stream;
  std::string leftover;  // bytes hostd sent right behind its answer
};

// hostd's refusal, or why hostd could not be asked.
struct HostRefusal {
  unsigned status = 502;
  std::string token;   // "not-allowed", "hostd-unreachable", ...
  std::string reason;  // in words: hostd's Reason field, or the transport's error
};

// Connects, sends `request`, and reads the answer, within connect_timeout.
awaitable<boost::system::result<HostChannel, HostRefusal>> open_host_channel(
    const OutboundConfig& config, const preamble::Request& request);

}  // namespace vmgate::guestd
