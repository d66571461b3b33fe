// Forming a channel on demand (libvirt.attach_vsock_on_demand): a request
// for a running domain without a vsock device makes hostd attach one
// (VsockAttacher), and the request proceeds once the directory has the CID
// libvirt assigned and guestd answers on it (docs/architecture.md, "Channel
// on demand").
//
// At most one attach is in flight per domain: a request that finds one
// under way waits for its outcome instead of asking libvirt again, from
// whichever I/O thread it runs on. Each waits at most `attach_timeout`.
// An attach that failed is remembered for `retry_after`: the requests for
// that domain meanwhile get its 503 at once, and libvirt is not asked.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <boost/system/result.hpp>

#include "common/asio.hpp"
#include "hostd/channel/vsock_attacher.hpp"
#include "hostd/config/hostd_config.hpp"
#include "hostd/directory/directory.hpp"
#include "hostd/refusal.hpp"

namespace vmgate::hostd {

// Whether a channel to `vm` needs a vsock device it does not have: the
// transport template names the CID, and the directory knows none.
bool needs_vsock_device(const ChannelConfig& config, const VmRecord& vm);

class ChannelOnDemand {
 public:
  ChannelOnDemand(VsockAttacher& attacher, std::chrono::milliseconds attach_timeout,
                  std::chrono::milliseconds retry_after);
  ChannelOnDemand(const ChannelOnDemand&) = delete;
  ChannelOnDemand& operator=(const ChannelOnDemand&) = delete;

  // Gives `vm` a vsock device, or joins the attach already under way for it.
  // The CID libvirt assigned; else 503 with libvirt's reason, with the fact
  // that it assigned no CID, or with how long libvirt took; or, within
  // retry_after of a failed attach, that failure's 503 and when it was.
  awaitable<boost::system::result<std::uint32_t, Refusal>> attach(const VmRecord& vm);

  // Attaches asked of libvirt so far (not the requests that joined one).
  std::uint64_t attaches() const;

 private:
  using clock = std::chrono::steady_clock;
  struct Waiter;
  struct Failure {
    clock::time_point at;
    VsockAttachOutcome outcome;  // an error, or no CID
  };
  void finish(const std::string& uuid, const VsockAttachOutcome& outcome);

  VsockAttacher& attacher_;
  const std::chrono::milliseconds attach_timeout_;
  const std::chrono::milliseconds retry_after_;
  mutable std::mutex mutex_;
  // Each domain whose attach is in flight, with the requests waiting for it
  // (none, when all have given up: a new request still waits for that attach).
  std::map<std::string, std::vector<std::shared_ptr<Waiter>>> in_flight_;
  // Domains whose last attach failed less than retry_after_ ago (older ones
  // are dropped as failures are added).
  std::map<std::string, Failure> failed_;
  std::uint64_t attaches_ = 0;
};

}  // namespace vmgate::hostd
