#include "hostd/cluster/cluster_records.hpp"

#include <doctest/doctest.h>

namespace {

using vmgate::hostd::ClusterKey;
using vmgate::hostd::EventStamp;
using vmgate::hostd::HostRecord;
using vmgate::hostd::VmClaim;
using vmgate::hostd::VmRecord;
using vmgate::hostd::VmState;
using namespace vmgate::hostd;

constexpr const char* kUuid = "6e3c4f5a-1b2c-4d5e-8f90-a1b2c3d4e5f6";

VmClaim claim(std::string host, VmState state, std::int64_t time_ns, std::uint64_t sequence = 1) {
  VmClaim c;
  c.vm.uuid = kUuid;
  c.vm.name = "web1";
  c.vm.state = state;
  c.vm.host = std::move(host);
  c.event = EventStamp{time_ns, sequence};
  return c;
}

}  // namespace

TEST_CASE("cluster keys live under /vmgate/v1/ and say whether they name a host or a VM") {
  CHECK(cluster_host_key("kvm1") == "/vmgate/v1/hosts/kvm1");
  CHECK(cluster_vm_key("6e3c4f5a-1b2c-4d5e-8f90-a1b2c3d4e5f6") ==
        "/vmgate/v1/vms/6e3c4f5a-1b2c-4d5e-8f90-a1b2c3d4e5f6");
  auto host = parse_cluster_key("/vmgate/v1/hosts/kvm1");
  CHECK(host.kind == ClusterKey::Kind::host);
  CHECK(host.id == "kvm1");
  auto vm = parse_cluster_key(cluster_vm_key(kUuid));
  CHECK(vm.kind == ClusterKey::Kind::vm);
  CHECK(vm.id == kUuid);
  CHECK(parse_cluster_key("/vmgate/v1/vms/").kind == ClusterKey::Kind::other);
  CHECK(parse_cluster_key("/vmgate/v1/vms/a/b").kind == ClusterKey::Kind::other);
  CHECK(parse_cluster_key("/vmgate/v2/hosts/kvm1").kind == ClusterKey::Kind::other);
}

TEST_CASE("a prefix's range end is the prefix with its last byte incremented") {
  CHECK(prefix_range_end("/vmgate/v1/") == "/vmgate/v10");
  CHECK(prefix_range_end("a\xff") == "b");
  CHECK(prefix_range_end("\xff\xff") == std::string(1, '\0'));
}

TEST_CASE("a host record survives encoding and decoding") {
  HostRecord host{.name = "kvm1", .peer_address = "tcp:10.0.0.1:7443", .version = "1.2.3"};
  auto decoded = decode_host_record(encode_host_record(host));
  REQUIRE(decoded.has_value());
  CHECK(*decoded == host);
  CHECK_FALSE(decode_host_record("{\"name\":\"kvm/1\",\"peer_address\":\"tcp:x:1\"}").has_value());
  CHECK_FALSE(decode_host_record("not json").has_value());
}

TEST_CASE("a host record carries the addresses clients reach the host on") {
  HostRecord host{.name = "kvm1",
                  .peer_address = "tcp:10.0.0.1:7443",
                  .version = "1.2.3",
                  .client_addresses = {"192.0.2.1", "2001:db8::1"}};
  const std::string text = encode_host_record(host);
  CHECK(text.find("\"client_addresses\":[\"192.0.2.1\",\"2001:db8::1\"]") != std::string::npos);
  auto decoded = decode_host_record(text);
  REQUIRE(decoded.has_value());
  CHECK(decoded->client_addresses == host.client_addresses);
}

TEST_CASE("a host record from a host older than client addresses is read as publishing none") {
  auto decoded =
      decode_host_record(R"({"name":"kvm1","peer_address":"tcp:10.0.0.1:7443","version":"0.9"})");
  REQUIRE(decoded.has_value());
  CHECK(decoded->name == "kvm1");
  CHECK(decoded->peer_address == "tcp:10.0.0.1:7443");
  CHECK(decoded->client_addresses.empty());
}

TEST_CASE("a host record whose client addresses are not IP addresses is refused") {
  CHECK_FALSE(decode_host_record(
                  R"({"name":"kvm1","peer_address":"tcp:x:1","client_addresses":"192.0.2.1"})")
                  .has_value());
  CHECK_FALSE(
      decode_host_record(R"({"name":"kvm1","peer_address":"tcp:x:1","client_addresses":[1]})")
          .has_value());
  auto named = decode_host_record(
      R"({"name":"kvm1","peer_address":"tcp:x:1","client_addresses":["kvm1.example"]})");
  REQUIRE_FALSE(named.has_value());
  CHECK(named.error().reason.find("client_addresses") != std::string::npos);
}

TEST_CASE("a VM claim survives encoding and decoding, without its CID") {
  VmClaim c = claim("kvm1", VmState::paused, 1'700'000'000'123'456'789, 42);
  c.vm.cid = 7;
  c.vm.groups = {"web", "frontend"};
  c.vm.networks = {"default"};
  const std::string text = encode_vm_claim(c);
  CHECK(text.find("\"cid\"") == std::string::npos);
  auto decoded = decode_vm_claim(text);
  REQUIRE(decoded.has_value());
  c.vm.cid.reset();
  CHECK(*decoded == c);
}

TEST_CASE("a VM claim that is malformed is refused, not half read") {
  CHECK_FALSE(decode_vm_claim("[]").has_value());
  // A name that is not a VM name, a UUID that is not one, a stamp missing.
  VmClaim c = claim("kvm1", VmState::running, 5);
  std::string text = encode_vm_claim(c);
  auto replaced = [&](std::string from, std::string to) {
    std::string out = text;
    out.replace(out.find(from), from.size(), to);
    return out;
  };
  CHECK_FALSE(decode_vm_claim(replaced("\"web1\"", "\"web 1\"")).has_value());
  CHECK_FALSE(decode_vm_claim(replaced(kUuid, "not-a-uuid")).has_value());
  CHECK_FALSE(decode_vm_claim(replaced("\"time_ns\":\"5\"", "\"time_ns\":\"five\"")).has_value());
  CHECK_FALSE(decode_vm_claim(replaced("\"event\"", "\"evend\"")).has_value());
}

TEST_CASE("the claim with the newer libvirt event wins between two running copies") {
  const VmClaim older = claim("kvm1", VmState::running, 1000);
  const VmClaim newer = claim("kvm2", VmState::running, 2000);
  CHECK(claim_wins(newer, older));
  CHECK_FALSE(claim_wins(older, newer));
  // Within one tick, the sequence orders them.
  CHECK(claim_wins(claim("kvm2", VmState::running, 1000, 2),
                   claim("kvm1", VmState::running, 1000, 1)));
}

TEST_CASE("a running VM's claim is never taken by a newer one that is not running") {
  // A migration's source, paused or shut off after the destination started,
  // has the newer event and still loses.
  const VmClaim destination = claim("kvm2", VmState::running, 1000);
  const VmClaim source = claim("kvm1", VmState::shut_off, 2000);
  CHECK_FALSE(claim_wins(source, destination));
  CHECK(claim_wins(destination, source));
}

TEST_CASE("a host always replaces its own claim, and equal claims go to the same host everywhere") {
  CHECK(claim_wins(claim("kvm1", VmState::shut_off, 1), claim("kvm1", VmState::running, 2)));
  const VmClaim a = claim("kvm-a", VmState::running, 7);
  const VmClaim b = claim("kvm-b", VmState::running, 7);
  CHECK(claim_wins(a, b));
  CHECK_FALSE(claim_wins(b, a));
}

TEST_CASE("host names are refused when they could not be an etcd key segment") {
  CHECK(valid_host_name("kvm-1.example_org"));
  CHECK_FALSE(valid_host_name(""));
  CHECK_FALSE(valid_host_name("kvm/1"));
  CHECK_FALSE(valid_host_name(".."));
  CHECK_FALSE(valid_host_name("kvm 1"));
}
