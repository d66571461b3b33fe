// The TLS of the peer link between hostds: both ends present a certificate
// from the cluster CA (cluster.peer_ca), and each names the host it belongs
// to (a DNS SAN, or the CN without SANs), which is the name of its host
// record in etcd. Read once at start.
#pragma once

#include <memory>

#include <boost/asio/ssl/context.hpp>

#include "common/asio.hpp"
#include "hostd/config/hostd_config.hpp"

namespace vmgate::hostd {

struct PeerTls {
  std::shared_ptr<asio::ssl::context> server;  // the peer listener: client certificates required
  std::shared_ptr<asio::ssl::context>
      client;  // forwarding: this host's certificate, peers' verified
};

// Throws std::runtime_error naming the file and OpenSSL's reason, or saying
// that the certificate does not name `host` (a host that could not prove
// its own name to its peers would have every forwarded request refused).
PeerTls load_peer_tls(const ClusterConfig& config, const std::string& host);

}  // namespace vmgate::hostd
