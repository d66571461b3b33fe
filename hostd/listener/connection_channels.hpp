// The channels one client connection takes and gives back (hostd/channel):
// its private channel when it has one, else a pooled one, else a new one
// under its VM's budget; and afterwards back to whoever waits, the pool, or
// closed.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>

#include <boost/system/result.hpp>

#include "common/asio.hpp"
#include "hostd/admission/admission.hpp"
#include "hostd/channel/channel.hpp"
#include "hostd/identity/identity.hpp"
#include "hostd/listener/connection_context.hpp"
#include "hostd/proxy/request_record.hpp"

namespace vmgate::hostd {

class ConnectionChannels {
 public:
  using ChannelResult = boost::system::result<Channel, Refusal>;
  // Who the connection's client is, for a channel opened through a peer
  // host: the address as accept gave it and its identity.
  struct Client {
    std::string_view peer;
    const Identity& identity;
  };

  explicit ConnectionChannels(const ConnectionContext& context) : ctx_(context) {}
  ConnectionChannels(const ConnectionChannels&) = delete;
  ConnectionChannels& operator=(const ConnectionChannels&) = delete;

  // The connection's private channel when it goes to the same VM and port,
  // else a pooled one, else a new one (waiting, if the VM has all its
  // channels in use). `reuse` false: a retry after a reused channel failed,
  // which wants a new one. Notes in `rec` whether the channel was reused. A
  // pooled channel moves to `executor`, the connection's.
  awaitable<ChannelResult> take(RequestRecord& rec, const Destination& destination,
                                std::uint16_t port, bool reuse, Client client, IoExecutor executor);

  // A new channel, outside the budget and the pool (a CONNECT tunnel's: the
  // agent sees a fresh connection).
  awaitable<ChannelResult> open(const Destination& destination, std::uint16_t port,
                                const RequestRecord& rec, Client client);

  // A channel whose exchange ended cleanly goes back at once, so an idle
  // client connection holds none: the channels of a VM are bounded by the
  // requests in flight and the pool's limit, never by connected clients.
  // `binds`: it carries the agent's NTLM or Negotiate authentication of this
  // connection, and stays with it (within channel.max_private_per_vm).
  void give_back(Channel channel, bool binds);

  // Binds a channel just taken to the connection; false when its VM has
  // channel.max_private_per_vm bound already (too_many_private says so).
  bool make_private(Channel& channel) { return ctx_.budget.make_private(channel.ticket); }
  Refusal too_many_private(const VmRecord& vm) const;

  // Closes the private channel: the agent's authentication of this
  // connection is over (it ends, or becomes a tunnel).
  void drop_private();

  // For the request in hand: its VM's vsock device was attached for it, so
  // its first channel waits longer for guestd. Reset for each request.
  void set_attached_device(std::optional<AttachedDevice> attached) { attached_device_ = attached; }

 private:
  ChannelResult reused(RequestRecord& rec, Channel channel);

  const ConnectionContext& ctx_;
  // Bound to this connection's agent authentication (NTLM, Negotiate):
  // never pooled, closed with the connection.
  std::unique_ptr<Channel> private_;
  std::optional<AttachedDevice> attached_device_;
};

}  // namespace vmgate::hostd
