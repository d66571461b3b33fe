// The fan-out message between hosts (cluster/peer_fanout_message): what the
// sender writes is what the receiver reads back, and the receiver refuses
// every count and size over its limits from the head, before the body.
#include "hostd/cluster/peer_fanout_message.hpp"

#include <doctest/doctest.h>

#include <boost/beast/http.hpp>

using namespace vmgate::hostd;
namespace http = boost::beast::http;

namespace {

const std::string uuid1 = "aaaaaaaa-0000-0000-0000-000000000001";
const std::string uuid2 = "aaaaaaaa-0000-0000-0000-000000000002";
const std::string agent_head = "POST /wsman HTTP/1.1\r\nHost: web01\r\nContent-Length: 5\r\n\r\n";

PeerFanoutMessage message() {
  return PeerFanoutMessage{.target_host = "kvm2",
                           .client = "203.0.113.7:51514",
                           .identity = "token:alice",
                           .request_id = "5b2c0e9a",
                           .port = 5986,
                           .vms = {uuid1, uuid2},
                           .agent_head = agent_head,
                           .body = "hello"};
}

const PeerFanoutLimits limits{.max_vms = 10, .max_head_bytes = 1024, .max_body = 100};

// The head as the peer listener reads it, and the bytes after it.
struct Read {
  http::request_parser<http::empty_body> parser;
  std::string rest;
};

void read(const std::string& wire, Read& out) {
  boost::system::error_code ec;
  const std::size_t used = out.parser.put(boost::asio::buffer(wire), ec);
  REQUIRE_FALSE(ec);
  REQUIRE(out.parser.is_header_done());
  out.rest = wire.substr(used);
}

std::string wire_of(const PeerFanoutMessage& m) {
  return encode_peer_fanout(m) + std::string(m.agent_head) + std::string(m.body);
}

}  // namespace

TEST_CASE("a fan-out message names its VMs, head and body, and reads back as it was written") {
  const std::string wire = wire_of(message());
  Read r;
  read(wire, r);
  const auto& head = r.parser.get();
  CHECK(is_peer_fanout(head));
  CHECK(head["Vmgate-Host"] == "kvm2");
  CHECK(head["Vmgate-Client"] == "203.0.113.7:51514");
  CHECK(head["Vmgate-Identity"] == "token:alice");
  CHECK(head["Vmgate-Request-Id"] == "5b2c0e9a");
  auto declared = parse_peer_fanout_head(head, limits);
  REQUIRE(declared.has_value());
  CHECK(declared->port == 5986);
  CHECK(declared->vms == 2);
  CHECK(declared->head_bytes == agent_head.size());
  CHECK(declared->content_length == r.rest.size());
  auto split = split_peer_fanout_body(r.rest, *declared);
  REQUIRE(split.has_value());
  CHECK(split->vms == std::vector<std::string>{uuid1, uuid2});
  CHECK(split->agent_head == agent_head);
  CHECK(split->body == "hello");
}

TEST_CASE("a fan-out message is not a CONNECT, and a CONNECT is not a fan-out message") {
  http::request_header<> connect;
  connect.method(http::verb::connect);
  connect.target(uuid1 + ":5986");
  CHECK_FALSE(is_peer_fanout(connect));
  http::request_header<> other;
  other.method(http::verb::post);
  other.target("/vmgate/v1/fanout/x");
  CHECK_FALSE(is_peer_fanout(other));
}

TEST_CASE("a fan-out message drops a field that would inject a line") {
  PeerFanoutMessage m = message();
  m.identity = "cert:evil\r\nVmgate-Host: kvm9";
  const std::string head = encode_peer_fanout(m);
  CHECK(head.find("Vmgate-Identity") == std::string::npos);
  CHECK(head.find("kvm9") == std::string::npos);
}

TEST_CASE("the receiver refuses a fan-out message over its limits from the head alone") {
  auto refusal_of = [](PeerFanoutMessage m, PeerFanoutLimits l = limits) {
    Read r;
    read(wire_of(m), r);
    auto declared = parse_peer_fanout_head(r.parser.get(), l);
    REQUIRE_FALSE(declared.has_value());
    return declared.error();
  };
  PeerFanoutLimits one_vm = limits;
  one_vm.max_vms = 1;
  CHECK(refusal_of(message(), one_vm).status == 413);
  CHECK(refusal_of(message(), one_vm).reason.find("fanout.max_targets") != std::string::npos);
  PeerFanoutLimits short_head = limits;
  short_head.max_head_bytes = 10;
  CHECK(refusal_of(message(), short_head).status == 413);
  PeerFanoutMessage big = message();
  const std::string body(1000, 'x');  // over what 2 VM lines, the head and max_body allow
  big.body = body;
  CHECK(refusal_of(big).status == 413);
  PeerFanoutMessage no_port = message();
  no_port.port = 0;
  CHECK(refusal_of(no_port).status == 400);
  PeerFanoutMessage no_vms = message();
  no_vms.vms.clear();
  CHECK(refusal_of(no_vms).status == 400);
}

TEST_CASE("a fan-out message with a second count or a chunked body is refused") {
  const std::string wire = wire_of(message());
  const std::size_t end = wire.find("\r\n\r\n");
  Read twice;
  read(wire.substr(0, end) + "\r\nVmgate-Vms: 1" + wire.substr(end), twice);
  CHECK(parse_peer_fanout_head(twice.parser.get(), limits).error().status == 400);
  http::request_header<> chunked;
  chunked.method(http::verb::post);
  chunked.target(peer_fanout_path);
  chunked.set("Vmgate-Port", "5986");
  chunked.set("Vmgate-Vms", "1");
  chunked.set("Vmgate-Head-Bytes", "10");
  chunked.set(http::field::transfer_encoding, "chunked");
  CHECK(parse_peer_fanout_head(chunked, limits).error().status == 400);
}

TEST_CASE("a fan-out body that does not match its head is refused") {
  PeerFanoutHead declared{.port = 5986, .vms = 2, .head_bytes = agent_head.size()};
  CHECK_FALSE(split_peer_fanout_body(uuid1 + "\n", declared).has_value());  // one VM line of two
  CHECK_FALSE(
      split_peer_fanout_body(uuid1 + "\n\n" + agent_head, declared).has_value());  // an empty line
  CHECK_FALSE(
      split_peer_fanout_body(uuid1 + "\n" + uuid2 + "\nPOST / HTTP/1.1\r\n", declared).has_value());
  std::string too_long(300, 'a');  // a VM line over max_peer_vm_line
  too_long.append("\n").append(uuid2).append("\n").append(agent_head);
  CHECK_FALSE(split_peer_fanout_body(too_long, declared).has_value());
  const std::string named = uuid1 + "\nweb01\n" + agent_head;
  auto ok = split_peer_fanout_body(named, declared);
  REQUIRE(ok.has_value());
  CHECK(ok->vms[1] == "web01");  // a name is the receiver's to refuse, per VM
  CHECK(ok->body.empty());
}
