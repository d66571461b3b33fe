// libFuzzer target for hostd's DNS answers (hostd/dns/dns_answer.hpp): any
// bytes a client can send over UDP or TCP. The zone knows "vm1" (one v4 and
// one v6 address) and "many" (more addresses than a UDP answer can hold).
// Besides "no crash, no sanitizer report", it checks:
//   - a message shorter than a header, or a response (QR set), gets no answer;
//   - anything else gets one: at least a header, the query's id, QR set;
//   - over UDP an answer never exceeds 1232 bytes (512 without EDNS), and one
//     that was cut says so (TC);
//   - every answer is a DNS message ldns can read back.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>

#include "hostd/dns/dns_answer.hpp"

// ldns/common.h redefines bool, true and false unless stdbool.h came first.
#include <stdbool.h>

#include <ldns/ldns.h>

namespace {

using vmgate::hostd::DnsCarrier;
using vmgate::hostd::DnsName;
using vmgate::hostd::DnsZone;

void require(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "dns_query_fuzz: %s\n", what);
  std::abort();
}

DnsZone make_zone() {
  DnsZone zone;
  zone.suffix = "vms.example";
  zone.ttl_seconds = 5;
  zone.lookup = [](std::string_view name) {
    DnsName found;
    if (name == "vm1") {
      found.exists = true;
      found.addresses = {boost::asio::ip::make_address("192.0.2.10"),
                         boost::asio::ip::make_address("2001:db8::10")};
    } else if (name == "many") {
      found.exists = true;
      for (unsigned i = 0; i < 200; ++i)
        found.addresses.push_back(boost::asio::ip::address_v4(0xC0000200u + i));
    }
    return found;
  };
  return zone;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const DnsZone zone = make_zone();
  const std::span<const std::uint8_t> query(data, size);
  const bool no_answer = size < 12 || (data[2] & 0x80) != 0;
  for (DnsCarrier carrier : {DnsCarrier::udp, DnsCarrier::tcp}) {
    const auto answer = vmgate::hostd::answer_dns_query(query, zone, carrier);
    if (no_answer) {
      require(answer.wire.empty(), "answered a response or a runt");
      continue;
    }
    require(answer.wire.size() >= 12, "an answer shorter than a header");
    require(answer.wire[0] == data[0] && answer.wire[1] == data[1], "the id changed");
    require((answer.wire[2] & 0x80) != 0, "an answer without QR");
    if (carrier == DnsCarrier::udp) require(answer.wire.size() <= 1232, "a UDP answer over 1232");
    ldns_pkt* back = nullptr;
    require(ldns_wire2pkt(&back, answer.wire.data(), answer.wire.size()) == LDNS_STATUS_OK,
            "an answer ldns cannot read");
    if (carrier == DnsCarrier::udp && !ldns_pkt_edns(back))
      require(answer.wire.size() <= 512 || ldns_pkt_tc(back), "over 512 without EDNS or TC");
    ldns_pkt_free(back);
  }
  return 0;
}
