// One client connection on a hostd listener: read a request head, route it,
// resolve the VM, take or open its channel, then run the exchange
// (exchange.hpp) or hand a CONNECT tunnel to the relay.
#pragma once

#include <functional>

#include "common/asio.hpp"
#include "hostd/channel/channel_pool.hpp"
#include "hostd/config/hostd_config.hpp"
#include "hostd/directory/directory.hpp"
#include "hostd/metrics/hostd_metrics.hpp"

namespace vmgate::hostd {

struct SessionContext {
  const HostdConfig& config;
  const ListenerConfig& listener;
  Directory& directory;
  HostdMetrics* metrics = nullptr;  // null: not counted (tests)
  ChannelPool* pool = nullptr;      // null: channels live only as long as their client connection
};

// Runs until the client closes, a request ends the connection, or a limit
// is hit. Never throws for anything a client or guest does. A CONNECT tunnel
// is handed off to a relay and this returns while it runs: `on_end` is called
// once the connection is really over (it may run after this returns).
awaitable<void> run_http_session(Stream client, const SessionContext& context,
                                 std::function<void()> on_end = {});

}  // namespace vmgate::hostd
