#include "hostd/route/request_framing.hpp"

#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/field.hpp>

namespace vmgate::hostd {
namespace http = boost::beast::http;

namespace {

std::string_view trim_ows(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
    s.remove_suffix(1);
  return s;
}

// The transfer codings of every Transfer-Encoding field, in order; empty
// list elements are skipped (RFC 9110 §5.6.1). A coding keeps its
// parameters, so "chunked;x=1" is not "chunked".
template <class Header>
std::vector<std::string_view> transfer_codings(const Header& h) {
  std::vector<std::string_view> codings;
  auto [first, last] = h.equal_range(http::field::transfer_encoding);
  for (auto it = first; it != last; ++it) {
    std::string_view value = it->value();
    for (;;) {
      const auto comma = value.find(',');
      if (auto coding = trim_ows(value.substr(0, comma)); !coding.empty())
        codings.push_back(coding);
      if (comma == std::string_view::npos) break;
      value.remove_prefix(comma + 1);
    }
  }
  return codings;
}

bool is_chunked(std::string_view coding) {
  return boost::beast::iequals(coding, "chunked");
}

// RFC 9110 §8.6: a list of identical Content-Length values (the parser
// refused any other) may be replaced by the one value; a recipient that
// keeps the list could read it as invalid, or as the first value only.
template <class Header>
void normalise_content_length(Header& h, std::optional<std::uint64_t> content_length) {
  if (!content_length) return;
  if (h.count(http::field::content_length) == 1 &&
      h[http::field::content_length].find(',') == std::string_view::npos)
    return;
  h.set(http::field::content_length, std::to_string(*content_length));
}

}  // namespace

std::optional<Refusal> check_request_head(http::request_header<>& request,
                                          const ParsedFraming& parsed, const LimitsConfig& limits) {
  // RFC 9112 §3: method SP request-target SP HTTP-version CRLF.
  const std::size_t line = request.method_string().size() + 1 + request.target().size() + 1 + 8 + 2;
  if (line > limits.request_line_bytes)
    return Refusal{414, fmt::format("request line exceeds {} bytes", limits.request_line_bytes)};
  const auto fields = static_cast<std::size_t>(std::distance(request.begin(), request.end()));
  if (fields > limits.header_fields)
    return Refusal{
        431, fmt::format("request head has more than {} header fields", limits.header_fields)};
  // RFC 9112 §3.2: more than one Host is a 400; two could route one way
  // here and another at the agent.
  if (request.count(http::field::host) > 1) return Refusal{400, "more than one Host field"};

  const auto codings = transfer_codings(request);
  if (request.count(http::field::transfer_encoding) > 0) {
    if (codings.empty()) return Refusal{400, "Transfer-Encoding names no coding"};
    // RFC 9112 §6.1: HTTP/1.0 has no Transfer-Encoding; its framing is faulty.
    if (request.version() < 11) return Refusal{400, "Transfer-Encoding in an HTTP/1.0 request"};
    // RFC 9112 §6.3 (3): a request that carries both may be an attempt at
    // smuggling; hostd does not guess which one the agent would believe.
    if (request.count(http::field::content_length) > 0)
      return Refusal{400, "both Content-Length and Transfer-Encoding"};
    // RFC 9112 §6.3 (4): without a final chunked the length is unknown.
    if (!is_chunked(codings.back()))
      return Refusal{400, "Transfer-Encoding does not end in chunked"};
    // RFC 9112 §6.1: chunked at most once.
    for (std::size_t i = 0; i + 1 < codings.size(); ++i) {
      if (is_chunked(codings[i])) return Refusal{400, "chunked applied more than once"};
    }
    // RFC 9112 §6.1: a coding the server does not understand is a 501.
    if (codings.size() > 1)
      return Refusal{501, "a transfer coding other than chunked is not implemented"};
    // The body is read as the parser framed it: it must be this chunked.
    if (!parsed.chunked) return Refusal{400, "malformed Transfer-Encoding"};
    // Exactly one chunked, whatever fields and list elements said it:
    // one field, so that the agent reads the list as hostd did.
    if (codings.size() != 1 || request.count(http::field::transfer_encoding) != 1 ||
        request[http::field::transfer_encoding] != "chunked")
      request.set(http::field::transfer_encoding, "chunked");
  }
  normalise_content_length(request, parsed.content_length);
  return std::nullopt;
}

std::optional<Refusal> check_response_head(http::response_header<>& response,
                                           const ParsedFraming& parsed) {
  const auto codings = transfer_codings(response);
  if (response.count(http::field::transfer_encoding) > 0) {
    // RFC 9112 §6.3 (3): the parser framed such a response by its
    // Content-Length, which the client would ignore for the Transfer-Encoding.
    if (response.count(http::field::content_length) > 0)
      return Refusal{502, "agent response has both Content-Length and Transfer-Encoding"};
    // A chunked that is not final leaves the body to end with the connection;
    // hostd would chunk it again, which RFC 9112 §6.1 forbids.
    for (std::size_t i = 0; i + 1 < codings.size(); ++i) {
      if (is_chunked(codings[i]))
        return Refusal{502, "agent response applies chunked before another transfer coding"};
    }
    if (codings.empty())
      return Refusal{502, "agent response has a Transfer-Encoding naming no coding"};
    // A final chunked the parser did not see would be relayed as if it ended
    // the body where the parser found no end.
    if (is_chunked(codings.back()) != parsed.chunked)
      return Refusal{502, "agent response has a malformed Transfer-Encoding"};
  }
  normalise_content_length(response, parsed.content_length);
  return std::nullopt;
}

}  // namespace vmgate::hostd
