// TLS termination for one listener (its [listener.tls]): the OpenSSL
// context its connections are accepted with, what a client certificate says
// about who the client is, and why a handshake failed.
//
// The context is read from the configured files at start and again on
// SIGHUP (reload): connections accepted later use the new one, while those
// already open keep the context they were accepted with (each holds it), so
// a renewed certificate drops nobody.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include <boost/asio/ssl/context.hpp>

#include "common/asio.hpp"
#include "hostd/config/hostd_config.hpp"
#include "hostd/identity/identity.hpp"

using SSL = struct ssl_st;

namespace vmgate::hostd {

class TlsServer {
 public:
  // Throws std::runtime_error naming the listener, the file and OpenSSL's reason.
  TlsServer(std::string listener, TlsConfig config);
  TlsServer(const TlsServer&) = delete;
  TlsServer& operator=(const TlsServer&) = delete;

  // The context for a connection accepted now.
  std::shared_ptr<asio::ssl::context> context() const { return context_.load(); }
  // Reads the files again. On failure the old context stays and the reason
  // is returned (for the log); empty on success.
  std::string reload();

  const TlsConfig& config() const { return config_; }
  bool verifies_clients() const { return !config_.client_ca.empty(); }

 private:
  std::shared_ptr<asio::ssl::context> build() const;

  std::string listener_;
  TlsConfig config_;
  std::atomic<std::shared_ptr<asio::ssl::context>> context_;
};

// The identity a verified client certificate gives (identity.hpp): its DNS
// and URI SANs, then its subject CN. Anonymous when there is no certificate.
Identity certificate_identity(SSL* ssl);

// Why a server handshake failed, in one line: the certificate's verify
// result when that was the cause ("certificate has expired", "client
// certificate is not pinned (tls.pinned_sha256)"), else `ec`'s message.
std::string handshake_failure(SSL* ssl, error_code ec);

// The SHA-256 fingerprint of the peer's certificate as lowercase hex (the
// form tls.pinned_sha256 is normalized to); empty without one.
std::string peer_fingerprint(SSL* ssl);

}  // namespace vmgate::hostd
