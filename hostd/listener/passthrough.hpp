// One client connection on a passthrough listener (`mode = "passthrough"`,
// docs/architecture.md, "SNI passthrough"): the DNS-name form over TLS that
// hostd does not terminate. The TLS ClientHello names the VM in its server
// name (vm1.vms.example under [routing] host_suffix); the connection goes to
// the listener's guest port on that VM, the ClientHello and everything after
// it relayed untouched, so the client sees the agent's own certificate.
#pragma once

#include <cstdint>

#include "common/asio.hpp"
#include "hostd/listener/connection_context.hpp"

namespace vmgate::hostd {

// Reads the ClientHello (limits.client_hello_bytes, within
// limits.client_hello_timeout), keeping its bytes; routes on its server name,
// admits the route (hostd/admission), opens a channel, replays the bytes
// read and relays until both ends are done. Without a route or an admission
// the connection is closed, unanswered (the client speaks TLS, which only
// the agent can answer), and its record says why. Never throws for anything
// a client or guest does. `id` names the connection in records.
awaitable<void> serve_passthrough(Stream client, transport::PeerAddress peer,
                                  const ConnectionContext& context, std::uint64_t id,
                                  ConnectionSlot slot);

}  // namespace vmgate::hostd
