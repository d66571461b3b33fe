// The channel preamble: the small, versioned header at the start of every
// channel connection between hostd and guestd (docs/architecture.md, "The channel
// preamble"). After it, the connection carries raw bytes.
//
//   VMGATE/1 CONNECT 5986\r\n          request line: version, verb, argument
//   Client: 203.0.113.7:51514\r\n      fields: Name ": " value
//   Request-Id: 5b2c0e9a\r\n
//   \r\n                               empty line ends it
//
// Answer: "VMGATE/1 200 OK\r\n\r\n", or a status and a one-token reason
// ("VMGATE/1 403 port-not-allowed\r\n\r\n"). Limits: 4 KiB, 5 s to arrive.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/system/result.hpp>

namespace vmgate::preamble {

inline constexpr std::string_view version = "VMGATE/1";
inline constexpr std::size_t max_bytes = 4096;
inline constexpr std::string_view terminator = "\r\n\r\n";

enum class Verb { connect, send, join, leave };
std::string_view verb_name(Verb verb);

using Fields = std::vector<std::pair<std::string, std::string>>;

struct Request {
  Verb verb = Verb::connect;
  // CONNECT: the guest port, decimal 1..65535. SEND: a target. JOIN/LEAVE: a group.
  std::string argument;
  Fields fields;

  std::optional<std::string_view> field(std::string_view name) const;
  // The port of a CONNECT request (validated by parse_request).
  std::uint16_t port() const;
};

struct Response {
  int status = 200;
  std::string reason = "OK";  // one token: letters, digits, '-'
  Fields fields;

  bool ok() const { return status == 200; }
};

// Why a preamble was rejected; the names are the reasons guestd sends back.
enum class Error {
  too_large,         // no terminator within max_bytes
  bad_version,       // not VMGATE/1
  bad_request_line,  // verb or argument missing or malformed
  unknown_verb,      // a verb this version does not define
  bad_port,          // CONNECT port not in 1..65535
  bad_field,         // a field line that is not "Name: value"
  bad_status_line,   // a response line that is not "VMGATE/1 NNN reason"
};
std::string_view error_reason(Error e);  // "bad-preamble", "unsupported-version", ...

// Length of the preamble at the start of `buffered` (terminator included), or
// nothing while incomplete. Does not validate.
std::optional<std::size_t> find_end(std::string_view buffered);

// Parse a complete preamble block, terminator included.
boost::system::result<Request, Error> parse_request(std::string_view block);
boost::system::result<Response, Error> parse_response(std::string_view block);

// Encode; field names and values are validated by the caller's construction
// (encode() refuses CR/LF in values by dropping the field, so a value from a
// client can never inject a line).
std::string encode(const Request& request);
std::string encode(const Response& response);

// Whether a value may appear in a field: printable ASCII, no CR/LF.
bool valid_field_value(std::string_view value);
bool valid_field_name(std::string_view name);

}  // namespace vmgate::preamble
