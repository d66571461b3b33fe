#include "hostd/dns/dns_server.hpp"

#include <array>
#include <stdexcept>

#include <fmt/format.h>

#include "common/deadline.hpp"
#include "common/log.hpp"

namespace vmgate::hostd {
namespace {

namespace ip = asio::ip;

// RFC 1035 §2.3.4 caps a UDP message at 512 bytes without EDNS; a query
// with EDNS options is still far smaller than this. Anything larger is cut
// by recvfrom and then refused by the parser.
constexpr std::size_t max_udp_query = 4096;
// A TCP message says its length in two bytes (RFC 1035 §4.2.2).
constexpr std::size_t max_tcp_message = 65535;

void log_failure(std::string_view event, std::exception_ptr e) {
  if (e) log::error(event).kv("error", log::describe(e));
}

void log_query(std::string_view carrier, std::string_view client, const DnsAnswer& answer) {
  log::debug("dns_query")
      .kv("carrier", carrier)
      .kv("client", client)
      .kv("name", answer.name)
      .kv("type", answer.type)
      .kv("rcode", answer.rcode)
      .kv("answers", answer.answers);
}

std::string describe(const ip::address& address, std::uint16_t port) {
  return address.is_v6() ? fmt::format("[{}]:{}", address.to_string(), port)
                         : fmt::format("{}:{}", address.to_string(), port);
}

}  // namespace

DnsServer::DnsServer(asio::io_context& io, const DnsConfig& config, DnsZone zone)
    : io_(io), config_(config), zone_(std::move(zone)) {}

void DnsServer::start() {
  for (const auto& listen : config_.listen) {
    error_code ec;
    const ip::address address = ip::make_address(listen.host, ec);
    if (ec) throw std::runtime_error(fmt::format("dns listener {}: {}", listen.host, ec.message()));
    auto fail = [&](std::string_view what) {
      throw std::runtime_error(fmt::format("dns listener: cannot {} {}: {} (change [dns] listen)",
                                           what, describe(address, listen.port), ec.message()));
    };
    // TCP first: with port 0 it picks the port, and UDP takes the same one.
    auto acceptor = std::make_unique<ip::tcp::acceptor>(io_);
    const ip::tcp::endpoint tcp_endpoint(address, static_cast<std::uint16_t>(listen.port));
    acceptor->open(tcp_endpoint.protocol(), ec);
    if (ec) fail("open");
    acceptor->set_option(ip::tcp::acceptor::reuse_address(true), ec);
    acceptor->bind(tcp_endpoint, ec);
    if (ec) fail("bind tcp");
    acceptor->listen(asio::socket_base::max_listen_connections, ec);
    if (ec) fail("listen on");
    const std::uint16_t port = acceptor->local_endpoint().port();

    auto udp = std::make_unique<ip::udp::socket>(io_);
    const ip::udp::endpoint udp_endpoint(address, port);
    udp->open(udp_endpoint.protocol(), ec);
    if (ec) fail("open");
    udp->bind(udp_endpoint, ec);
    if (ec) fail("bind udp");

    bound_.push_back("udp:" + describe(address, port));
    bound_.push_back("tcp:" + describe(address, port));
    log::info("dns_listening")
        .kv("addr", describe(address, port))
        .kv("suffix", zone_.suffix)
        .kv("ttl", zone_.ttl_seconds);
    asio::co_spawn(io_, serve_udp(*udp),
                   [](std::exception_ptr e) { log_failure("dns_udp_failed", e); });
    asio::co_spawn(io_, accept_tcp(*acceptor),
                   [](std::exception_ptr e) { log_failure("dns_tcp_failed", e); });
    udp_.push_back(std::move(udp));
    tcp_.push_back(std::move(acceptor));
  }
}

void DnsServer::stop() {
  error_code ignored;
  for (auto& socket : udp_)
    socket->close(ignored);
  for (auto& acceptor : tcp_)
    acceptor->close(ignored);
}

awaitable<void> DnsServer::serve_udp(ip::udp::socket& socket) {
  std::array<std::uint8_t, max_udp_query> buffer;
  ip::udp::endpoint client;
  for (;;) {
    auto [ec, n] = co_await socket.async_receive_from(asio::buffer(buffer), client, use_tuple);
    if (ec == asio::error::operation_aborted || !socket.is_open()) co_return;
    if (ec) continue;  // an ICMP error for an earlier answer, reported on this socket
    const DnsAnswer answer = answer_dns_query(std::span(buffer.data(), n), zone_, DnsCarrier::udp);
    log_query("udp", describe(client.address(), client.port()), answer);
    if (answer.wire.empty()) continue;
    // A lost answer is the client's to retry; nothing here waits on it.
    co_await socket.async_send_to(asio::buffer(answer.wire), client, use_tuple);
  }
}

awaitable<void> DnsServer::accept_tcp(ip::tcp::acceptor& acceptor) {
  asio::steady_timer backoff(io_);
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(use_tuple);
    if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
    if (ec) {
      // Out of descriptors, most likely: wait rather than spin.
      log::warn("dns_accept_failed").kv("error", ec.message());
      backoff.expires_after(std::chrono::milliseconds(100));
      co_await backoff.async_wait(use_tuple);
      continue;
    }
    if (tcp_connections_.load() >= config_.max_tcp_connections) {
      error_code ignored;
      log::warn("dns_connection_refused")
          .kv("client", describe(socket.remote_endpoint(ignored).address(),
                                 socket.remote_endpoint(ignored).port()))
          .kv("reason", "max_tcp_connections");
      socket.close(ignored);
      continue;
    }
    ++tcp_connections_;
    asio::co_spawn(io_, serve_tcp(std::move(socket)), [this](std::exception_ptr e) {
      --tcp_connections_;
      log_failure("dns_tcp_session_failed", e);
    });
  }
}

awaitable<void> DnsServer::serve_tcp(ip::tcp::socket socket) {
  error_code ignored;
  const auto peer = socket.remote_endpoint(ignored);
  const std::string client = describe(peer.address(), peer.port());
  Deadline deadline(socket.get_executor());
  std::vector<std::uint8_t> message;
  for (;;) {
    // RFC 7766 §6.2.3: idle connections are the server's to close.
    deadline.expires_after(config_.tcp_idle_timeout, [&socket] {
      error_code e;
      socket.close(e);
    });
    std::array<std::uint8_t, 2> length_bytes;
    auto [ec, n] = co_await asio::async_read(socket, asio::buffer(length_bytes), use_tuple);
    if (ec) break;
    const std::size_t length = (std::size_t{length_bytes[0]} << 8) | length_bytes[1];
    if (length == 0 || length > max_tcp_message) break;
    message.resize(length);
    std::tie(ec, n) = co_await asio::async_read(socket, asio::buffer(message), use_tuple);
    if (ec) break;
    const DnsAnswer answer = answer_dns_query(message, zone_, DnsCarrier::tcp);
    log_query("tcp", client, answer);
    // Not a query at all: a client speaking something else is not worth more.
    if (answer.wire.empty() || answer.wire.size() > max_tcp_message) break;
    const std::array<std::uint8_t, 2> out_length{
        static_cast<std::uint8_t>(answer.wire.size() >> 8),
        static_cast<std::uint8_t>(answer.wire.size() & 0xFF)};
    const std::array<asio::const_buffer, 2> out{asio::buffer(out_length),
                                                asio::buffer(answer.wire)};
    std::tie(ec, n) = co_await asio::async_write(socket, out, use_tuple);
    if (ec) break;
  }
  deadline.expires_never();
  socket.shutdown(asio::socket_base::shutdown_both, ignored);
  socket.close(ignored);
}

}  // namespace vmgate::hostd
