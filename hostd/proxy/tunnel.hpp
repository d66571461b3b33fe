// A CONNECT tunnel (RFC 9110 §9.3.6): once guestd has connected the agent
// port, "200 Connection established", then raw bytes both ways until both
// ends are done, so TLS to the agent stays end to end.
#pragma once

#include <chrono>

#include <boost/beast/core/flat_buffer.hpp>

#include "common/asio.hpp"
#include "common/relay.hpp"
#include "hostd/admission/connection_caps.hpp"
#include "hostd/channel/channel.hpp"
#include "hostd/metrics/hostd_metrics.hpp"
#include "hostd/proxy/client_stream.hpp"
#include "hostd/proxy/request_record.hpp"

namespace vmgate::hostd {

// An established tunnel: what it holds for as long as it is open, and no
// more (no parser, route or VM record), so an idle one costs little.
struct Tunnel {
  Tunnel(HostdMetrics* metrics, Channel&& channel)
      : gauge(metrics),
        stream(std::move(channel.stream)),
        early(std::move(channel.buffer)),
        key(std::move(channel.key)) {}

  OpenTunnel gauge;
  CapPlace place;  // under limits.max_tunnels, given back when the tunnel ends
  Stream stream;
  boost::beast::flat_buffer early;  // agent bytes that came with guestd's answer
  ChannelKey key;                   // the VM it leads to, to close it if the VM goes
};

// A tunnel with the client connection it belongs to, once the request that
// set it up is done: what a tunnel's own coroutine holds for its life.
// Members end in reverse order: the record is logged before the channel
// closes and the open-tunnels gauge drops, so either of those (or guestd's
// line for the channel) means hostd's record of the tunnel is written.
struct EstablishedTunnel {
  ClientStream client;
  Tunnel tunnel;
  RequestRecord record;
};

// Answers the client 200 and passes on the bytes each side sent early (the
// client's with its head, the agent's with guestd's answer). False when the
// client or the channel failed meanwhile: the tunnel is over.
awaitable<bool> establish_tunnel(ClientStream& client, boost::beast::flat_buffer& client_buffer,
                                 Tunnel& tunnel, RequestRecord& record);

// What the relay of a tunnel (common/relay.hpp) did, into its record.
void note_relayed(RequestRecord& record, const RelayResult& relayed);

// The tunnel's channel was closed because its VM went away (`why`): the
// record says so, and the client's end is not an orderly one.
void note_vm_gone(RequestRecord& record, RelayResult& relayed, const std::string& why);

}  // namespace vmgate::hostd
