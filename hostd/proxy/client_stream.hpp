// A client connection's byte stream: the accepted socket itself, or TLS
// over it on a listener with [listener.tls] (hostd/identity/tls_server.hpp).
// The connection, its exchanges and its tunnel read and write it the same
// way either way. What only a plain socket allows (splice, waiting for
// readiness alone) goes through `socket()` after asking `is_tls()`: TLS
// bytes must pass through OpenSSL, and bytes already decrypted or buffered
// by it are invisible to the socket.
#pragma once

#include <chrono>
#include <iterator>
#include <memory>
#include <variant>

#include <boost/asio/ssl/stream.hpp>

#include "common/asio.hpp"
#include "common/relay.hpp"

namespace vmgate::hostd {

class ClientStream {
 public:
  using TlsStream = asio::ssl::stream<Stream>;
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
          TlsStream* t = tls();
          if (t == nullptr) {
            std::get<Stream>(stream_).async_write_some(b, std::move(handler));
          } else if (asio::buffer_size(b) > tls_linearised && !single_buffer(b)) {
            // Asio's TLS stream writes a sequence of several buffers in
            // pieces of 8 KiB: an 8 KiB WS-Man response with its head went
            // out as two TLS records in two sendto() calls (strace, bench
            // WS-Man over TLS). Copied into one record-sized buffer, it is
            // one record and one call.
            const std::size_t n = asio::buffer_copy(asio::buffer(record_buffer(), tls_record), b);
            t->async_write_some(asio::buffer(record_.get(), n), std::move(handler));
          } else {
            t->async_write_some(b, std::move(handler));
          }
        },
        token, buffers);
  }

  // Whether bytes already read from the socket wait inside OpenSSL.
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
  static constexpr std::size_t tls_linearised = 8 * 1024;  // asio/ssl/detail/write_op.hpp
  static constexpr std::size_t tls_record = 16 * 1024;     // RFC 8446 §5.1: 2^14 bytes a record

  template <class ConstBuffers>
  static bool single_buffer(const ConstBuffers& b) {
    auto first = asio::buffer_sequence_begin(b);
    return first == asio::buffer_sequence_end(b) ||
           std::next(first) == asio::buffer_sequence_end(b);
  }
  char* record_buffer() {
    if (!record_) record_ = std::make_unique_for_overwrite<char[]>(tls_record);
    return record_.get();
  }

  std::variant<Stream, std::unique_ptr<TlsStream>> stream_;
  std::shared_ptr<asio::ssl::context> context_;
  std::unique_ptr<char[]> record_;  // TLS only: see async_write_some
};

// The relay of a CONNECT tunnel on `client` (common/relay.hpp on a plain
// socket, with splice). Over TLS every byte passes through OpenSSL: two copy
// loops, the client's close_notify or EOF half-closes the channel, and the
// agent's end ends the tunnel (TLS has no half-close to pass it on: the
// client gets close_notify once both loops stop).
awaitable<RelayResult> relay_tunnel(ClientStream& client, Stream& channel,
                                    std::chrono::milliseconds idle);

}  // namespace vmgate::hostd
