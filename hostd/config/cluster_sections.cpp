#include "hostd/config/config_sections.hpp"

#include <algorithm>
#include <optional>

#include <arpa/inet.h>

#include <fmt/format.h>

#include "hostd/cluster/cluster_records.hpp"

namespace vmgate::hostd::config_sections {

using namespace std::chrono_literals;
using config::Section;

namespace {

bool valid_ip_address(const std::string& text) {
  unsigned char bytes[16];
  return inet_pton(AF_INET, text.c_str(), bytes) == 1 ||
         inet_pton(AF_INET6, text.c_str(), bytes) == 1;
}

// 0.0.0.0 or :: (any spelling): a wildcard to bind, not an address to reach.
bool unspecified_ip_address(const std::string& text) {
  unsigned char bytes[16] = {};
  const bool parsed =
      inet_pton(AF_INET, text.c_str(), bytes) == 1 || inet_pton(AF_INET6, text.c_str(), bytes) == 1;
  return parsed &&
         std::all_of(std::begin(bytes), std::end(bytes), [](unsigned char b) { return b == 0; });
}

// "vms.example": labels of letters, digits, '-' and '_', each 1..63
// bytes, 253 in all (RFC 1035 §2.3.4), as the zone's SOA is written.
bool valid_dns_name(std::string_view name) {
  if (name.empty() || name.size() > 253) return false;
  std::size_t label = 0;
  for (char c : name) {
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
      continue;
    }
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '_';
    if (!ok || ++label > 63) return false;
  }
  return label != 0;
}

// "127.0.0.1:53", "[::1]:5353".
std::optional<DnsListen> parse_dns_listen(std::string_view text) {
  DnsListen l;
  std::string_view port;
  if (text.starts_with('[')) {
    const auto close = text.find("]:");
    if (close == std::string_view::npos) return std::nullopt;
    l.host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos || text.find(':') != colon) return std::nullopt;
    l.host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  unsigned value = 0;
  if (port.empty() || port.size() > 5) return std::nullopt;
  for (char c : port) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + static_cast<unsigned>(c - '0');
  }
  if (value > 65535 || !valid_ip_address(l.host)) return std::nullopt;
  l.port = static_cast<std::uint16_t>(value);
  return l;
}

}  // namespace

ClusterConfig read_cluster(const Section& s) {
  ClusterConfig c;
  c.enabled = s.get_bool("enabled", c.enabled);
  c.host_name = s.get_string("host_name", "");
  if (!c.host_name.empty() && !valid_host_name(c.host_name))
    s.fail("host_name", "must be letters, digits, '.', '-' or '_' (it is part of etcd keys)");
  if (auto endpoints = s.get_string_array("etcd_endpoints", {}); !endpoints.empty()) {
    c.etcd_endpoints.clear();
    for (const auto& text : endpoints) {
      auto parsed = transport::parse(text);
      if (!parsed) s.fail("etcd_endpoints", parsed.error());
      if (parsed->kind != transport::Kind::tcp)
        s.fail("etcd_endpoints", fmt::format("'{}': etcd is reached at tcp:HOST:PORT", text));
      c.etcd_endpoints.push_back(*parsed);
    }
  }
  c.lease_ttl = std::chrono::seconds(s.get_int("lease_ttl_s", c.lease_ttl.count(), 2, 3600));
  c.etcd_timeout = s.get_ms("etcd_timeout_ms", c.etcd_timeout, 50ms, 60'000ms);
  c.reconcile_interval =
      s.get_ms("reconcile_interval_ms", c.reconcile_interval, 1000ms, 86'400'000ms);
  c.reconnect_min = s.get_ms("reconnect_min_ms", c.reconnect_min, 10ms, 600'000ms);
  c.reconnect_max = s.get_ms("reconnect_max_ms", c.reconnect_max, 10ms, 3'600'000ms);
  if (c.reconnect_max < c.reconnect_min)
    s.fail("reconnect_max_ms", "must not be smaller than reconnect_min_ms");
  if (auto listen = s.optional_string("peer_listen")) {
    auto parsed = transport::parse(*listen);
    if (!parsed) s.fail("peer_listen", parsed.error());
    if (parsed->kind != transport::Kind::tcp) s.fail("peer_listen", "is tcp:HOST:PORT");
    c.peer_listen = *parsed;
  }
  c.peer_address = s.get_string("peer_address", "");
  if (!c.peer_address.empty()) {
    auto parsed = transport::parse(c.peer_address);
    if (!parsed) s.fail("peer_address", parsed.error());
    if (parsed->kind != transport::Kind::tcp) s.fail("peer_address", "is tcp:HOST:PORT");
  }
  c.client_addresses = s.get_string_array("client_addresses", {});
  for (const std::string& address : c.client_addresses) {
    if (!valid_ip_address(address))
      s.fail("client_addresses", fmt::format("'{}' is not an IPv4 or IPv6 address", address));
    // A DNS answer of 0.0.0.0 or :: sends the client nowhere (or to itself).
    if (unspecified_ip_address(address))
      s.fail("client_addresses",
             fmt::format("'{}' is not an address a client can connect to", address));
  }
  c.peer_certificate = s.get_string("peer_certificate", "");
  c.peer_key = s.get_string("peer_key", "");
  c.peer_ca = s.get_string("peer_ca", "");
  c.peer_connect_timeout =
      s.get_ms("peer_connect_timeout_ms", c.peer_connect_timeout, 50ms, 600'000ms);
  c.peer_header_bytes = static_cast<std::uint32_t>(
      s.get_int("peer_header_bytes", c.peer_header_bytes, 1024, 1024 * 1024));
  if (c.enabled) {
    // Hosts trust each other's forwarded requests (the client's identity
    // and address ride in them): never without mutual TLS.
    for (auto [key, value] :
         {std::pair{"peer_certificate", &c.peer_certificate}, std::pair{"peer_key", &c.peer_key},
          std::pair{"peer_ca", &c.peer_ca}}) {
      if (value->empty())
        s.fail(key,
               "is required in cluster mode: hosts authenticate each other with TLS "
               "certificates from one cluster CA (PEM files)");
    }
    const bool wildcard =
        c.peer_listen.host == "0.0.0.0" || c.peer_listen.host == "::" || c.peer_listen.port == 0;
    if (c.peer_address.empty() && wildcard)
      s.fail("peer_address",
             fmt::format("is required when peer_listen ({}) is not an address other hosts can "
                         "connect to",
                         c.peer_listen.to_string()));
  }
  s.reject_unknown_keys();
  return c;
}

DnsConfig read_dns(const Section& s, const RoutingConfig& routing) {
  DnsConfig d;
  for (const std::string& text : s.get_string_array("listen", {})) {
    auto listen = parse_dns_listen(text);
    if (!listen)
      s.fail("listen",
             fmt::format("'{}' is not a numeric HOST:PORT ('127.0.0.1:53', '[::1]:53')", text));
    d.listen.push_back(*listen);
  }
  d.addresses = s.get_string_array("addresses", {});
  for (const std::string& address : d.addresses)
    if (!valid_ip_address(address))
      s.fail("addresses", fmt::format("'{}' is not an IPv4 or IPv6 address", address));
  d.ttl_seconds = static_cast<std::uint32_t>(s.get_int("ttl_seconds", d.ttl_seconds, 0, 86'400));
  d.max_tcp_connections = static_cast<std::uint32_t>(
      s.get_int("max_tcp_connections", d.max_tcp_connections, 1, 65'536));
  d.tcp_idle_timeout = s.get_ms("tcp_idle_timeout_ms", d.tcp_idle_timeout, 100ms, 600'000ms);
  if (d.enabled()) {
    if (routing.host_suffix.empty())
      s.fail("listen", "DNS answers names under [routing] host_suffix: set it");
    if (!valid_dns_name(std::string_view(routing.host_suffix).substr(1)))
      s.fail("listen",
             fmt::format("[routing] host_suffix '{}' is not a DNS name", routing.host_suffix));
    if (d.addresses.empty())
      s.fail("addresses", "the addresses to answer for this host's VMs are needed");
  }
  s.reject_unknown_keys();
  return d;
}

}  // namespace vmgate::hostd::config_sections
