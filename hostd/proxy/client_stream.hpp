// A client connection's byte stream: the accepted socket itself, or TLS
// over it on a listener with [listener.tls] (hostd/identity/tls_server.hpp,
// hostd/proxy/tls_socket_stream.hpp).
// The connection, its exchanges and its tunnel read and write it the same
// way either way. What only a plain socket allows (splice) goes through
// `socket()` after asking `is_tls()`: TLS bytes must pass through OpenSSL.
// Waiting for readiness alone works for both once `has_buffered_input()`
// is false: bytes OpenSSL has already read are invisible to the socket.
#pragma once

#include <chrono>
#include <memory>
#include <variant>

#include <boost/asio/ssl/context.hpp>

#include "common/asio.hpp"
#include "common/relay.hpp"
#include "hostd/proxy/tls_socket_stream.hpp"

namespace vmgate::hostd {

class ClientStream {
 public:
  using TlsStream = TlsSocketStream;
  using executor_type = Stream::executor_type;

  explicit ClientStream(Stream socket) : stream_(std::move(socket)) {}
  // A TLS stream whose handshake is done; `context` is the one it was
  // accepted with, kept while the connection lives (a reload replaces the
  // listener's, not this one).
  ClientStream(std::unique_ptr<TlsStream> tls, std::shared_ptr<asio::ssl::context> context)
      : stream_(std::move(tls)), context_(std::move(context)) {}
  ClientStream(ClientStream&&) = default;
  ClientStream& operator=(ClientStream&&) = default;

  executor_type get_executor() { return socket().get_executor(); }
  bool is_tls() const { return std::holds_alternative<std::unique_ptr<TlsStream>>(stream_); }
  // The socket under the stream (TCP or unix).
  Stream& socket() {
    if (auto* tls = std::get_if<std::unique_ptr<TlsStream>>(&stream_)) return (*tls)->next_layer();
    return std::get<Stream>(stream_);
  }
  TlsStream* tls() {
    auto* tls = std::get_if<std::unique_ptr<TlsStream>>(&stream_);
    return tls ? tls->get() : nullptr;
  }

  template <class MutableBuffers, class Token>
  auto async_read_some(const MutableBuffers& buffers, Token&& token) {
    return asio::async_initiate<Token, void(error_code, std::size_t)>(
        [this](auto handler, const MutableBuffers& b) {
          if (TlsStream* t = tls())
            t->async_read_some(b, std::move(handler));
          else
            std::get<Stream>(stream_).async_read_some(b, std::move(handler));
        },
        token, buffers);
  }

  template <class ConstBuffers, class Token>
  auto async_write_some(const ConstBuffers& buffers, Token&& token) {
    return asio::async_initiate<Token, void(error_code, std::size_t)>(
        [this](auto handler, const ConstBuffers& b) {
          if (TlsStream* t = tls())
            t->async_write_some(b, std::move(handler));
          else
            std::get<Stream>(stream_).async_write_some(b, std::move(handler));
        },
        token, buffers);
  }

  // Whether bytes already read from the socket wait inside OpenSSL (never
  // on a plain socket). Without any, a readable socket is the only sign of
  // the client's next bytes, over TLS too: OpenSSL reads the socket itself.
  bool has_buffered_input();

  // Cancels what is pending on the socket (and so on TLS over it).
  void cancel(error_code& ec) { socket().cancel(ec); }
  void close(error_code& ec) { socket().close(ec); }

  // Ends the connection. `orderly`: TLS says so with close_notify (RFC 8446
  // §6.1), waiting up to `limit` for the client's, and a plain socket shuts
  // down its sending side. Otherwise (a response was cut) TLS sends no
  // close_notify, so a client reading to the end of the connection can tell
  // the cut from a complete response. Then the socket closes.
  awaitable<void> close(bool orderly, std::chrono::milliseconds limit);
  // The same for a plaintext stream, which has nothing to wait for: orderly
  // is a shutdown(send) before the close.
  void close_plaintext(bool orderly);

 private:
  std::variant<Stream, std::unique_ptr<TlsStream>> stream_;
  std::shared_ptr<asio::ssl::context> context_;
};

// The relay of a CONNECT tunnel on `client` (common/relay.hpp on a plain
// socket, with splice). Over TLS every byte passes through OpenSSL: two copy
// loops, the client's close_notify or EOF half-closes the channel, and the
// agent's end ends the tunnel (TLS has no half-close to pass it on: the
// client gets close_notify once both loops stop).
awaitable<RelayResult> relay_tunnel(ClientStream& client, Stream& channel,
                                    std::chrono::milliseconds idle);

}  // namespace vmgate::hostd
