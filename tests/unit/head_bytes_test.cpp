#include <doctest/doctest.h>

#include <string>

#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/http.hpp>

#include "hostd/proxy/head_bytes.hpp"

namespace http = boost::beast::http;
using namespace vmgate::hostd;

namespace {

// The head exactly as Beast's serializer writes it: the bytes append_head
// must reproduce.
template <bool isRequest>
std::string serialized(const http::header<isRequest>& head) {
  const http::message<isRequest, http::empty_body> message(head);
  http::serializer<isRequest, http::empty_body> writer{message};
  std::string out;
  boost::system::error_code ec;
  writer.split(true);
  while (!writer.is_header_done()) {
    writer.next(ec, [&](boost::system::error_code&, const auto& buffers) {
      out += boost::beast::buffers_to_string(buffers);
      writer.consume(boost::asio::buffer_size(buffers));
    });
    REQUIRE_FALSE(ec);
  }
  return out;
}

template <bool isRequest>
std::string appended(const http::header<isRequest>& head) {
  std::string out = "kept";
  append_head(head, out);
  REQUIRE(out.starts_with("kept"));
  return out.substr(4);
}

}  // namespace

TEST_CASE("a request head is written byte for byte as Beast's serializer writes it") {
  http::request_header<> h;
  h.method(http::verb::post);
  h.target("/wsman?x=1");
  h.version(11);
  h.set(http::field::host, "vm1:5986");
  h.set(http::field::content_length, "4096");
  h.insert("X-Custom", "a, b");
  h.insert("x-custom", "second");
  CHECK(appended(h) == serialized(h));
  CHECK(appended(h).starts_with("POST /wsman?x=1 HTTP/1.1\r\nHost: vm1:5986\r\n"));
}

TEST_CASE("an unknown method such as BITS_POST and HTTP/1.0 keep their spelling") {
  http::request_header<> h;
  h.method_string("BITS_POST");
  h.target("/upload");
  h.version(10);
  h.set(http::field::host, "vm1");
  CHECK(appended(h) == serialized(h));
  CHECK(appended(h).starts_with("BITS_POST /upload HTTP/1.0\r\n"));
}

TEST_CASE("a response head keeps the agent's reason phrase, or gets the standard one") {
  http::response_header<> h;
  h.result(404);
  h.version(11);
  h.set(http::field::content_length, "0");
  CHECK(appended(h) == serialized(h));
  CHECK(appended(h).starts_with("HTTP/1.1 404 Not Found\r\n"));
  h.reason("Nope");
  h.version(10);
  CHECK(appended(h) == serialized(h));
  CHECK(appended(h) == "HTTP/1.0 404 Nope\r\nContent-Length: 0\r\n\r\n");
}

TEST_CASE("a head without fields ends with the empty line alone") {
  http::response_header<> h;
  h.result(204);
  h.version(11);
  CHECK(appended(h) == "HTTP/1.1 204 No Content\r\n\r\n");
}
