// The server name a TLS client asks for, read from its ClientHello, for a
// passthrough listener (docs/architecture.md, "SNI passthrough"): hostd
// routes on the name and relays the TLS, which it never terminates.
//
// The scan is pure and bounded: it reads only the bytes it is given (the
// start of the connection, as read so far), keeps no state between calls and
// allocates nothing but the name it returns. It follows
//   - the record layer (RFC 8446 §5.1; TLS 1.2, RFC 5246 §6.2.1): a
//     ClientHello may be split over several handshake records, and no record
//     of another type may come between them;
//   - the ClientHello (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2), whose extensions
//     are optional before TLS 1.3;
//   - server_name (RFC 6066 §3): at most one host_name, an ASCII DNS
//     hostname without a trailing dot, never an address literal.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace vmgate::hostd {

struct ClientHelloScan {
  enum class Status {
    need_more,  // the ClientHello is not complete yet
    found,      // a server_name host_name, valid and lowercased
    no_sni,     // a complete ClientHello without a host_name
    not_tls,    // the connection does not start with a TLS handshake record
    malformed,  // a TLS record or ClientHello that breaks its grammar
  };
  Status status = Status::need_more;
  // need_more: the ClientHello takes at least this many bytes in all (more
  // than the input holds now). Bytes before then can still show it
  // malformed, so a caller scans again after every read.
  std::size_t need = 0;
  std::string name;         // found
  std::string_view reason;  // no_sni, not_tls, malformed: a short, static phrase
};

// Scans the first bytes of a connection. Bytes past the ClientHello (the
// client's next records) are not looked at.
ClientHelloScan scan_client_hello(std::span<const std::uint8_t> bytes);

// Whether `name` is what RFC 6066 §3 lets a host_name be: a DNS hostname
// (RFC 1123 §2.1: labels of 1-63 letters, digits and hyphens, no hyphen at
// either end; 253 bytes at most), with no trailing dot, whose last label is
// not all digits (so no IPv4 literal passes; an IPv6 one has ':').
bool valid_sni_host_name(std::string_view name);

}  // namespace vmgate::hostd
