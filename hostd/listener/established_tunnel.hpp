// A CONNECT tunnel after its "200 Connection established", to its end, in
// place of the client connection that set it up (hostd/listener/
// client_connection), whose coroutine and buffers are gone by then: an idle
// tunnel holds only what its relay needs.
#pragma once

#include <chrono>
#include <memory>

#include "hostd/channel/live_channels.hpp"
#include "hostd/listener/connection_context.hpp"
#include "hostd/proxy/tunnel.hpp"

namespace vmgate::hostd {

// Relays until either side ends or the tunnel is idle for `idle`, closes the
// VM's side when `live` says its VM went away, then logs the tunnel's record
// and closes the client (an orderly close, within `close_within` for a TLS
// client, unless the relay failed or timed out). `slot` is held until then.
// Plaintext: owned by the relay's completion handler, no coroutine; TLS: a
// coroutine of its own.
void run_established_tunnel(std::unique_ptr<EstablishedTunnel> tunnel, ConnectionSlot slot,
                            std::chrono::milliseconds idle, std::chrono::milliseconds close_within,
                            LiveChannels* live);

}  // namespace vmgate::hostd
