// Answering one DNS query for names under routing.host_suffix
// (docs/architecture.md, "DNS"): `vm7.vms.example` → the addresses of the
// host that runs vm7, so that a client connects straight to that host.
//
// Bytes in, bytes out, no I/O: the server (dns_server.hpp) carries them over
// UDP and TCP, the fuzz target feeds it anything. The wire format is
// NLnet Labs' ldns's (RFC 1035 §4, EDNS(0) RFC 6891); what is vmgate's is
// which names exist and what they answer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/ip/address.hpp>

namespace vmgate::hostd {

// What the zone knows of one name under the suffix.
struct DnsName {
  bool exists = false;  // a VM of that name (or UUID) is in the directory
  // The host's addresses; both empty for a VM whose host has none to give
  // (an answer with no records: NODATA, not NXDOMAIN).
  std::vector<boost::asio::ip::address> addresses;
};

struct DnsZone {
  std::string suffix;  // "vms.example", no leading or trailing dot
  std::uint32_t ttl_seconds = 5;
  // The label(s) before the suffix, as the client wrote them ("VM7").
  std::function<DnsName(std::string_view name)> lookup;
};

struct DnsAnswer {
  std::vector<std::uint8_t> wire;  // empty: send nothing (not a query at all)
  int rcode = 0;                   // RFC 1035 §4.1.1 (0 NOERROR, 3 NXDOMAIN, 5 REFUSED, ...)
  std::string name;                // the question's name, for the log; empty if none
  std::string type;                // "A", "AAAA", ...
  std::size_t answers = 0;
};

// Over UDP an answer is cut to what the client can take (512 bytes, or its
// EDNS size up to 1232) and marked truncated (TC), so that it asks over TCP.
enum class DnsCarrier { udp, tcp };

DnsAnswer answer_dns_query(std::span<const std::uint8_t> query, const DnsZone& zone,
                           DnsCarrier carrier);

}  // namespace vmgate::hostd
