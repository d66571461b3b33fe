// A CONNECT tunnel (RFC 9110 §9.3.6): once guestd has connected the agent
// port, "200 Connection established", then raw bytes both ways until both
// ends are done, so TLS to the agent stays end to end.
#pragma once

#include <chrono>

#include <boost/beast/core/flat_buffer.hpp>

#include "common/asio.hpp"
#include "hostd/channel/channel.hpp"
#include "hostd/metrics/hostd_metrics.hpp"
#include "hostd/proxy/request_record.hpp"

namespace vmgate::hostd {

// An established tunnel: what it holds for as long as it is open, and no
// more (no parser, route or VM record), so an idle one costs little.
struct Tunnel {
  Tunnel(HostdMetrics* metrics, Channel&& channel)
      : gauge(metrics), stream(std::move(channel.stream)), early(std::move(channel.buffer)) {}

  OpenTunnel gauge;
  Stream stream;
  boost::beast::flat_buffer early;  // agent bytes that came with guestd's answer
};

// Answers the client 200 and passes on the bytes each side sent early (the
// client's with its head, the agent's with guestd's answer). False when the
// client or the channel failed meanwhile: the tunnel is over.
awaitable<bool> establish_tunnel(Stream& client, boost::beast::flat_buffer& client_buffer,
                                 Tunnel& tunnel, RequestRecord& record);

// Relays until both ends are done or nothing moves for `idle`; the caller
// closes both.
awaitable<void> relay_tunnel(Stream& client, Tunnel& tunnel, RequestRecord& record,
                             std::chrono::milliseconds idle);

}  // namespace vmgate::hostd
