#include "hostd/identity/tls_server.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <array>
#include <stdexcept>

#include <fmt/format.h>

#include "hostd/identity/token_secret.hpp"

namespace vmgate::hostd {
namespace {

std::string sha256_fingerprint(X509* cert) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> md{};
  unsigned int size = 0;
  if (cert == nullptr || X509_digest(cert, EVP_sha256(), md.data(), &size) != 1) return {};
  return lower_hex(md.data(), size);
}

// A name from a certificate as an identity may carry it: printable ASCII
// without spaces, so it reads the same in ACL rules and log lines. Anything
// else (an embedded NUL, control characters) is not a name at all.
std::string printable(const ASN1_STRING* text) {
  if (text == nullptr) return {};
  const auto* data = ASN1_STRING_get0_data(text);
  const int size = ASN1_STRING_length(text);
  if (data == nullptr || size <= 0 || size > 1024) return {};
  std::string out(reinterpret_cast<const char*>(data), static_cast<std::size_t>(size));
  const bool clean =
      std::all_of(out.begin(), out.end(), [](char c) { return c > 0x20 && c < 0x7f; });
  return clean ? out : std::string{};
}

// The fingerprint of a client certificate that was refused for not being
// pinned, kept on its SSL: OpenSSL drops the certificate of a failed
// handshake, and the fingerprint is what an operator would pin.
int unpinned_index() {
  static const int index = SSL_get_ex_new_index(
      0, nullptr, nullptr, nullptr, [](void*, void* data, CRYPTO_EX_DATA*, int, long, void*) {
        delete static_cast<std::string*>(data);
      });
  return index;
}

void note_unpinned(X509_STORE_CTX* store, std::string fingerprint) {
  auto* ssl =
      static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
  if (ssl == nullptr) return;
  delete static_cast<std::string*>(SSL_get_ex_data(ssl, unpinned_index()));
  SSL_set_ex_data(ssl, unpinned_index(), new std::string(std::move(fingerprint)));
}

std::string openssl_reason() {
  const unsigned long code = ERR_get_error();
  ERR_clear_error();
  if (code == 0) return "unknown OpenSSL error";
  std::array<char, 256> text{};
  ERR_error_string_n(code, text.data(), text.size());
  return text.data();
}

}  // namespace

TlsServer::TlsServer(std::string listener, TlsConfig config)
    : listener_(std::move(listener)), config_(std::move(config)) {
  context_.store(build());
}

std::string TlsServer::reload() {
  try {
    context_.store(build());
    return {};
  } catch (const std::exception& e) {
    return e.what();
  }
}

std::shared_ptr<asio::ssl::context> TlsServer::build() const {
  auto fail = [this](std::string_view key, std::string_view file, std::string_view why) {
    return std::runtime_error(fmt::format("listener {}: tls.{} {}: {}", listener_, key, file, why));
  };
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
  SSL_CTX* native = ctx->native_handle();
  // TLS 1.2 and 1.3 only; no renegotiation (a client could otherwise make
  // hostd redo the expensive half of a handshake at will).
  SSL_CTX_set_min_proto_version(native, TLS1_2_VERSION);
  SSL_CTX_set_options(native, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  // An idle connection gives its record buffers back to OpenSSL.
  SSL_CTX_set_mode(native, SSL_MODE_RELEASE_BUFFERS);

  error_code ec;
  ctx->use_certificate_chain_file(config_.certificate, ec);
  if (ec) throw fail("certificate", config_.certificate, openssl_reason());
  ctx->use_private_key_file(config_.key, asio::ssl::context::pem, ec);
  if (ec) throw fail("key", config_.key, openssl_reason());
  if (SSL_CTX_check_private_key(native) != 1)
    throw fail("key", config_.key, "does not match tls.certificate");

  if (!config_.client_ca.empty()) {
    ctx->load_verify_file(config_.client_ca, ec);
    if (ec) throw fail("client_ca", config_.client_ca, openssl_reason());
    // Tell clients which CAs are accepted, so one with several certificates picks right.
    STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(config_.client_ca.c_str());
    if (names == nullptr) throw fail("client_ca", config_.client_ca, "holds no CA certificate");
    SSL_CTX_set_client_CA_list(native, names);
    ctx->set_verify_mode(asio::ssl::verify_peer | asio::ssl::verify_fail_if_no_peer_cert);
    ctx->set_verify_callback([pins = config_.pinned_sha256](bool preverified,
                                                            asio::ssl::verify_context& verify) {
      if (!preverified) return false;
      X509_STORE_CTX* store = verify.native_handle();
      if (pins.empty() || X509_STORE_CTX_get_error_depth(store) != 0) return true;
      const std::string fingerprint = sha256_fingerprint(X509_STORE_CTX_get_current_cert(store));
      if (std::find(pins.begin(), pins.end(), fingerprint) != pins.end()) return true;
      note_unpinned(store, fingerprint);
      X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
      return false;
    });
    // Resumed sessions keep the verified certificate; OpenSSL refuses to
    // resume a verified session without a context id to scope it to.
    static constexpr unsigned char session_scope[] = "vmgate-hostd";
    SSL_CTX_set_session_id_context(native, session_scope, sizeof session_scope - 1);
  }
  return ctx;
}

Identity certificate_identity(SSL* ssl) {
  Identity identity;
  X509* cert = ssl == nullptr ? nullptr : SSL_get0_peer_certificate(ssl);
  if (cert == nullptr) return identity;
  auto* sans =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (sans != nullptr) {
    for (int i = 0; i < sk_GENERAL_NAME_num(sans); ++i) {
      const GENERAL_NAME* san = sk_GENERAL_NAME_value(sans, i);
      std::string name;
      if (san->type == GEN_DNS) name = printable(san->d.dNSName);
      if (san->type == GEN_URI) name = printable(san->d.uniformResourceIdentifier);
      if (!name.empty()) identity.certificate_names.push_back(std::move(name));
    }
    GENERAL_NAMES_free(sans);
  }
  X509_NAME* subject = X509_get_subject_name(cert);
  const int cn = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
  if (cn >= 0) {
    std::string name = printable(X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, cn)));
    if (!name.empty()) identity.certificate_names.push_back(std::move(name));
  }
  if (identity.certificate_names.empty()) return identity;  // verified, but names nothing
  identity.kind = Identity::Kind::certificate;
  identity.name = identity.certificate_names.front();
  return identity;
}

std::string handshake_failure(SSL* ssl, error_code ec) {
  const long verified = ssl == nullptr ? X509_V_OK : SSL_get_verify_result(ssl);
  if (verified == X509_V_ERR_APPLICATION_VERIFICATION) {
    const auto* fingerprint =
        static_cast<const std::string*>(SSL_get_ex_data(ssl, unpinned_index()));
    return fmt::format("client certificate sha256:{} is not pinned (tls.pinned_sha256)",
                       fingerprint != nullptr ? *fingerprint : std::string("?"));
  }
  if (verified != X509_V_OK)
    return fmt::format("client certificate: {}", X509_verify_cert_error_string(verified));
  return ec.message();
}

std::string peer_fingerprint(SSL* ssl) {
  return sha256_fingerprint(ssl == nullptr ? nullptr : SSL_get0_peer_certificate(ssl));
}

}  // namespace vmgate::hostd
