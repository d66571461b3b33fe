// One reading of where a message ends: hostd's. A request head that declares
// its length in a way an agent could read differently (request smuggling,
// RFC 9112 §11.2), or that is larger than the limits, is refused before it is
// admitted; an agent's response head that the client could read differently
// is refused before it is relayed. What Beast's parser already refuses (bare
// CR or LF, NUL and other controls in the head, differing Content-Length
// values, Content-Length with a final chunked, a chunk size that overflows)
// never gets here; obs-fold it replaces with SP, as RFC 9112 §5.2 allows.
#pragma once

#include <cstdint>
#include <optional>

#include <boost/beast/http/basic_parser.hpp>
#include <boost/beast/http/message.hpp>

#include "hostd/config/hostd_config.hpp"
#include "hostd/refusal.hpp"

namespace vmgate::hostd {

// How the parser framed a message's body.
struct ParsedFraming {
  std::optional<std::uint64_t> content_length;
  bool chunked = false;
};

// Of a parser whose head is done.
template <bool isRequest>
ParsedFraming parsed_framing(const boost::beast::http::basic_parser<isRequest>& parser) {
  ParsedFraming framing{.chunked = parser.chunked()};
  if (auto length = parser.content_length()) framing.content_length = *length;
  return framing;
}

// Refuses a parsed request head that hostd would not frame the way any
// recipient must: 400, 414 (request line over limits.request_line_bytes),
// 431 (more than limits.header_fields fields) or 501 (a transfer coding hostd
// cannot remove). A Content-Length list of equal values (RFC 9110 §8.6) is
// normalised to the one value the parser read; Transfer-Encoding to one
// "chunked" field. Refused too: a head whose fields say other than what the
// parser framed.
std::optional<Refusal> check_request_head(boost::beast::http::request_header<>& request,
                                          const ParsedFraming& parsed, const LimitsConfig& limits);

// Refuses (502) an agent's response head whose framing the client could read
// differently from hostd; normalises a Content-Length list as above.
std::optional<Refusal> check_response_head(boost::beast::http::response_header<>& response,
                                           const ParsedFraming& parsed);

}  // namespace vmgate::hostd
