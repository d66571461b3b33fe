#include "hostd/dns/dns_answer.hpp"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <memory>

#include <fmt/format.h>
// ldns/common.h redefines bool, true and false unless stdbool.h came first.
#include <stdbool.h>

#include <ldns/ldns.h>

namespace vmgate::hostd {
namespace {

struct PacketFree {
  void operator()(ldns_pkt* p) const { ldns_pkt_free(p); }
};
using Packet = std::unique_ptr<ldns_pkt, PacketFree>;
struct RrFree {
  void operator()(ldns_rr* rr) const { ldns_rr_free(rr); }
};
using Rr = std::unique_ptr<ldns_rr, RrFree>;
struct CFree {
  void operator()(void* p) const { std::free(p); }
};

// RFC 1035 §4.2.1: without EDNS a UDP message is at most 512 bytes. With it
// the client says what it takes; 1232 is the DNS flag day 2020 size that
// avoids IP fragmentation on every common path.
constexpr std::size_t plain_udp_limit = 512;
constexpr std::uint16_t edns_udp_limit = 1232;

constexpr int rcode_formerr = LDNS_RCODE_FORMERR;
constexpr int rcode_nxdomain = LDNS_RCODE_NXDOMAIN;
constexpr int rcode_notimp = LDNS_RCODE_NOTIMPL;
constexpr int rcode_refused = LDNS_RCODE_REFUSED;

char ascii_lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return ascii_lower(x) == ascii_lower(y);
         });
}

// Where `name` sits relative to the zone: outside it, its apex, or a name
// under it (then `prefix` is what comes before ".suffix").
enum class Place { outside, apex, below };
Place place_of(std::string_view name, std::string_view suffix, std::string_view& prefix) {
  if (iequals(name, suffix)) return Place::apex;
  if (name.size() <= suffix.size() + 1) return Place::outside;
  const std::size_t dot = name.size() - suffix.size() - 1;
  if (name[dot] != '.' || !iequals(name.substr(dot + 1), suffix)) return Place::outside;
  prefix = name.substr(0, dot);
  return Place::below;
}

std::vector<std::uint8_t> to_wire(const ldns_pkt* packet) {
  std::uint8_t* data = nullptr;
  std::size_t size = 0;
  if (ldns_pkt2wire(&data, packet, &size) != LDNS_STATUS_OK) {
    std::free(data);
    return {};
  }
  std::unique_ptr<std::uint8_t, CFree> owned(data);
  return {data, data + size};
}

// A header-only answer for a query ldns could not read: the client's id and
// opcode back, so that it can match the error to what it sent.
std::vector<std::uint8_t> header_only(std::span<const std::uint8_t> query, int rcode) {
  std::vector<std::uint8_t> wire(12, 0);
  wire[0] = query[0];
  wire[1] = query[1];
  const std::uint8_t opcode_and_rd = query[2] & 0x79;  // opcode (4 bits) and RD
  wire[2] = static_cast<std::uint8_t>(0x80 | opcode_and_rd);
  wire[3] = static_cast<std::uint8_t>(rcode & 0x0F);
  return wire;
}

// The zone's SOA (RFC 2308 §3: a negative answer carries it, so resolvers
// may cache the absence for its minimum, here the records' own TTL).
Rr start_of_authority(const DnsZone& zone) {
  ldns_rr* rr = nullptr;
  const std::string text =
      fmt::format("{0}. {1} IN SOA hostd.{0}. hostmaster.{0}. 1 {1} {1} {1} {1}", zone.suffix,
                  zone.ttl_seconds);
  if (ldns_rr_new_frm_str(&rr, text.c_str(), 0, nullptr, nullptr) != LDNS_STATUS_OK) return {};
  return Rr(rr);
}

Rr address_record(const ldns_rdf* owner, const boost::asio::ip::address& address,
                  std::uint32_t ttl) {
  Rr rr(ldns_rr_new());
  if (!rr) return {};
  ldns_rr_set_owner(rr.get(), ldns_rdf_clone(owner));
  ldns_rr_set_class(rr.get(), LDNS_RR_CLASS_IN);
  ldns_rr_set_ttl(rr.get(), ttl);
  ldns_rdf* data = nullptr;
  if (address.is_v4()) {
    const auto bytes = address.to_v4().to_bytes();
    ldns_rr_set_type(rr.get(), LDNS_RR_TYPE_A);
    data = ldns_rdf_new_frm_data(LDNS_RDF_TYPE_A, bytes.size(), bytes.data());
  } else {
    const auto bytes = address.to_v6().to_bytes();
    ldns_rr_set_type(rr.get(), LDNS_RR_TYPE_AAAA);
    data = ldns_rdf_new_frm_data(LDNS_RDF_TYPE_AAAA, bytes.size(), bytes.data());
  }
  if (!data) return {};
  ldns_rr_push_rdf(rr.get(), data);
  return rr;
}

void push(ldns_pkt* packet, ldns_pkt_section section, Rr rr) {
  if (rr && ldns_pkt_push_rr(packet, section, rr.get())) rr.release();
}

}  // namespace

DnsAnswer answer_dns_query(std::span<const std::uint8_t> query, const DnsZone& zone,
                           DnsCarrier carrier) {
  DnsAnswer answer;
  // Shorter than a header, or a response (QR set): never answered, so two
  // servers cannot be made to answer each other forever.
  if (query.size() < 12 || (query[2] & 0x80) != 0) return answer;

  ldns_pkt* parsed = nullptr;
  if (ldns_wire2pkt(&parsed, query.data(), query.size()) != LDNS_STATUS_OK) {
    ldns_pkt_free(parsed);
    answer.rcode = rcode_formerr;
    answer.wire = header_only(query, rcode_formerr);
    return answer;
  }
  const Packet request(parsed);

  const Packet reply(ldns_pkt_new());
  if (!reply) return answer;
  ldns_pkt_set_id(reply.get(), ldns_pkt_id(request.get()));
  ldns_pkt_set_qr(reply.get(), true);
  ldns_pkt_set_opcode(reply.get(), ldns_pkt_get_opcode(request.get()));
  ldns_pkt_set_rd(reply.get(), ldns_pkt_rd(request.get()));
  const bool edns = ldns_pkt_edns(request.get());
  if (edns) ldns_pkt_set_edns_udp_size(reply.get(), edns_udp_limit);
  auto finish = [&](int rcode) {
    answer.rcode = rcode;
    ldns_pkt_set_rcode(reply.get(), static_cast<std::uint8_t>(rcode));
    answer.answers = ldns_pkt_ancount(reply.get());
    answer.wire = to_wire(reply.get());
    if (carrier == DnsCarrier::udp) {
      const std::size_t limit = edns
                                    ? std::clamp<std::size_t>(ldns_pkt_edns_udp_size(request.get()),
                                                              plain_udp_limit, edns_udp_limit)
                                    : plain_udp_limit;
      if (answer.wire.size() > limit) {
        // RFC 2181 §9: drop what does not fit and say so; the client retries over TCP.
        ldns_rr_list_deep_free(ldns_pkt_answer(reply.get()));
        ldns_pkt_set_answer(reply.get(), ldns_rr_list_new());
        ldns_pkt_set_ancount(reply.get(), 0);
        ldns_rr_list_deep_free(ldns_pkt_authority(reply.get()));
        ldns_pkt_set_authority(reply.get(), ldns_rr_list_new());
        ldns_pkt_set_nscount(reply.get(), 0);
        ldns_pkt_set_tc(reply.get(), true);
        answer.answers = 0;
        answer.wire = to_wire(reply.get());
      }
    }
    return answer;
  };

  if (ldns_pkt_get_opcode(request.get()) != LDNS_PACKET_QUERY) return finish(rcode_notimp);
  if (ldns_pkt_qdcount(request.get()) != 1) return finish(rcode_formerr);
  const ldns_rr* question = ldns_rr_list_rr(ldns_pkt_question(request.get()), 0);
  push(reply.get(), LDNS_SECTION_QUESTION, Rr(ldns_rr_clone(question)));
  if (edns && ldns_pkt_edns_version(request.get()) != 0) {
    // RFC 6891 §6.1.3: BADVERS (16) is rcode 0 with extended rcode 1.
    ldns_pkt_set_edns_extended_rcode(reply.get(), 1);
    return finish(0);
  }

  const ldns_rdf* owner = ldns_rr_owner(question);
  const std::unique_ptr<char, CFree> owner_text(ldns_rdf2str(owner));
  if (!owner_text) return finish(LDNS_RCODE_SERVFAIL);
  std::string_view name(owner_text.get());
  if (name.ends_with('.')) name.remove_suffix(1);
  answer.name = name;
  const ldns_rr_type type = ldns_rr_get_type(question);
  const std::unique_ptr<char, CFree> type_text(ldns_rr_type2str(type));
  if (type_text) answer.type = type_text.get();

  const ldns_rr_class klass = ldns_rr_get_class(question);
  if (klass != LDNS_RR_CLASS_IN && klass != LDNS_RR_CLASS_ANY) return finish(rcode_refused);
  std::string_view prefix;
  const Place place = place_of(name, zone.suffix, prefix);
  // Not ours, and hostd does no recursion (RA stays clear): refused.
  if (place == Place::outside) return finish(rcode_refused);
  ldns_pkt_set_aa(reply.get(), true);

  if (place == Place::apex) {
    if (type == LDNS_RR_TYPE_SOA || type == LDNS_RR_TYPE_ANY)
      push(reply.get(), LDNS_SECTION_ANSWER, start_of_authority(zone));
    else
      push(reply.get(), LDNS_SECTION_AUTHORITY, start_of_authority(zone));
    return finish(0);
  }
  const DnsName found = zone.lookup ? zone.lookup(prefix) : DnsName{};
  if (!found.exists) {
    push(reply.get(), LDNS_SECTION_AUTHORITY, start_of_authority(zone));
    return finish(rcode_nxdomain);
  }
  const bool want_v4 = type == LDNS_RR_TYPE_A || type == LDNS_RR_TYPE_ANY;
  const bool want_v6 = type == LDNS_RR_TYPE_AAAA || type == LDNS_RR_TYPE_ANY;
  for (const auto& address : found.addresses) {
    if ((address.is_v4() && want_v4) || (address.is_v6() && want_v6))
      push(reply.get(), LDNS_SECTION_ANSWER, address_record(owner, address, zone.ttl_seconds));
  }
  // The name exists but has no record of that type (RFC 2308 §2.2: NODATA).
  if (ldns_pkt_ancount(reply.get()) == 0)
    push(reply.get(), LDNS_SECTION_AUTHORITY, start_of_authority(zone));
  return finish(0);
}

}  // namespace vmgate::hostd
