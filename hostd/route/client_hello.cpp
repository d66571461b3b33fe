#include "hostd/route/client_hello.hpp"

#include <algorithm>
#include <array>
#include <optional>

namespace vmgate::hostd {
namespace {

using Scan = ClientHelloScan;
using Status = ClientHelloScan::Status;

// RFC 8446 §5.1: ContentType handshake(22), a 5-byte record header, and a
// fragment of at most 2^14 bytes; TLS 1.0-1.3 all write 3 as the record
// version's major byte.
constexpr std::uint8_t content_type_handshake = 22;
constexpr std::uint8_t tls_major_version = 3;
constexpr std::size_t record_header_bytes = 5;
constexpr std::size_t max_fragment_bytes = std::size_t{1} << 14;
// RFC 8446 §4: HandshakeType client_hello(1), then a 24-bit length.
constexpr std::uint8_t handshake_client_hello = 1;
constexpr std::size_t handshake_header_bytes = 4;
// RFC 8446 §4.1.2.
constexpr std::size_t random_bytes = 32;
constexpr std::size_t max_session_id_bytes = 32;
// RFC 6066 §1.1 ExtensionType server_name(0); §3 NameType host_name(0).
constexpr std::uint16_t extension_server_name = 0;
constexpr std::uint8_t name_type_host_name = 0;
constexpr std::size_t max_host_name_bytes = 253;
constexpr std::size_t max_label_bytes = 63;

Scan need(std::size_t bytes) {
  return Scan{.status = Status::need_more, .need = bytes};
}

Scan ended(Status status, std::string_view reason) {
  return Scan{.status = status, .reason = reason};
}

Scan malformed(std::string_view reason) {
  return ended(Status::malformed, reason);
}

std::size_t record_length(std::span<const std::uint8_t> bytes, std::size_t record) {
  return std::size_t{bytes[record + 3]} << 8 | bytes[record + 4];
}

// The bytes of one handshake message, which records may have split: it
// reads record payloads one after another, stepping over the record headers
// between them. Every record it steps into has been checked by frame() and
// holds the message's bytes that `left` counts, so no read goes past them
// (and none past `bytes`, which is checked as well).
class HandshakeReader {
 public:
  HandshakeReader() = default;
  HandshakeReader(std::span<const std::uint8_t> bytes, std::size_t length)
      : bytes_(bytes),
        pos_(record_header_bytes),
        fragment_end_(record_header_bytes + record_length(bytes, 0)),
        left_(length) {}

  std::size_t left() const { return left_; }

  bool u8(std::uint8_t& out) {
    if (left_ == 0 || !fragment()) return false;
    out = bytes_[pos_++];
    --left_;
    return true;
  }

  bool u16(std::uint16_t& out) {
    std::uint8_t hi = 0;
    std::uint8_t lo = 0;
    if (!u8(hi) || !u8(lo)) return false;
    out = static_cast<std::uint16_t>(hi << 8 | lo);
    return true;
  }

  bool skip(std::size_t n) { return copy(n, nullptr); }

  // The next `n` bytes, to `out` unless it is null.
  bool copy(std::size_t n, char* out) {
    if (n > left_) return false;
    while (n > 0) {
      if (!fragment()) return false;
      const std::size_t chunk = std::min(n, fragment_end_ - pos_);
      if (out) {
        std::copy_n(bytes_.data() + pos_, chunk, out);
        out += chunk;
      }
      pos_ += chunk;
      left_ -= chunk;
      n -= chunk;
    }
    return true;
  }

  // The next `n` bytes as a reader of their own (a length-prefixed vector);
  // this one moves past them.
  bool take(std::size_t n, HandshakeReader& out) {
    if (n > left_) return false;
    out = *this;
    out.left_ = n;
    return skip(n);
  }

 private:
  // Moves to the next record's payload when this one is used up; false if
  // the bytes end first.
  bool fragment() {
    while (pos_ == fragment_end_) {
      const std::size_t record = fragment_end_;
      if (record + record_header_bytes > bytes_.size()) return false;
      pos_ = record + record_header_bytes;
      fragment_end_ = pos_ + record_length(bytes_, record);
    }
    fragment_end_ = std::min(fragment_end_, bytes_.size());
    return pos_ < fragment_end_;
  }

  std::span<const std::uint8_t> bytes_;
  std::size_t pos_ = 0;
  std::size_t fragment_end_ = 0;
  std::size_t left_ = 0;
};

// The record layer: checks each record header in turn and counts the
// handshake bytes they carry, until the whole ClientHello is in. Its length
// (header included) in `message` when it is; else what the scan needs.
std::optional<Scan> frame(std::span<const std::uint8_t> bytes, std::size_t& message) {
  std::array<std::uint8_t, handshake_header_bytes> head{};
  std::size_t want = handshake_header_bytes;  // the whole message once its header is in
  std::size_t have = 0;
  for (std::size_t record = 0;;) {
    const std::size_t header = std::min(record_header_bytes, bytes.size() - record);
    // The first record decides whether this is TLS at all; a later one that
    // is not a handshake record breaks the rule that no other record may
    // come between the fragments of a handshake message (RFC 8446 §5.1).
    if (header >= 1 && bytes[record] != content_type_handshake) {
      return record == 0 ? ended(Status::not_tls, "not a TLS handshake record")
                         : malformed("a record other than handshake inside the ClientHello");
    }
    if (header >= 2 && bytes[record + 1] != tls_major_version) {
      return record == 0 ? ended(Status::not_tls, "not a TLS record version")
                         : malformed("a record version that is not TLS");
    }
    if (header < record_header_bytes) return need(record + record_header_bytes + (want - have));
    const std::size_t length = record_length(bytes, record);
    // RFC 8446 §5.1: no zero-length handshake fragments, none over 2^14.
    if (length == 0) return malformed("an empty handshake record");
    if (length > max_fragment_bytes) return malformed("a record longer than 2^14 bytes");

    const std::size_t payload = record + record_header_bytes;
    const std::size_t end = payload + std::min(length, bytes.size() - payload);
    std::size_t pos = payload;
    for (; pos < end && have < handshake_header_bytes; ++pos) {
      head[have++] = bytes[pos];
      if (have == 1 && head[0] != handshake_client_hello)
        return malformed("the first handshake message is not a ClientHello");
      if (have == handshake_header_bytes)
        want += std::size_t{head[1]} << 16 | std::size_t{head[2]} << 8 | head[3];
    }
    const std::size_t taken = std::min(end - pos, want - have);
    have += taken;
    if (have == want) {
      message = want;
      return std::nullopt;
    }
    if (end < payload + length) {
      // This record is still arriving: its rest, and (when the message goes
      // on past it) at least the next record's header.
      const std::size_t missing = want - have;
      const std::size_t rest = payload + length - end;
      return need(bytes.size() + (missing <= rest ? missing : missing + record_header_bytes));
    }
    record = payload + length;
  }
}

// RFC 6066 §3: ServerNameList server_name_list<1..2^16-1>, each ServerName a
// NameType and, for host_name, HostName<1..2^16-1>; a NameType defined later
// must start with a 16-bit length too, which is how one is skipped. The list
// may not name two host_names.
std::optional<Scan> read_server_name(HandshakeReader extension, std::string& name) {
  std::uint16_t list_length = 0;
  if (!extension.u16(list_length) || list_length != extension.left())
    return malformed("a server_name list whose length does not match its extension");
  if (list_length == 0) return malformed("an empty server_name list");
  while (extension.left() > 0) {
    std::uint8_t type = 0;
    std::uint16_t length = 0;
    if (!extension.u8(type) || !extension.u16(length) || length > extension.left())
      return malformed("a truncated server_name entry");
    if (length == 0) return malformed("an empty server name");
    if (type != name_type_host_name) {
      extension.skip(length);
      continue;
    }
    if (!name.empty()) return malformed("more than one host_name in server_name");
    if (length > max_host_name_bytes) return malformed("a host_name longer than 253 bytes");
    name.resize(length);
    extension.copy(length, name.data());
    if (!valid_sni_host_name(name)) return malformed("a host_name that is not a DNS hostname");
  }
  return std::nullopt;
}

bool is_letter(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

}  // namespace

bool valid_sni_host_name(std::string_view name) {
  if (name.empty() || name.size() > max_host_name_bytes) return false;
  std::size_t label = 0;
  bool all_digits = true;
  char previous = '.';
  for (char c : name) {
    if (c == '.') {
      if (label == 0 || previous == '-') return false;
      label = 0;
      all_digits = true;
    } else {
      if (!is_letter(c) && !is_digit(c) && c != '-') return false;
      if (c == '-' && label == 0) return false;
      if (++label > max_label_bytes) return false;
      if (!is_digit(c)) all_digits = false;
    }
    previous = c;
  }
  // Ends in a label (no trailing dot) that does not end in '-' and is not
  // all digits (RFC 3696 §2: no top-level domain is; an IPv4 literal ends so).
  return label > 0 && previous != '-' && !all_digits;
}

ClientHelloScan scan_client_hello(std::span<const std::uint8_t> bytes) {
  if (bytes.empty()) return need(1);
  std::size_t message = 0;
  if (auto framed = frame(bytes, message)) return std::move(*framed);

  // RFC 8446 §4.1.2 (TLS 1.2: RFC 5246 §7.4.1.2, where extensions may be absent).
  HandshakeReader hello(bytes, message);
  std::uint16_t version = 0;
  std::uint8_t session_id = 0;
  std::uint16_t cipher_suites = 0;
  std::uint8_t compression_methods = 0;
  if (!hello.skip(handshake_header_bytes) || !hello.u16(version))
    return malformed("a truncated ClientHello");
  if (version >> 8 != tls_major_version) return malformed("a ClientHello version that is not TLS");
  if (!hello.skip(random_bytes) || !hello.u8(session_id))
    return malformed("a truncated ClientHello");
  if (session_id > max_session_id_bytes) return malformed("a session id longer than 32 bytes");
  if (!hello.skip(session_id) || !hello.u16(cipher_suites))
    return malformed("a truncated ClientHello");
  if (cipher_suites < 2 || cipher_suites % 2 != 0)
    return malformed("a cipher_suites length that is not a positive even number");
  if (!hello.skip(cipher_suites) || !hello.u8(compression_methods))
    return malformed("a truncated ClientHello");
  if (compression_methods == 0) return malformed("no compression methods");
  if (!hello.skip(compression_methods)) return malformed("a truncated ClientHello");
  if (hello.left() == 0) return ended(Status::no_sni, "a ClientHello without extensions");

  std::uint16_t extensions = 0;
  if (!hello.u16(extensions) || extensions != hello.left())
    return malformed("an extensions length that does not match the ClientHello");
  std::string name;
  bool seen_server_name = false;
  while (hello.left() > 0) {
    std::uint16_t type = 0;
    std::uint16_t length = 0;
    HandshakeReader extension;
    if (!hello.u16(type) || !hello.u16(length) || !hello.take(length, extension))
      return malformed("a truncated extension");
    if (type != extension_server_name) continue;
    // RFC 8446 §4.2: no extension twice; a second name could route one way
    // while the guest's server answers the other.
    if (seen_server_name) return malformed("two server_name extensions");
    seen_server_name = true;
    if (auto bad = read_server_name(extension, name)) return std::move(*bad);
  }
  if (name.empty()) {
    return ended(Status::no_sni, seen_server_name ? "a server_name without a host_name"
                                                  : "no server_name extension");
  }
  std::transform(name.begin(), name.end(), name.begin(), [](char c) {
    return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
  });
  return Scan{.status = Status::found, .name = std::move(name)};
}

}  // namespace vmgate::hostd
