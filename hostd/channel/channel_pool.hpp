// Idle channels kept across client connections, so a request does not pay for
// a transport connect, a preamble round trip and guestd's agent connect when
// an earlier request to the same VM and port left a channel open.
//
// A channel is only valid for the address it was opened to: entries are keyed
// on everything the transport template can use (uuid, name, CID) plus the
// agent port, so a VM restarted with a new CID (or renamed) never receives a
// channel to its old self. Entries live at most `idle_timeout` and are checked
// with a peek before use; a sweep closes expired and dead ones even when no
// request comes, so a stopped VM leaves no descriptors behind.
//
// One pool for the whole hostd, behind a mutex, rather than one per I/O
// thread: every I/O thread accepts, so a client's next connection may land on
// either, and per-thread pools would split the idle channels of one VM into
// parts that cannot serve each other (at low request rates, never). The
// critical section is a hash lookup and a vector push or pop: the liveness
// check of an entry (a recv(MSG_PEEK), a system call) is made outside it, so
// the lock is rarely contended.
// Each I/O thread runs its own io_context, and a socket belongs to the reactor
// of the context it was opened on: take() moves a channel opened on another
// thread to the taker's context (two epoll_ctl calls), so that its I/O does
// not complete on one thread only to be handed to another for every read.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/asio.hpp"
#include "hostd/channel/channel.hpp"
#include "hostd/config/hostd_config.hpp"

namespace vmgate::hostd {

struct ChannelKeyHash {
  std::size_t operator()(const ChannelKey& key) const noexcept;
};

// Read by the metrics at scrape time; written under the pool's lock.
struct ChannelPoolStats {
  std::atomic<std::uint64_t> idle{0};
  std::atomic<std::uint64_t> taken{0};
  std::atomic<std::uint64_t> expired{0};  // idle longer than idle_timeout
  std::atomic<std::uint64_t> closed{0};   // the peer closed it (or sent bytes) while idle
  std::atomic<std::uint64_t> full{0};     // returned when max_idle were already idle
  std::atomic<std::uint64_t> evicted{0};  // closed to make room for another port of its VM
  std::atomic<std::uint64_t> revoked{0};  // closed because their VM went away
};

class ChannelPool {
 public:
  using clock = std::chrono::steady_clock;

  ChannelPool(asio::any_io_executor executor, const ChannelConfig& config);
  ~ChannelPool();
  ChannelPool(const ChannelPool&) = delete;
  ChannelPool& operator=(const ChannelPool&) = delete;

  bool enabled() const { return max_idle_ > 0; }
  std::chrono::milliseconds idle_timeout() const { return idle_timeout_; }

  // A live channel for `key`, if any, on `executor`: the most recently
  // returned one of those already on `executor`'s context, else of all.
  std::optional<Channel> take(const ChannelKey& key, const asio::any_io_executor& executor,
                              clock::time_point now = clock::now());
  // Keeps a channel whose last exchange ended cleanly, with nothing unread on
  // it, under its key; closes it instead when the pool is full for its key.
  // Whether it is still alive is asked when it is taken.
  void put(Channel channel, clock::time_point now = clock::now());
  // Closes the longest idle channel of one VM (any agent port), to make room
  // for a channel to another port of it; false when it has none idle.
  bool evict_one(const std::string& uuid);
  // Closes every idle channel whose key `gone` gives a reason for (its VM
  // stopped, vanished or took a new CID: channel_revoker.hpp); returns how
  // many. Callable from any thread; `gone` runs under the pool's lock.
  std::size_t drop_if(const std::function<std::optional<std::string>(const ChannelKey&)>& gone);
  // Closes expired and dead entries; the periodic sweep calls it.
  void sweep(clock::time_point now = clock::now());

  std::size_t idle() const;
  const ChannelPoolStats& stats() const { return stats_; }

 private:
  struct Entry {
    Channel channel;
    clock::time_point since;
  };
  void arm_sweep();

  const std::size_t max_idle_;
  const std::chrono::milliseconds idle_timeout_;
  mutable std::mutex mutex_;
  std::unordered_map<ChannelKey, std::vector<Entry>, ChannelKeyHash> idle_;
  ChannelPoolStats stats_;
  asio::steady_timer sweep_timer_;
  // The sweep's handler may still be queued when the pool goes away.
  std::shared_ptr<ChannelPool*> self_;
};

// Whether an idle channel is still usable: open, and nothing unread on it (an
// idle agent has nothing to say; bytes or EOF mean it is closing or broken).
bool idle_channel_usable(Stream& stream);

}  // namespace vmgate::hostd
