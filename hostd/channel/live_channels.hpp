// The channels in use right now, by exchanges and tunnels, each under the key
// it was opened for (ChannelKey: the VM's UUID, name and CID, the agent port),
// so that when the directory sees a VM stop, vanish or take a new CID, every
// channel to its old self is closed at once (docs/architecture.md, "When a VM
// goes away"). Without this a stopped VM's exchanges and tunnels would wait
// for the transport to notice, and a VM's guestd that outlives it (a test
// stand-in, a unix-socket transport) would let them finish as if nothing
// happened.
//
// An exchange or tunnel holds a ChannelWatch while it uses a channel. The
// libvirt thread decides which channels must go (revoke_if); each is closed
// on its own socket's I/O thread, the only thread that may touch it, so what
// was waiting on it ends with operation_aborted and its client is cut, never
// answered as if the response were whole.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "common/asio.hpp"
#include "hostd/channel/channel.hpp"

namespace vmgate::hostd {

class ChannelWatch;

class LiveChannels {
 public:
  // Why a channel opened for a key no longer leads to its VM ("vm NAME is
  // shut_off"), or nothing when it still does.
  using GoneCheck = std::function<std::optional<std::string>(const ChannelKey&)>;

  // `gone` is asked once for every channel as it is watched: a VM that
  // stopped while its request waited for a channel is caught there, since
  // its revocation ran before the channel was watched.
  explicit LiveChannels(GoneCheck gone);
  ~LiveChannels();
  LiveChannels(const LiveChannels&) = delete;
  LiveChannels& operator=(const LiveChannels&) = delete;

  // Closes, each on its own I/O thread, every watched channel for which
  // `gone` gives a reason; returns how many were found. Callable from any
  // thread; `gone` runs under the registry's lock and must be quick.
  std::size_t revoke_if(const GoneCheck& gone);

  std::size_t watched() const;
  std::uint64_t revoked() const { return revoked_.load(); }

 private:
  friend class ChannelWatch;
  struct State;
  void add(ChannelWatch& watch);
  void remove(ChannelWatch& watch);
  // On the channel's own thread.
  static void close(ChannelWatch& watch, std::string why);

  GoneCheck gone_;
  std::shared_ptr<State> state_;
  std::atomic<std::uint64_t> revoked_{0};
};

// One channel in use, watched for as long as this lives: construct it on the
// channel's own I/O thread once the channel is open, and let it end before
// the channel is moved or closed. With no registry (null) it watches nothing.
// What waits on `client` (the client's socket, on the same thread) is
// cancelled with the close: an exchange waiting to write to a client that
// reads slowly, or not at all, ends now too, not at its idle timeout.
class ChannelWatch {
 public:
  ChannelWatch(LiveChannels* channels, const ChannelKey& key, Stream& stream,
               Stream* client = nullptr);
  ~ChannelWatch();
  ChannelWatch(const ChannelWatch&) = delete;
  ChannelWatch& operator=(const ChannelWatch&) = delete;

  // Whether the channel was closed because its VM went away, and why. Read
  // on the channel's thread, like every change to them.
  bool revoked() const { return revoked_; }
  const std::string& why() const { return why_; }

 private:
  friend class LiveChannels;
  LiveChannels* const channels_;
  const ChannelKey& key_;
  Stream& stream_;
  Stream* const client_;
  std::uint64_t serial_ = 0;  // tells this watch from a later one at the same address
  bool revoked_ = false;
  std::string why_;
};

}  // namespace vmgate::hostd
