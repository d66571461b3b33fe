// libFuzzer target for the request head as hostd reads it from any client:
// Beast's parser, then check_request_head (hostd/route/request_framing.hpp).
// Besides "no crash, no sanitizer report", it checks what hostd relies on:
//   - a refusal is a 4xx/5xx with one short line (it goes into the body and
//     the log);
//   - a head that passes declares one framing: never both Content-Length
//     and Transfer-Encoding, at most one Content-Length with one value, a
//     Transfer-Encoding only as one field "chunked", and as the parser framed it;
//   - that head, written out as hostd forwards it, is read back by another
//     parser (the agent's) with the same framing.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <string_view>

#include <boost/beast/http.hpp>

#include "hostd/route/request_framing.hpp"

namespace http = boost::beast::http;
using namespace vmgate::hostd;

namespace {

void check(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "request framing property violated: %s\n", what);
  std::abort();
}

const LimitsConfig& limits() {
  static const LimitsConfig l = [] {
    LimitsConfig c;
    c.header_bytes = 8192;
    c.request_line_bytes = 1024;
    c.header_fields = 32;
    return c;
  }();
  return l;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  http::request_parser<http::empty_body> parser;
  parser.header_limit(limits().header_bytes);
  parser.body_limit(boost::none);
  boost::system::error_code ec;
  parser.put(boost::asio::buffer(input.data(), input.size()), ec);
  if (ec || !parser.is_header_done()) return 0;

  auto& head = parser.get();
  const ParsedFraming parsed = parsed_framing(parser);
  auto refused = check_request_head(head, parsed, limits());
  if (refused) {
    check(refused->status >= 400 && refused->status < 600, "a refusal is an error status");
    check(!refused->reason.empty() && refused->reason.size() <= 200, "a reason is short");
    check(refused->reason.find_first_of("\r\n") == std::string::npos, "a reason is one line");
    return 0;
  }

  const auto lengths = head.count(http::field::content_length);
  const auto codings = head.count(http::field::transfer_encoding);
  check(lengths == 0 || codings == 0, "never both Content-Length and Transfer-Encoding");
  check(lengths <= 1, "at most one Content-Length");
  if (lengths == 1) {
    check(head[http::field::content_length].find(',') == std::string_view::npos,
          "Content-Length has one value");
  }
  if (codings > 0) {
    check(codings == 1 && head[http::field::transfer_encoding] == "chunked",
          "Transfer-Encoding is one field saying chunked");
    check(parser.chunked(), "the parser framed it chunked");
  }

  // As the agent reads it.
  std::ostringstream written;
  written << head;
  const std::string again = written.str();
  http::request_parser<http::empty_body> agent;
  agent.header_limit(1024 * 1024);
  agent.body_limit(boost::none);
  boost::system::error_code agent_ec;
  agent.put(boost::asio::buffer(again.data(), again.size()), agent_ec);
  check(!agent_ec && agent.is_header_done(), "the forwarded head parses");
  check(agent.chunked() == parser.chunked(), "the agent reads the same chunked");
  check(agent.content_length() == parser.content_length(), "the agent reads the same length");
  return 0;
}
