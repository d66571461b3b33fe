#include <doctest/doctest.h>

#include <optional>
#include <string>
#include <string_view>

#include <boost/beast/http.hpp>

#include "hostd/route/request_framing.hpp"

namespace http = boost::beast::http;
using namespace vmgate::hostd;

namespace {

// A head as hostd reads it (Beast's parser, as in the client connection),
// then checked: the parser's error, or the refusal, or neither.
struct Checked {
  boost::system::error_code parse_error;
  std::optional<Refusal> refusal;
  http::request_header<> head;

  unsigned status() const { return parse_error ? 400 : refusal ? refusal->status : 0; }
};

Checked check_request(std::string_view raw, const LimitsConfig& limits = {}) {
  http::request_parser<http::empty_body> parser;
  parser.header_limit(limits.header_bytes);
  parser.eager(false);
  Checked out;
  parser.put(boost::asio::buffer(raw.data(), raw.size()), out.parse_error);
  if (!out.parse_error && !parser.is_header_done()) out.parse_error = http::error::need_more;
  if (out.parse_error) return out;
  out.refusal = check_request_head(parser.get(), parsed_framing(parser), limits);
  out.head = parser.get();
  return out;
}

struct CheckedResponse {
  boost::system::error_code parse_error;
  std::optional<Refusal> refusal;
  http::response_header<> head;
};

CheckedResponse check_response(std::string_view raw) {
  http::response_parser<http::empty_body> parser;
  parser.eager(false);
  CheckedResponse out;
  parser.put(boost::asio::buffer(raw.data(), raw.size()), out.parse_error);
  if (out.parse_error) return out;
  out.refusal = check_response_head(parser.get(), parsed_framing(parser));
  out.head = parser.get();
  return out;
}

std::string post(std::string_view fields, std::string_view version = "HTTP/1.1") {
  return "POST /wsman " + std::string(version) + "\r\nHost: vm1\r\n" + std::string(fields) + "\r\n";
}

}  // namespace

TEST_CASE("a plain request passes unchanged") {
  auto c = check_request(post("Content-Length: 5\r\n"));
  CHECK(c.status() == 0);
  CHECK(c.head[http::field::content_length] == "5");
  auto chunked = check_request(post("Transfer-Encoding: chunked\r\n"));
  CHECK(chunked.status() == 0);
  CHECK(chunked.head[http::field::transfer_encoding] == "chunked");
}

TEST_CASE("Content-Length with a Transfer-Encoding the parser does not frame is 400") {
  // Beast frames this by its Content-Length; an agent that follows RFC 9112
  // §6.3 would read to the end of the connection instead.
  auto c = check_request(post("Transfer-Encoding: gzip\r\nContent-Length: 5\r\n"));
  REQUIRE(c.refusal);
  CHECK(c.refusal->status == 400);
  CHECK(c.refusal->reason == "both Content-Length and Transfer-Encoding");
}

TEST_CASE("Content-Length with a final chunked is refused by the parser, in either order") {
  CHECK(check_request(post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n")).parse_error);
  CHECK(check_request(post("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n")).parse_error);
}

TEST_CASE("a Transfer-Encoding that does not end in chunked is 400") {
  // Beast frames none of these as chunked: the body would be read as empty
  // and passed to the agent as the next request.
  for (auto te : {"chunked, gzip", "gzip", "identity", "chunked;x=1", "xchunked", "", ","}) {
    auto c = check_request(post(std::string("Transfer-Encoding: ") + te + "\r\n"));
    CHECK_MESSAGE(c.status() == 400, te);
  }
}

TEST_CASE("chunked applied twice is 400") {
  auto c = check_request(post("Transfer-Encoding: chunked, chunked\r\n"));
  REQUIRE(c.refusal);
  CHECK(c.refusal->status == 400);
  CHECK(c.refusal->reason == "chunked applied more than once");
  // Two fields saying chunked the parser refuses itself.
  CHECK(check_request(post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"))
            .parse_error);
}

TEST_CASE("a transfer coding under chunked is 501") {
  for (auto fields : {"Transfer-Encoding: gzip, chunked\r\n",
                      "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"}) {
    auto c = check_request(post(fields));
    REQUIRE_MESSAGE(c.refusal, fields);
    CHECK(c.refusal->status == 501);
  }
}

TEST_CASE("Transfer-Encoding in an HTTP/1.0 request is 400") {
  auto c = check_request(post("Transfer-Encoding: chunked\r\n", "HTTP/1.0"));
  REQUIRE(c.refusal);
  CHECK(c.refusal->status == 400);
  CHECK(c.refusal->reason == "Transfer-Encoding in an HTTP/1.0 request");
}

TEST_CASE("a chunked spelt another way reaches the agent as one field saying chunked") {
  for (auto fields : {"Transfer-Encoding: Chunked\r\n", "Transfer-Encoding: , chunked,\r\n"}) {
    auto c = check_request(post(fields));
    if (c.parse_error) continue;  // refused by the parser: as good
    CHECK_MESSAGE(c.status() == 0, fields);
    CHECK(c.head.count(http::field::transfer_encoding) == 1);
    CHECK(c.head[http::field::transfer_encoding] == "chunked");
  }
}

TEST_CASE("equal Content-Length values reach the agent as one") {
  for (auto fields : {"Content-Length: 5, 5\r\n", "Content-Length: 5\r\nContent-Length: 5\r\n"}) {
    auto c = check_request(post(fields));
    CHECK_MESSAGE(c.status() == 0, fields);
    CHECK(c.head.count(http::field::content_length) == 1);
    CHECK(c.head[http::field::content_length] == "5");
  }
}

TEST_CASE("differing Content-Length values are refused by the parser") {
  CHECK(check_request(post("Content-Length: 5\r\nContent-Length: 6\r\n")).parse_error);
  CHECK(check_request(post("Content-Length: 5, 6\r\n")).parse_error);
  CHECK(check_request(post("Content-Length: +5\r\n")).parse_error);
  CHECK(check_request(post("Content-Length: 99999999999999999999\r\n")).parse_error);
}

TEST_CASE("bare CR, bare LF, NUL and controls in a head are refused by the parser") {
  for (std::string raw : {std::string("GET / HTTP/1.1\nHost: vm1\r\n\r\n"),
                          std::string("GET / HTTP/1.1\r\nHost: vm1\n\r\n"),
                          std::string("GET / HTTP/1.1\r\nHost: vm1\r\nX: a\rb\r\n\r\n"),
                          std::string("GET / HTTP/1.1\r\nHost: vm1\r\nX: a\nb\r\n\r\n"),
                          std::string("GET / HTTP/1.1\r\nHost: vm1\r\nX: a\0b\r\n\r\n", 37),
                          std::string("GET /a\0b HTTP/1.1\r\nHost: vm1\r\n\r\n", 32),
                          std::string("GET / HTTP/1.1\r\nHost: vm1\r\nX\0: a\r\n\r\n", 36),
                          std::string("GET / HTTP/1.1\r\nHost: vm1\r\nX: \x7f\r\n\r\n"),
                          std::string("GET / HTTP/1.1\r\nHost: vm1\r\nX : a\r\n\r\n")}) {
    CHECK_MESSAGE(check_request(raw).parse_error, raw);
  }
}

TEST_CASE("obs-fold is replaced by a space, as RFC 9112 §5.2 allows") {
  auto c = check_request("GET / HTTP/1.1\r\nHost: vm1\r\nX-Folded: a\r\n b\r\n\r\n");
  CHECK(c.status() == 0);
  CHECK(c.head["X-Folded"] == "a b");
  // A folded Transfer-Encoding is framed by what the fold says, and so forwarded.
  auto te = check_request(post("Transfer-Encoding:\r\n chunked\r\n"));
  if (!te.parse_error) {
    CHECK(te.status() == 0);
    CHECK(te.head[http::field::transfer_encoding] == "chunked");
  }
}

TEST_CASE("a request line longer than request_line_bytes is 414") {
  LimitsConfig limits;
  limits.request_line_bytes = 64;
  // "GET " + target + " HTTP/1.1\r\n": 15 bytes besides the target.
  auto at =
      check_request("GET /" + std::string(48, 'a') + " HTTP/1.1\r\nHost: vm1\r\n\r\n", limits);
  CHECK(at.status() == 0);
  auto over =
      check_request("GET /" + std::string(49, 'a') + " HTTP/1.1\r\nHost: vm1\r\n\r\n", limits);
  REQUIRE(over.refusal);
  CHECK(over.refusal->status == 414);
  CHECK(over.refusal->reason == "request line exceeds 64 bytes");
}

TEST_CASE("more header fields than header_fields is 431") {
  LimitsConfig limits;
  limits.header_fields = 8;
  std::string fields;
  for (int i = 0; i < 7; ++i)
    fields += "X-" + std::to_string(i) + ": v\r\n";  // + Host: 8
  CHECK(check_request(post(fields), limits).status() == 0);
  auto over = check_request(post(fields + "X-7: v\r\n"), limits);
  REQUIRE(over.refusal);
  CHECK(over.refusal->status == 431);
  CHECK(over.refusal->reason == "request head has more than 8 header fields");
}

TEST_CASE("two Host fields are 400") {
  auto c = check_request("GET / HTTP/1.1\r\nHost: vm1\r\nHost: vm2\r\n\r\n");
  REQUIRE(c.refusal);
  CHECK(c.refusal->status == 400);
}

TEST_CASE("a chunk size that overflows 64 bits is refused by the parser") {
  http::request_parser<http::string_body> parser;
  std::string raw = post("Transfer-Encoding: chunked\r\n") + "10000000000000000\r\nx\r\n0\r\n\r\n";
  boost::system::error_code ec;
  auto used = parser.put(boost::asio::buffer(raw), ec);
  REQUIRE(!ec);
  parser.put(boost::asio::buffer(raw.data() + used, raw.size() - used), ec);
  CHECK(ec == http::error::bad_chunk);
}

TEST_CASE("an agent response with both Content-Length and Transfer-Encoding is 502") {
  // The parser frames it by its Content-Length; the client would not.
  auto c =
      check_response("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\n");
  REQUIRE(c.refusal);
  CHECK(c.refusal->status == 502);
  CHECK(check_response("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
            .parse_error);
}

TEST_CASE("an agent response that applies chunked before another coding is 502") {
  auto c = check_response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
  REQUIRE(c.refusal);
  CHECK(c.refusal->status == 502);
}

TEST_CASE("an agent response framed by its end, or by a final chunked, is relayed") {
  CHECK(!check_response("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n").refusal);
  CHECK(!check_response("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").refusal);
  auto c = check_response("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n");
  CHECK(!c.refusal);
  CHECK(c.head.count(http::field::content_length) == 1);
}
