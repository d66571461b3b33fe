#include "hostd/proxy/tls_socket_stream.hpp"

#include <cerrno>
#include <new>

#include <openssl/err.h>
#include <openssl/x509v3.h>

namespace vmgate::hostd {
namespace {

// Makes one OpenSSL call with an empty error queue and errno 0, so what
// `outcome` then reads is this call's own.
template <class Call>
int fresh(Call call) {
  ERR_clear_error();
  errno = 0;
  return call();
}

}  // namespace

TlsSocketStream::TlsSocketStream(Stream socket, asio::ssl::context& context, Role role)
    : socket_(std::move(socket)), ssl_(SSL_new(context.native_handle())) {
  if (ssl_ == nullptr) throw std::bad_alloc();
  // What Asio's stream sets too: a write may end after one record, and may be
  // retried from a copy of its buffer; an idle connection gives its record
  // buffers back.
  SSL_set_mode(ssl_, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                         SSL_MODE_RELEASE_BUFFERS);
  // Records are read as many at a time as have arrived, not a 5-byte header
  // and then its body in a second read(2).
  SSL_set_read_ahead(ssl_, 1);
  if (role == Role::server)
    SSL_set_accept_state(ssl_);
  else
    SSL_set_connect_state(ssl_);
  error_code ignored;
  socket_.non_blocking(true, ignored);
  // The BIO does not own the descriptor: the socket closes it, and `run`
  // never lets OpenSSL near it once closed.
  SSL_set_fd(ssl_, socket_.native_handle());
}

TlsSocketStream::~TlsSocketStream() {
  SSL_free(ssl_);
}

void TlsSocketStream::expect_host(const std::string& host) {
  error_code not_ip;
  asio::ip::make_address(host, not_ip);
  if (!not_ip) {
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_), host.c_str());
  } else {
    SSL_set_hostflags(ssl_, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    SSL_set1_host(ssl_, host.c_str());
  }
}

TlsSocketStream::Attempt TlsSocketStream::attempt_handshake() {
  const int ret = fresh([this] { return SSL_do_handshake(ssl_); });
  return ret == 1 ? Attempt{} : outcome(ret);
}

TlsSocketStream::Attempt TlsSocketStream::attempt_read(asio::mutable_buffer buffer) {
  if (buffer.size() == 0) return {};
  std::size_t n = 0;
  const int ret = fresh([&] { return SSL_read_ex(ssl_, buffer.data(), buffer.size(), &n); });
  return ret == 1 ? Attempt{.bytes = n} : outcome(ret);
}

TlsSocketStream::Attempt TlsSocketStream::attempt_write(asio::const_buffer buffer) {
  if (buffer.size() == 0) return {};
  std::size_t n = 0;
  const int ret = fresh([&] { return SSL_write_ex(ssl_, buffer.data(), buffer.size(), &n); });
  return ret == 1 ? Attempt{.bytes = n} : outcome(ret);
}

TlsSocketStream::Attempt TlsSocketStream::attempt_shutdown() {
  // 0: close_notify is sent and the client's is still to come; the second
  // call starts waiting for it (as Asio's stream does).
  int ret = fresh([this] { return SSL_shutdown(ssl_); });
  if (ret == 0) ret = fresh([this] { return SSL_shutdown(ssl_); });
  return ret == 1 ? Attempt{} : outcome(ret);
}

TlsSocketStream::Attempt TlsSocketStream::outcome(int ret) {
  const int system_error = errno;
  Attempt a;
  switch (SSL_get_error(ssl_, ret)) {
    case SSL_ERROR_WANT_READ:
      a.need = Attempt::Need::readable;
      return a;
    case SSL_ERROR_WANT_WRITE:
      a.need = Attempt::Need::writable;
      return a;
    case SSL_ERROR_ZERO_RETURN:  // the client's close_notify
      a.ec = asio::error::eof;
      return a;
    case SSL_ERROR_SYSCALL:
      if (const unsigned long e = ERR_get_error(); e != 0)
        a.ec = error_code(static_cast<int>(e), asio::error::get_ssl_category());
      else if (system_error != 0)
        a.ec = error_code(system_error, boost::system::system_category());
      else
        a.ec = asio::ssl::error::stream_truncated;
      return a;
    default: {
      const unsigned long e = ERR_get_error();
      // The connection ended without close_notify (OpenSSL 3 reports it
      // as an error of its own; Asio's stream as stream_truncated).
      if (ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
        a.ec = asio::ssl::error::stream_truncated;
      else if (e == 0)
        a.ec = asio::ssl::error::unexpected_result;
      else
        a.ec = error_code(static_cast<int>(e), asio::error::get_ssl_category());
      ERR_clear_error();
      return a;
    }
  }
}

}  // namespace vmgate::hostd
