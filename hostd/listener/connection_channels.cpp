#include "hostd/listener/connection_channels.hpp"

#include <chrono>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "hostd/channel/channel_pool.hpp"
#include "hostd/cluster/peer_channels.hpp"
#include "hostd/metrics/hostd_metrics.hpp"

namespace vmgate::hostd {

awaitable<ConnectionChannels::ChannelResult> ConnectionChannels::take(
    RequestRecord& rec, const Destination& destination, std::uint16_t port, bool reuse,
    Client client, IoExecutor executor) {
  const auto now = std::chrono::steady_clock::now();
  ChannelKey key = ChannelKey::of(destination.vm, port);
  rec.reused_channel = false;
  if (private_ && private_->key == key) {
    if (reuse && idle_channel_usable(private_->stream)) {
      Channel channel = std::move(*private_);
      private_.reset();
      co_return reused(rec, std::move(channel));
    }
    // The agent ended it (or it failed): its authentication starts over.
    drop_private();
  }
  if (ctx_.pool && reuse) {
    if (auto pooled = ctx_.pool->take(key, executor, now))
      co_return reused(rec, std::move(*pooled));
  }
  const VmRecord& vm = destination.vm;
  auto grant = co_await ctx_.budget.acquire(
      vm, key, [this, &vm] { return ctx_.pool != nullptr && ctx_.pool->evict_one(vm.uuid); });
  if (!grant) co_return grant.error();
  // After a wait: the channel another request to the same port was done with.
  if (grant->channel) co_return reused(rec, std::move(*grant->channel));
  ChannelConnectTimer connect_timer(ctx_.metrics);
  auto channel = co_await open(destination, port, rec, client);
  connect_timer.done(bool(channel));
  if (!channel) co_return channel;
  channel->ticket = std::move(grant->ticket);
  if (ctx_.metrics) ctx_.metrics->channel_used(false);
  co_return channel;
}

// Here over the destination's transport, or, for a VM on another host,
// through that host's peer listener.
awaitable<ConnectionChannels::ChannelResult> ConnectionChannels::open(
    const Destination& destination, std::uint16_t port, const RequestRecord& rec, Client client) {
  // A named local: g++ 12 destroys a temporary in a co_await twice.
  const PeerRequest request{
      .client = client.peer, .identity = client.identity.to_string(), .request_id = rec.id};
  co_return co_await open_vm_channel(ctx_.config.channel, ctx_.peers, destination.vm,
                                     destination.address, port, request, attached_device_);
}

void ConnectionChannels::give_back(Channel channel, bool binds) {
  if (binds && ctx_.budget.make_private(channel.ticket)) {
    private_ = std::make_unique<Channel>(std::move(channel));
    return;
  }
  if (!binds && channel.buffer.size() == 0 && !channel.ticket.is_private()) {
    channel.buffer.shrink_to_fit();  // an idle channel holds no read buffer
    // A request waiting for a channel of this VM comes before the pool.
    if (ctx_.budget.hand_over(channel)) return;
    if (ctx_.pool) {
      ctx_.pool->put(std::move(channel));
      return;
    }
  }
  // Bound, but over max_private_per_vm: closed, never shared.
  error_code ignored;
  channel.stream.close(ignored);
}

Refusal ConnectionChannels::too_many_private(const VmRecord& vm) const {
  return Refusal{503, fmt::format("vm {} has {} channels bound to their clients' NTLM or "
                                  "Negotiate authentication already (channel.max_private_per_vm)",
                                  vm.name, ctx_.config.channel.max_private_per_vm)};
}

void ConnectionChannels::drop_private() {
  if (!private_) return;
  error_code ignored;
  private_->stream.close(ignored);
  private_.reset();
}

ConnectionChannels::ChannelResult ConnectionChannels::reused(RequestRecord& rec, Channel channel) {
  rec.reused_channel = true;
  if (ctx_.metrics) ctx_.metrics->channel_used(true);
  return channel;
}

}  // namespace vmgate::hostd
