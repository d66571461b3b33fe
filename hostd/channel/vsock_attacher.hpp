// The seam through which a channel is formed on demand (channel_on_demand.hpp):
// something that can give a running domain a vsock device. The libvirt
// inventory is the one implementation; tests put a stand-in behind it.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include <boost/system/result.hpp>

namespace vmgate::hostd {

// The CID the domain's live XML shows after the attach (none when libvirt
// assigned none), or why there is no device: libvirt's own reason.
using VsockAttachOutcome = boost::system::result<std::optional<std::uint32_t>, std::string>;

class VsockAttacher {
 public:
  virtual ~VsockAttacher() = default;
  // Attaches <vsock model='virtio'><cid auto='yes'/></vsock> to the live
  // domain `uuid`, unless its live XML has a vsock device already; records
  // the domain as then re-read in the directory; and calls `done` exactly
  // once, on any thread, after the directory has it.
  virtual void attach_vsock(const std::string& uuid,
                            std::function<void(VsockAttachOutcome)> done) = 0;
};

}  // namespace vmgate::hostd
