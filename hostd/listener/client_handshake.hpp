// A client connection's first step on a hostd listener, before any request:
// the TLS handshake where the listener has TLS, then who the client is
// (docs/architecture.md, "Identity").
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <boost/asio/ip/address.hpp>

#include "common/asio.hpp"
#include "hostd/identity/identity.hpp"
#include "hostd/listener/connection_context.hpp"
#include "hostd/proxy/client_stream.hpp"

namespace vmgate::hostd {

struct OpenedClient {
  ClientStream stream;
  // Per connection, except on a token listener, where each request sets it
  // again from its Proxy-Authorization.
  Identity identity;
};

// The client's stream and identity. Empty, logged with the reason and with
// the socket closed, when the TLS handshake failed or did not end within
// tls.handshake_timeout, or when a certificate listener's client certificate
// names nobody an ACL rule could: a client hostd cannot identify gets no
// HTTP answer. `id` and `peer` (the address, as accept gave it) name the
// connection in the log.
awaitable<std::optional<OpenedClient>> open_client(Stream socket,
                                                   const std::optional<asio::ip::address>& ip,
                                                   const ConnectionContext& context,
                                                   std::uint64_t id, const std::string& peer);

// The identity a connection has from its listener and its socket alone:
// trusted, or its source address; anonymous otherwise, until a client
// certificate or proxy credentials say more. The address is noted either way.
// (A passthrough listener, which sees no credentials, has only this.)
Identity listener_identity(const ListenerConfig& listener,
                           const std::optional<asio::ip::address>& address);

}  // namespace vmgate::hostd
