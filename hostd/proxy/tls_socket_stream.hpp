// TLS on a client connection or a peer host's link, with OpenSSL reading
// and writing the socket itself (a socket BIO), as nginx and haproxy do.
// Asio's ssl::stream instead puts a memory BIO pair between OpenSSL and the
// socket: every record is copied twice more on its way (socket -> Asio's
// buffer -> the BIO pair -> OpenSSL, and back), each operation runs Asio's
// TLS engine state machine, and each connection holds four 17 KiB buffers
// for as long as it lives (Asio's two and the pair's two), idle or not.
//
// Measured with bench/ab_builds.py (the tree before this stream against it,
// both served side by side, wrk alternated; hostd + guestd CPU from /proc):
// WS-Man keep-alive over TLS, 8 rounds, 1.07 x the req/s at 0.92 x the CPU
// per request (157 -> 144 us); a new TLS connection per request, 6 rounds,
// 1.08 x at 0.91 x (839 -> 764 us). bench/idle_connections.py --tls, 2,000
// idle keep-alive clients: hostd 83 KiB per client before, 27 KiB after.
//
// The interface is the part of asio::ssl::stream hostd uses: the handshake
// (either side), read_some, write_some, shutdown (close_notify), the socket
// under it and the SSL object. Errors are the ones Asio's stream gives, so
// callers need not know which they hold: close_notify is
// asio::error::eof, an end without it asio::ssl::error::stream_truncated,
// OpenSSL's own errors in Asio's SSL category. One read and one write may
// be pending at once; every operation completes on the socket's executor,
// never inside the call that starts it. OpenSSL writes with write(2), which
// raises SIGPIPE once the client has gone: the process must ignore it
// (hostd's main does, as splice needs too).
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>

#include <openssl/ssl.h>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/error.hpp>

#include "common/asio.hpp"

namespace vmgate::hostd {

class TlsSocketStream {
 public:
  using executor_type = Stream::executor_type;
  using next_layer_type = Stream;

  enum class Role { server, client };

  // `role`'s side of a TLS connection on `socket`, with `context`'s
  // certificate, verification and session cache. Throws std::bad_alloc
  // when OpenSSL cannot make the connection's state.
  TlsSocketStream(Stream socket, asio::ssl::context& context, Role role = Role::server);
  ~TlsSocketStream();
  TlsSocketStream(const TlsSocketStream&) = delete;
  TlsSocketStream& operator=(const TlsSocketStream&) = delete;

  executor_type get_executor() { return socket_.get_executor(); }
  Stream& next_layer() { return socket_; }
  SSL* native_handle() { return ssl_; }
  // A client's handshake fails unless the server's certificate names
  // `host` (a DNS name, or an IP address), as OpenSSL checks it (RFC 6125).
  void expect_host(const std::string& host);

  template <class Token>
  auto async_handshake(Token&& token) {
    return run<void(error_code)>([this] { return attempt_handshake(); },
                                 std::forward<Token>(token));
  }

  template <class MutableBuffers, class Token>
  auto async_read_some(const MutableBuffers& buffers, Token&& token) {
    const auto first = first_buffer<asio::mutable_buffer>(buffers);
    return run<void(error_code, std::size_t)>([this, first] { return attempt_read(first); },
                                              std::forward<Token>(token));
  }

  // Writes at most one TLS record (16 KiB). Several buffers are copied into
  // one first, so a head and its body leave as one record in one send; the
  // copy is given back once written (an idle connection holds none).
  template <class ConstBuffers, class Token>
  auto async_write_some(const ConstBuffers& buffers, Token&& token) {
    auto data = first_buffer<asio::const_buffer>(buffers);
    const bool copied = data.size() < asio::buffer_size(buffers) && data.size() < record_size;
    if (copied) {
      if (!record_) record_ = std::make_unique_for_overwrite<char[]>(record_size);
      data = asio::buffer(record_.get(),
                          asio::buffer_copy(asio::buffer(record_.get(), record_size), buffers));
    }
    return run<void(error_code, std::size_t)>(
        [this, data, copied] {
          Attempt a = attempt_write(data);
          if (copied && a.need == Attempt::Need::nothing) record_.reset();
          return a;
        },
        std::forward<Token>(token));
  }

  // Sends close_notify and waits for the client's.
  template <class Token>
  auto async_shutdown(Token&& token) {
    return run<void(error_code)>([this] { return attempt_shutdown(); }, std::forward<Token>(token));
  }

 private:
  static constexpr std::size_t record_size = 16 * 1024;  // RFC 8446 §5.1: 2^14 bytes a record

  // One call into OpenSSL: finished (`ec`, `bytes`), or it needs the socket
  // readable or writable first.
  struct Attempt {
    enum class Need { nothing, readable, writable } need = Need::nothing;
    error_code ec;
    std::size_t bytes = 0;
  };
  Attempt attempt_handshake();
  Attempt attempt_read(asio::mutable_buffer buffer);
  Attempt attempt_write(asio::const_buffer buffer);
  Attempt attempt_shutdown();
  // What an OpenSSL call that returned `ret` (<= 0) asks for, or its error.
  Attempt outcome(int ret);

  // Runs `attempt` until it finishes, waiting for the readiness it needs in
  // between. A closed socket (a deadline closed it) ends the operation
  // before OpenSSL could touch its descriptor number again.
  template <class Signature, class Try, class Token>
  auto run(Try attempt, Token&& token) {
    return asio::async_compose<Token, Signature>(
        [this, attempt, first = true, done = std::optional<Attempt>()](
            auto& self, error_code wait_error = {}) mutable {
          if (done) {
            finish<Signature>(self, *done);
            return;
          }
          Attempt a;
          if (wait_error)
            a.ec = wait_error;
          else if (!socket_.is_open())
            a.ec = asio::error::bad_descriptor;
          else
            a = attempt();
          if (a.need != Attempt::Need::nothing) {
            first = false;
            socket_.async_wait(
                a.need == Attempt::Need::readable ? Stream::wait_read : Stream::wait_write,
                std::move(self));
            return;
          }
          if (first) {
            // Finished inside the call that started it: complete from the
            // executor instead, as every Asio operation does.
            first = false;
            done = a;
            asio::post(socket_.get_executor(), std::move(self));
            return;
          }
          finish<Signature>(self, a);
        },
        token, socket_);
  }
  template <class Signature, class Self>
  static void finish(Self& self, const Attempt& a) {
    if constexpr (std::is_same_v<Signature, void(error_code)>)
      self.complete(a.ec);
    else
      self.complete(a.ec, a.bytes);
  }

  // The first buffer with room or bytes in it (Asio's stream reads and
  // writes one buffer at a time too).
  template <class Buffer, class Buffers>
  static Buffer first_buffer(const Buffers& buffers) {
    for (auto it = asio::buffer_sequence_begin(buffers); it != asio::buffer_sequence_end(buffers);
         ++it) {
      Buffer b(*it);
      if (b.size() > 0) return b;
    }
    return Buffer();
  }

  Stream socket_;
  SSL* ssl_;
  std::unique_ptr<char[]> record_;  // see async_write_some
};

}  // namespace vmgate::hostd
