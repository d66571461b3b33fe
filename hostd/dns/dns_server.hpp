// hostd's DNS listener: each configured address over UDP and TCP
// (RFC 1035 §4.2, RFC 7766: TCP is not optional), answered by
// answer_dns_query() from the zone.
//
// One coroutine per UDP socket and per TCP connection; a TCP connection
// may carry many queries (answered in order), and is closed after
// dns.tcp_idle_timeout_ms without one or when dns.max_tcp_connections are
// open already.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "common/asio.hpp"
#include "hostd/config/hostd_config.hpp"
#include "hostd/dns/dns_answer.hpp"

namespace vmgate::hostd {

class DnsServer {
 public:
  DnsServer(asio::io_context& io, const DnsConfig& config, DnsZone zone);
  // Binds every address; throws std::runtime_error naming the address.
  void start();
  void stop();
  // "udp:127.0.0.1:5353" and "tcp:127.0.0.1:5353" for each address, port 0
  // resolved to the bound port (the same for both).
  const std::vector<std::string>& bound_addresses() const { return bound_; }

 private:
  awaitable<void> serve_udp(asio::ip::udp::socket& socket);
  awaitable<void> accept_tcp(asio::ip::tcp::acceptor& acceptor);
  awaitable<void> serve_tcp(asio::ip::tcp::socket socket);

  asio::io_context& io_;
  const DnsConfig& config_;
  const DnsZone zone_;
  std::vector<std::unique_ptr<asio::ip::udp::socket>> udp_;
  std::vector<std::unique_ptr<asio::ip::tcp::acceptor>> tcp_;
  std::vector<std::string> bound_;
  std::atomic<unsigned> tcp_connections_{0};
};

}  // namespace vmgate::hostd
