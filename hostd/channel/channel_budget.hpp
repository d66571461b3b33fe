// How many HTTP channels each VM may have open (docs/architecture.md,
// "Channel"): in use by an exchange, idle in the pool, or private to a client
// connection. Every such channel carries a ChannelTicket from its opening to
// its close, so the count cannot drift. A request that finds its VM's
// channels all in use waits for one in a bounded queue, rather than opening
// channels until guestd refuses.
//
// CONNECT tunnels take no ticket: each is bound to one client connection for
// its life, so max_connections bounds them, and guestd's own limit covers both.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <boost/system/result.hpp>

#include "common/asio.hpp"
#include "hostd/channel/channel.hpp"
#include "hostd/config/hostd_config.hpp"
#include "hostd/directory/directory.hpp"
#include "hostd/refusal.hpp"

namespace vmgate::hostd {

// Read by the metrics at scrape time.
struct ChannelBudgetStats {
  std::atomic<std::uint64_t> open{0};      // channels holding a ticket
  std::atomic<std::uint64_t> private_{0};  // of those, private to a client connection
  std::atomic<std::uint64_t> waiting{0};   // requests waiting for a channel now
  std::atomic<std::uint64_t> waits_granted{0};
  std::atomic<std::uint64_t> waits_timed_out{0};
  std::atomic<std::uint64_t> waits_refused{0};  // the queue was full
};

class ChannelBudget {
 public:
  explicit ChannelBudget(const ChannelConfig& config);
  ~ChannelBudget();
  ChannelBudget(const ChannelBudget&) = delete;
  ChannelBudget& operator=(const ChannelBudget&) = delete;

  // What a request that needs a channel gets: a ticket to open a new one
  // with, or, after waiting, a channel another request just finished with.
  struct Grant {
    ChannelTicket ticket;
    std::optional<Channel> channel;  // on the caller's executor
  };

  // A ticket for one more channel to `key`'s VM: at once while it has fewer
  // than max_per_vm; else after `make_room` (which may close an idle channel
  // of the VM) freed one; else waiting, at most wait_timeout, for a channel
  // to the same key that a request is done with, or for one to close. The
  // 503 says which limit held. Call it on the caller's own executor.
  awaitable<boost::system::result<Grant, Refusal>> acquire(const VmRecord& vm,
                                                           const ChannelKey& key,
                                                           const std::function<bool()>& make_room);

  // Offers a channel whose exchange is over to the requests waiting for one
  // of its VM: true when it was taken (handed to a waiter for the same key,
  // or closed so that a waiter for another port may open one).
  bool hand_over(Channel& channel);

  // Marks the ticket's channel private to one client connection; false (and
  // nothing changed) when max_private_per_vm of the VM's already are.
  bool make_private(ChannelTicket& ticket);

  const ChannelBudgetStats& stats() const;
  std::uint32_t open_for(const std::string& uuid) const;
  // The `n` VMs (UUID, open channels) with the most channels open, most first.
  std::vector<std::pair<std::string, std::uint32_t>> busiest(std::size_t n) const;

 private:
  using State = ChannelTicket::State;
  std::shared_ptr<State> state_;
};

}  // namespace vmgate::hostd
