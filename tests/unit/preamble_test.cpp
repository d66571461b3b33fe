// The channel preamble codec (common/preamble.hpp): what parses, what is
// refused and with which reason, and that encode and parse agree.
#include <doctest/doctest.h>

#include <string>

#include <fmt/format.h>

#include "common/preamble.hpp"

namespace pre = vmgate::preamble;
using pre::Error;

namespace {

// A request block from its lines, each ended by CRLF, then the empty line.
std::string block(std::initializer_list<std::string_view> lines) {
  std::string out;
  for (auto line : lines) {
    out += line;
    out += "\r\n";
  }
  out += "\r\n";
  return out;
}

Error request_error(std::string_view text) {
  auto parsed = pre::parse_request(text);
  REQUIRE_FALSE(parsed.has_value());
  return parsed.error();
}

Error response_error(std::string_view text) {
  auto parsed = pre::parse_response(text);
  REQUIRE_FALSE(parsed.has_value());
  return parsed.error();
}

}  // namespace

TEST_CASE("preamble: a CONNECT request parses into verb, port and fields") {
  auto parsed = pre::parse_request(
      block({"VMGATE/1 CONNECT 5986", "Client: 203.0.113.7:51514", "Request-Id: 5b2c0e9a"}));
  REQUIRE(parsed.has_value());
  CHECK(parsed->verb == pre::Verb::connect);
  CHECK(parsed->argument == "5986");
  CHECK(parsed->port() == 5986);
  REQUIRE(parsed->fields.size() == 2);
  CHECK(parsed->field("Client") == "203.0.113.7:51514");
  CHECK(parsed->field("Request-Id") == "5b2c0e9a");
  CHECK_FALSE(parsed->field("Forwarded").has_value());
}

TEST_CASE("preamble: field lookup ignores case and field values are trimmed") {
  auto parsed = pre::parse_request(block({"VMGATE/1 CONNECT 1", "request-id:   abc  "}));
  REQUIRE(parsed.has_value());
  CHECK(parsed->field("REQUEST-ID") == "abc");
}

TEST_CASE("preamble: a request with no fields and an empty field value are valid") {
  CHECK(pre::parse_request(block({"VMGATE/1 CONNECT 65535"})).has_value());
  auto parsed = pre::parse_request(block({"VMGATE/1 CONNECT 1", "Empty:"}));
  REQUIRE(parsed.has_value());
  CHECK(parsed->field("Empty") == "");
}

TEST_CASE("preamble: every verb survives encode then parse") {
  for (auto [verb, argument] :
       {std::pair{pre::Verb::connect, "5986"}, std::pair{pre::Verb::send, "group:web"},
        std::pair{pre::Verb::join, "web"}, std::pair{pre::Verb::leave, "web"}}) {
    CAPTURE(pre::verb_name(verb));
    pre::Request request{.verb = verb,
                         .argument = argument,
                         .fields = {{"Client", "203.0.113.7:51514"}, {"Request-Id", "r1"}}};
    std::string encoded = pre::encode(request);
    CHECK(pre::find_end(encoded) == encoded.size());
    auto parsed = pre::parse_request(encoded);
    REQUIRE(parsed.has_value());
    CHECK(parsed->verb == verb);
    CHECK(parsed->argument == argument);
    CHECK(parsed->fields == request.fields);
  }
}

TEST_CASE("preamble: the encoded OK answer is exactly what the protocol names") {
  CHECK(pre::encode(pre::Response{}) == "VMGATE/1 200 OK\r\n\r\n");
  CHECK(pre::encode(pre::Response{.status = 403, .reason = "port-not-allowed"}) ==
        "VMGATE/1 403 port-not-allowed\r\n\r\n");
}

TEST_CASE("preamble: responses survive encode then parse") {
  pre::Response response{.status = 502, .reason = "agent-unreachable", .fields = {{"X-A", "b c"}}};
  auto parsed = pre::parse_response(pre::encode(response));
  REQUIRE(parsed.has_value());
  CHECK(parsed->status == 502);
  CHECK(parsed->reason == "agent-unreachable");
  CHECK_FALSE(parsed->ok());
  CHECK(parsed->fields == response.fields);
  auto ok = pre::parse_response("VMGATE/1 200 OK\r\n\r\n");
  REQUIRE(ok.has_value());
  CHECK(ok->ok());
}

TEST_CASE("preamble: encode drops a field whose value would inject a line") {
  pre::Request request{.verb = pre::Verb::connect,
                       .argument = "5986",
                       .fields = {{"Client", "x\r\nInjected: yes"}, {"Request-Id", "r1"}}};
  std::string encoded = pre::encode(request);
  CHECK(encoded.find("Injected") == std::string::npos);
  auto parsed = pre::parse_request(encoded);
  REQUIRE(parsed.has_value());
  CHECK_FALSE(parsed->field("Client").has_value());
  CHECK(parsed->field("Request-Id") == "r1");
}

TEST_CASE("preamble: find_end waits for the empty line and ignores what follows") {
  CHECK_FALSE(pre::find_end("").has_value());
  CHECK_FALSE(pre::find_end("VMGATE/1 CONNECT 5986\r\n").has_value());
  CHECK_FALSE(pre::find_end("VMGATE/1 CONNECT 5986\r\n\r").has_value());
  std::string head = "VMGATE/1 CONNECT 5986\r\n\r\n";
  CHECK(pre::find_end(fmt::format("{}raw bytes\r\n\r\n", head)) == head.size());
}

TEST_CASE("preamble: a block larger than max_bytes is too large") {
  std::string pad(pre::max_bytes, 'x');
  std::string big = fmt::format("VMGATE/1 CONNECT 5986\r\nPad: {}\r\n\r\n", pad);
  CHECK(request_error(big) == Error::too_large);
  CHECK(response_error(fmt::format("VMGATE/1 200 OK\r\nPad: {}\r\n\r\n", pad)) == Error::too_large);
  CHECK(pre::error_reason(Error::too_large) == "preamble-too-large");
}

TEST_CASE("preamble: a block without the terminating empty line is refused") {
  CHECK(request_error("VMGATE/1 CONNECT 5986\r\n") == Error::bad_request_line);
  CHECK(request_error("VMGATE/1 CONNECT 5986") == Error::bad_request_line);
  CHECK(request_error("") == Error::bad_request_line);
  CHECK(request_error("\r\n\r\n") == Error::bad_request_line);
}

TEST_CASE("preamble: another protocol version is unsupported") {
  CHECK(request_error(block({"VMGATE/2 CONNECT 5986"})) == Error::bad_version);
  CHECK(request_error(block({"VMGATE/10 CONNECT 5986"})) == Error::bad_version);
  CHECK(pre::error_reason(Error::bad_version) == "unsupported-version");
  // Not vmgate at all (an HTTP client pointed at the channel port).
  CHECK(request_error(block({"GET / HTTP/1.1", "Host: x"})) == Error::bad_request_line);
  CHECK(request_error(block({"vmgate/1 CONNECT 5986"})) == Error::bad_request_line);
}

TEST_CASE("preamble: an unknown verb is refused as such") {
  CHECK(request_error(block({"VMGATE/1 PUT 5986"})) == Error::unknown_verb);
  CHECK(request_error(block({"VMGATE/1 connect 5986"})) == Error::unknown_verb);
  CHECK(request_error(block({"VMGATE/1  CONNECT 5986"})) == Error::unknown_verb);  // empty verb
  CHECK(pre::error_reason(Error::unknown_verb) == "unknown-verb");
}

TEST_CASE("preamble: a malformed request line is refused") {
  CHECK(request_error(block({"VMGATE/1"})) == Error::bad_request_line);
  CHECK(request_error(block({"VMGATE/1 CONNECT"})) == Error::bad_request_line);
  CHECK(request_error(block({"VMGATE/1 CONNECT "})) == Error::bad_request_line);
  CHECK(request_error(block({"VMGATE/1 CONNECT 5986 extra"})) == Error::bad_request_line);
  CHECK(request_error(block({fmt::format("VMGATE/1 SEND {}", std::string(1025, 'a'))})) ==
        Error::bad_request_line);
  CHECK(request_error(block({"VMGATE/1 JOIN w\x7f"
                             "eb"})) == Error::bad_request_line);
}

TEST_CASE("preamble: a CONNECT port outside 1..65535 or not decimal is a bad port") {
  for (std::string_view port :
       {"0", "65536", "99999", "abc", "-1", "+80", "0x50", "5986a", "123456", "4294967297"}) {
    CAPTURE(port);
    CHECK(request_error(block({fmt::format("VMGATE/1 CONNECT {}", port)})) == Error::bad_port);
  }
  CHECK(pre::error_reason(Error::bad_port) == "bad-port");
  // SEND, JOIN and LEAVE take a name, not a port.
  CHECK(pre::parse_request(block({"VMGATE/1 JOIN abc"})).has_value());
}

TEST_CASE("preamble: a field line without a colon is a bad field") {
  CHECK(request_error(block({"VMGATE/1 CONNECT 5986", "Client 1.2.3.4"})) == Error::bad_field);
  CHECK(pre::error_reason(Error::bad_field) == "bad-preamble");
  // An empty line in the middle is a field line without a colon.
  CHECK(request_error("VMGATE/1 CONNECT 5986\r\n\r\nA: b\r\n\r\n") == Error::bad_field);
}

TEST_CASE("preamble: a field name must be a token") {
  CHECK(request_error(block({"VMGATE/1 CONNECT 5986", ": value"})) == Error::bad_field);
  CHECK(request_error(block({"VMGATE/1 CONNECT 5986", "Two Words: v"})) == Error::bad_field);
  CHECK(request_error(block({"VMGATE/1 CONNECT 5986", "Name : v"})) == Error::bad_field);
  CHECK(request_error(block({"VMGATE/1 CONNECT 5986",
                             fmt::format("{}: v", std::string(65, 'n'))})) == Error::bad_field);
}

TEST_CASE("preamble: a CR or LF inside a line is refused") {
  CHECK_FALSE(pre::parse_request("VMGATE/1 CONNECT 5986\r\nA: b\rc\r\n\r\n").has_value());
  CHECK_FALSE(pre::parse_request("VMGATE/1 CONNECT 5986\r\nA: b\nc\r\n\r\n").has_value());
  CHECK_FALSE(pre::parse_request("VMGATE/1 CONNECT 5986\nA: b\r\n\r\n").has_value());
  CHECK_FALSE(pre::parse_request("VMGATE/1 CONNECT\r5986\r\n\r\n").has_value());
  CHECK_FALSE(pre::parse_response("VMGATE/1 200 OK\nX: y\r\n\r\n").has_value());
  auto e = pre::parse_request("VMGATE/1 CONNECT 5986\r\nA: b\rc\r\n\r\n").error();
  CHECK(pre::error_reason(e) == "bad-preamble");
}

TEST_CASE("preamble: control characters and non-ASCII bytes in a value are refused") {
  for (std::string value : {std::string("a\x01z"), std::string("a\tz"), std::string("a\x7fz"),
                            std::string("a\xc3\xa9z"), std::string("a\0z", 3)}) {
    CAPTURE(value.size());
    CHECK(request_error(block({"VMGATE/1 CONNECT 5986", fmt::format("Client: {}", value)})) ==
          Error::bad_field);
    CHECK_FALSE(pre::valid_field_value(value));
  }
  CHECK(request_error(
            block({"VMGATE/1 CONNECT 5986", fmt::format("Client: {}", std::string(1025, 'v'))})) ==
        Error::bad_field);
}

TEST_CASE("preamble: at most 32 fields") {
  std::string head = "VMGATE/1 CONNECT 5986\r\n";
  std::string fields;
  for (int i = 0; i < 32; ++i)
    fields += fmt::format("F{}: v\r\n", i);
  CHECK(pre::parse_request(fmt::format("{}{}\r\n", head, fields)).has_value());
  CHECK(request_error(fmt::format("{}{}F32: v\r\n\r\n", head, fields)) == Error::bad_field);
}

TEST_CASE("preamble: response status lines are checked") {
  auto parsed = pre::parse_response("VMGATE/1 403 port-not-allowed\r\n\r\n");
  REQUIRE(parsed.has_value());
  CHECK(parsed->status == 403);
  CHECK(parsed->reason == "port-not-allowed");

  for (std::string_view line : {"VMGATE/1 20 OK", "VMGATE/1 2000 OK", "VMGATE/1 099 low",
                                "VMGATE/1 600 high", "VMGATE/1 -20 neg", "VMGATE/1 2x0 OK",
                                "VMGATE/1 200", "VMGATE/1 200 ", "VMGATE/1 200 two words",
                                "VMGATE/1 200 bad/reason", "VMGATE/1  200 OK", "HTTP/1.1 200 OK"}) {
    CAPTURE(line);
    CHECK(response_error(block({line})) == Error::bad_status_line);
  }
  CHECK(response_error(block({"VMGATE/2 200 OK"})) == Error::bad_version);
  CHECK_FALSE(pre::parse_response(block({"VMGATE/10 200 OK"})).has_value());
  CHECK(response_error("VMGATE/1 200 OK\r\n") == Error::bad_status_line);
  CHECK(response_error(block({"VMGATE/1 200 OK", "no colon"})) == Error::bad_field);
}
