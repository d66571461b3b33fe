// A channel: one connection to a VM's guestd that guestd has handed to one
// agent port (docs/architecture.md, "Channel"). Opening one is a transport
// connect, the preamble, and guestd's answer.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <boost/beast/core/flat_buffer.hpp>

#include "common/asio.hpp"
#include "common/transport.hpp"
#include "hostd/config/hostd_config.hpp"
#include "hostd/directory/directory.hpp"
#include "hostd/refusal.hpp"

namespace vmgate::hostd {

// What makes a channel's address valid: the inputs of the transport template
// ({uuid}, {name}, {cid}) and the agent port the preamble named. A pooled
// channel is only ever used for the same key, so a VM restarted with a new
// CID (or renamed) never receives a channel to its old self.
struct ChannelKey {
  std::string uuid;
  std::string name;
  std::optional<std::uint32_t> cid;
  std::uint16_t port = 0;

  static ChannelKey of(const VmRecord& vm, std::uint16_t port) {
    return {vm.uuid, vm.name, vm.cid, port};
  }
  friend bool operator==(const ChannelKey&, const ChannelKey&) = default;
};

class ChannelBudget;

// One open channel's place among its VM's channels (channel_budget.hpp),
// given back when destroyed. It shares the budget's state: a channel still
// open when hostd stops (its coroutine destroyed with the I/O threads'
// contexts) gives it back safely.
class ChannelTicket {
 public:
  ChannelTicket() = default;
  ChannelTicket(ChannelTicket&& other) noexcept { *this = std::move(other); }
  ChannelTicket& operator=(ChannelTicket&& other) noexcept;
  ~ChannelTicket() { release(); }

  explicit operator bool() const { return state_ != nullptr; }
  bool is_private() const { return private_; }

 private:
  friend class ChannelBudget;
  struct State;
  ChannelTicket(std::shared_ptr<State> state, std::string uuid)
      : state_(std::move(state)), uuid_(std::move(uuid)) {}
  void release();

  std::shared_ptr<State> state_;
  std::string uuid_;
  bool private_ = false;
};

// The preamble that opened a channel named the client connection and the
// request that opened it (Client, Request-Id): for a reused channel that is
// only its origin, for guestd's log. Who sent each request reaches the agent
// in the Forwarded field every request gets.
struct Channel {
  Stream stream;
  // Agent bytes read past guestd's answer or the last response head; it must
  // outlive every read on the channel.
  boost::beast::flat_buffer buffer;
  ChannelKey key;
  // Its place among its VM's channels; none for a tunnel's.
  ChannelTicket ticket;
};

// A socket belongs to the reactor of the io_context it was opened on: a
// channel opened on another I/O thread is moved to `executor`'s (two
// epoll_ctl calls), so its I/O does not complete on one thread only to be
// handed to another. Empty when the socket cannot be moved (it is closed).
std::optional<Channel> move_to(Channel channel, const asio::any_io_executor& executor);

// The transport that reaches this VM's guestd, from the configured template.
boost::system::result<transport::Address, Refusal> channel_address(const ChannelConfig& config,
                                                                   const VmRecord& vm);

// A channel to a VM whose vsock device was attached for this very request
// (channel_on_demand.hpp): its guest may take a while to take the device in
// and guestd to bind to it, and one that never answers is the VM's state,
// not a fault on the way: 503.
struct AttachedDevice {
  std::chrono::milliseconds guestd_timeout;
};

// Connects to `address`, sends `VMGATE/1 CONNECT port`, and waits for
// guestd's answer, all within config.connect_timeout (attached->guestd_timeout
// when given). A guestd that is not answering yet (refused, reset, closed
// before its answer) is tried again with jittered backoff inside that bound,
// then refused 502 "guestd not answering on cid N (vm NAME)" (the transport
// address instead of the CID for other transports; 503 after an attach). An
// answer is final: guestd's refusals map to the status the client should see
// (403/502/503/504).
awaitable<boost::system::result<Channel, Refusal>> open_channel(
    const ChannelConfig& config, const VmRecord& vm, const transport::Address& address,
    std::uint16_t port, std::string_view client, std::string_view request_id,
    std::optional<AttachedDevice> attached = std::nullopt);

}  // namespace vmgate::hostd
