// What follows a VM leaving: when the directory sees a VM stop, crash,
// vanish (undefined, or absent from a resynchronisation after libvirtd came
// back) or take another name or CID, the channels opened to its old self are
// closed, those in use (LiveChannels: their exchanges and tunnels are cut)
// and the idle ones in the pool, so none of them outlives the VM it led to
// (docs/architecture.md, "When a VM goes away").
//
// A paused or PM-suspended VM keeps its channels: its connections survive
// the pause, and cutting them would turn a snapshot's brief pause into failed
// transfers. New requests to it are refused meanwhile (admission: 503).
#pragma once

#include <optional>
#include <string>

#include "hostd/channel/channel.hpp"
#include "hostd/channel/channel_pool.hpp"
#include "hostd/channel/live_channels.hpp"
#include "hostd/directory/directory.hpp"

namespace vmgate::hostd {

// Why a channel opened for `key` no longer leads to its VM, given what the
// directory holds for the key's UUID now (null: nothing), or nothing when it
// still does.
std::optional<std::string> channel_gone(const ChannelKey& key, const VmRecord* now);

// The same, asking `directory` (for LiveChannels' check of a new watch).
std::optional<std::string> channel_gone(const ChannelKey& key, const Directory& directory);

// Observes `directory` from construction to destruction. `pool` may be null.
class ChannelRevoker {
 public:
  ChannelRevoker(Directory& directory, LiveChannels& live, ChannelPool* pool);
  ~ChannelRevoker();
  ChannelRevoker(const ChannelRevoker&) = delete;
  ChannelRevoker& operator=(const ChannelRevoker&) = delete;

 private:
  void changed(const DirectoryChange& change);

  Directory& directory_;
  LiveChannels& live_;
  ChannelPool* pool_;
  Directory::ObserverId observer_ = 0;
};

}  // namespace vmgate::hostd
