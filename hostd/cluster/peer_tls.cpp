#include "hostd/cluster/peer_tls.hpp"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <cstdio>
#include <stdexcept>

#include <fmt/format.h>

namespace vmgate::hostd {
namespace {

std::string openssl_reason() {
  const unsigned long code = ERR_get_error();
  ERR_clear_error();
  if (code == 0) return "unknown error";
  char text[256];
  ERR_error_string_n(code, text, sizeof text);
  return text;
}

void configure(asio::ssl::context& context, const ClusterConfig& config) {
  namespace ssl = asio::ssl;
  context.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                      ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
  auto step = [](const std::string& file, std::string_view what, auto&& call) {
    error_code ec;
    call(ec);
    if (ec) throw std::runtime_error(fmt::format("cluster.{}: {}: {}", what, file, ec.message()));
  };
  step(config.peer_certificate, "peer_certificate",
       [&](error_code& ec) { context.use_certificate_chain_file(config.peer_certificate, ec); });
  step(config.peer_key, "peer_key", [&](error_code& ec) {
    context.use_private_key_file(config.peer_key, ssl::context::pem, ec);
  });
  if (SSL_CTX_check_private_key(context.native_handle()) != 1)
    throw std::runtime_error(fmt::format("cluster.peer_key: {} does not match {}", config.peer_key,
                                         config.peer_certificate));
  step(config.peer_ca, "peer_ca",
       [&](error_code& ec) { context.load_verify_file(config.peer_ca, ec); });
}

// Whether the certificate in `path` names `host`, as peers will check it.
void check_names(const std::string& path, const std::string& host) {
  std::FILE* file = std::fopen(path.c_str(), "r");
  if (file == nullptr)
    throw std::runtime_error(fmt::format("cluster.peer_certificate: cannot open {}", path));
  X509* cert = PEM_read_X509(file, nullptr, nullptr, nullptr);
  std::fclose(file);
  if (cert == nullptr)
    throw std::runtime_error(
        fmt::format("cluster.peer_certificate: {}: {}", path, openssl_reason()));
  const int named = X509_check_host(cert, host.data(), host.size(), 0, nullptr);
  X509_free(cert);
  if (named != 1) {
    throw std::runtime_error(fmt::format(
        "cluster.peer_certificate: {} does not name this host, '{}' (cluster.host_name): its "
        "peers check that the certificate names the host its record says it is",
        path, host));
  }
}

}  // namespace

PeerTls load_peer_tls(const ClusterConfig& config, const std::string& host) {
  namespace ssl = asio::ssl;
  check_names(config.peer_certificate, host);
  PeerTls tls;
  tls.server = std::make_shared<ssl::context>(ssl::context::tls_server);
  configure(*tls.server, config);
  tls.server->set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
  tls.client = std::make_shared<ssl::context>(ssl::context::tls_client);
  configure(*tls.client, config);
  tls.client->set_verify_mode(ssl::verify_peer);
  return tls;
}

}  // namespace vmgate::hostd
