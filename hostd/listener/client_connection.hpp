// One client connection on a hostd listener, for its whole life: read a
// request head, admit it (hostd/admission), then deliver it (hostd/proxy:
// an exchange over a channel, or a CONNECT tunnel), and again while the
// client keeps the connection (docs/architecture.md, "The path of one
// request").
#pragma once

#include <memory>

#include "common/asio.hpp"
#include "common/transport.hpp"
#include "hostd/listener/connection_context.hpp"

namespace vmgate::hostd {

// Runs until the client closes, a request ends the connection, a tunnel
// ends, or a limit is hit; then closes the connection. On a TLS listener the
// handshake comes first, within tls.handshake_timeout, and a client it fails
// for is logged with the reason and closed. Never throws for anything a
// client or guest does. `id` names the connection in records.
// `context_owner` keeps what `context` refers to while the connection lives:
// between requests the connection waits outside this coroutine (which then
// returns), and holds it there. `peer`: the client's address, from accept.
awaitable<void> serve_client(Stream client, transport::PeerAddress peer,
                             const ConnectionContext& context,
                             std::shared_ptr<const void> context_owner, std::uint64_t id,
                             ConnectionSlot slot);

}  // namespace vmgate::hostd
