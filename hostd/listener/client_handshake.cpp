#include "hostd/listener/client_handshake.hpp"

#include <memory>

#include <fmt/format.h>

#include "common/deadline.hpp"
#include "common/log.hpp"

namespace vmgate::hostd {
namespace {

// The TLS handshake, within tls.handshake_timeout. Empty (and logged, with
// the reason) when it failed.
awaitable<std::optional<ClientStream>> accept_tls(Stream socket, const TlsServer& tls,
                                                  std::uint64_t id, std::string_view listener,
                                                  const std::string& peer) {
  auto context = tls.context();
  auto stream = std::make_unique<ClientStream::TlsStream>(std::move(socket), *context);
  Deadline deadline(stream->get_executor());
  deadline.expires_after(tls.config().handshake_timeout, [&stream] {
    error_code ignored;
    stream->next_layer().close(ignored);
  });
  auto [ec] = co_await stream->async_handshake(use_tuple);
  const bool timed_out = deadline.expired();
  deadline.expires_never();
  if (ec) {
    log::warn("tls_handshake_failed")
        .kv("conn", static_cast<unsigned long long>(id))
        .kv("listener", listener)
        .kv("client", peer)
        .kv("reason", timed_out ? fmt::format("no handshake within {} ms",
                                              tls.config().handshake_timeout.count())
                                : handshake_failure(stream->native_handle(), ec));
    error_code ignored;
    stream->next_layer().close(ignored);
    co_return std::nullopt;
  }
  co_return ClientStream(std::move(stream), std::move(context));
}

// Who the connection's client is, before its first request: what the
// listener says, or its certificate, or its address. On a token listener
// each request says it again (Proxy-Authorization).
Identity connection_identity(const ConnectionContext& context, ClientStream& client,
                             const std::optional<asio::ip::address>& address) {
  Identity identity = listener_identity(context.listener, address);
  if (context.listener.identity == ListenerIdentity::certificate) {
    Identity certified =
        certificate_identity(client.tls() ? client.tls()->native_handle() : nullptr);
    certified.address = identity.address;
    return certified;
  }
  return identity;
}

}  // namespace

awaitable<std::optional<OpenedClient>> open_client(Stream socket,
                                                   const std::optional<asio::ip::address>& ip,
                                                   const ConnectionContext& context,
                                                   std::uint64_t id, const std::string& peer) {
  std::optional<ClientStream> stream;
  if (context.tls) {
    stream = co_await accept_tls(std::move(socket), *context.tls, id, context.listener.name, peer);
    if (!stream) co_return std::nullopt;
  } else {
    stream.emplace(std::move(socket));
  }
  Identity identity = connection_identity(context, *stream, ip);
  if (context.listener.identity == ListenerIdentity::certificate &&
      identity.kind != Identity::Kind::certificate) {
    // Verified, but it names nobody an ACL rule could: no SAN, no CN.
    log::warn("tls_handshake_failed")
        .kv("conn", static_cast<unsigned long long>(id))
        .kv("listener", context.listener.name)
        .kv("client", peer)
        .kv("reason", "client certificate has no DNS or URI SAN and no CN");
    co_await stream->close(false, close_limit(context));
    co_return std::nullopt;
  }
  co_return OpenedClient{std::move(*stream), std::move(identity)};
}

Identity listener_identity(const ListenerConfig& listener,
                           const std::optional<asio::ip::address>& address) {
  Identity identity;
  identity.address = address;
  if (listener.trusted()) {
    identity.kind = Identity::Kind::trusted_listener;
    identity.name = listener.name;
  } else if (listener.identity == ListenerIdentity::source && identity.address) {
    identity.kind = Identity::Kind::source;
    identity.name = identity.address->to_string();
  }
  return identity;
}

}  // namespace vmgate::hostd
