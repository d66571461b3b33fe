#include "hostd/dns/vm_zone.hpp"

#include <doctest/doctest.h>

#include "hostd/cluster/cluster_directory.hpp"

namespace {

using namespace vmgate::hostd;
using boost::asio::ip::make_address;

constexpr const char* kWebUuid = "6e3c4f5a-1b2c-4d5e-8f90-a1b2c3d4e5f6";
constexpr const char* kDbUuid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
constexpr const char* kOldUuid = "11111111-2222-4333-8444-555555555555";

VmRecord vm(std::string name, std::string uuid, std::optional<std::uint32_t> cid) {
  VmRecord record;
  record.name = std::move(name);
  record.uuid = std::move(uuid);
  record.cid = cid;
  record.state = VmState::running;
  return record;
}

VmClaim claim_on(std::string host, VmRecord record) {
  record.host = std::move(host);
  return VmClaim{std::move(record), EventStamp{1, 1}};
}

HostRecord host(std::string name, std::vector<std::string> addresses) {
  return HostRecord{.name = std::move(name),
                    .peer_address = "tcp:127.0.0.1:7443",
                    .version = "1",
                    .client_addresses = std::move(addresses)};
}

HostdConfig dns_config() {
  HostdConfig config;
  config.routing.host_suffix = ".vms.example";
  config.dns.addresses = {"192.0.2.1"};
  return config;
}

}  // namespace

TEST_CASE("a VM on another host answers the addresses that host's record publishes") {
  ClusterDirectory directory("kvm1");
  directory.replace_all({vm("web1", kWebUuid, 3)});
  directory.replace_remote({host("kvm2", {"198.51.100.2", "2001:db8::2"})},
                           {claim_on("kvm2", vm("db1", kDbUuid, std::nullopt))});
  const HostdConfig config = dns_config();
  DnsZone zone = vm_zone(directory, config, "kvm1", published_addresses(directory));
  CHECK(zone.suffix == "vms.example");

  DnsName local = zone.lookup("web1");
  CHECK(local.exists);
  CHECK(local.addresses == std::vector{make_address("192.0.2.1")});

  DnsName remote = zone.lookup("db1");
  CHECK(remote.exists);
  CHECK(remote.addresses == std::vector{make_address("198.51.100.2"), make_address("2001:db8::2")});

  // The VM moves to kvm3: the answer follows the directory.
  directory.put_remote_host(host("kvm3", {"198.51.100.3"}));
  VmClaim moved = claim_on("kvm3", vm("db1", kDbUuid, std::nullopt));
  moved.event = EventStamp{2, 1};
  directory.put_remote_claim(moved);
  CHECK(zone.lookup("db1").addresses == std::vector{make_address("198.51.100.3")});
}

TEST_CASE("a VM whose host publishes no address exists but answers no record") {
  ClusterDirectory directory("kvm1");
  // kvm2 is older than client addresses; kvm4's record has not been read.
  directory.replace_remote({host("kvm2", {})},
                           {claim_on("kvm2", vm("old1", kOldUuid, std::nullopt)),
                            claim_on("kvm4", vm("db1", kDbUuid, std::nullopt))});
  const HostdConfig config = dns_config();
  DnsZone zone = vm_zone(directory, config, "kvm1", published_addresses(directory));
  for (const char* name : {"old1", "db1"}) {
    CAPTURE(name);
    DnsName answer = zone.lookup(name);
    CHECK(answer.exists);
    CHECK(answer.addresses.empty());
  }
  CHECK_FALSE(zone.lookup("nosuchvm").exists);
}
