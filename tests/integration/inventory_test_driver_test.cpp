// The libvirt inventory against libvirt's own test driver (a real driver,
// domains from a node XML file, in this process).
#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>

#include "hostd/directory/embedded_directory.hpp"
#include "hostd/inventory/libvirt_inventory.hpp"
#include "libvirt_fixture.hpp"

namespace {

using namespace std::chrono_literals;
using vmgate::hostd::EmbeddedDirectory;
using vmgate::hostd::LibvirtConfig;
using vmgate::hostd::LibvirtInventory;
using vmgate::hostd::LookupStatus;
using vmgate::hostd::VmState;

// Domains in a node file start running; db1 is shut off through the test
// driver's own namespace.
constexpr const char* kNodeXml = R"(<node>
  <network>
    <name>default</name>
    <bridge name='virbr0'/>
    <forward/>
    <ip address='192.168.122.1' netmask='255.255.255.0'/>
  </network>
  <domain type='test'>
    <name>web1</name>
    <uuid>6e3c4f5a-1b2c-4d5e-8f90-a1b2c3d4e5f6</uuid>
    <metadata><vg:groups xmlns:vg='urn:vmgate:1'><group>web</group></vg:groups></metadata>
    <memory unit='MiB'>64</memory>
    <os><type>hvm</type></os>
    <devices>
      <interface type='network'><source network='default'/></interface>
      <vsock model='virtio'><cid auto='no' address='3'/></vsock>
    </devices>
  </domain>
  <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
    <name>db1</name>
    <uuid>0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0</uuid>
    <memory unit='MiB'>64</memory>
    <os><type>hvm</type></os>
    <devices><vsock model='virtio'><cid auto='no' address='4'/></vsock></devices>
    <test:runstate>5</test:runstate>
  </domain>
  <domain type='test'>
    <name>novsock</name>
    <uuid>11111111-2222-3333-4444-555555555555</uuid>
    <memory unit='MiB'>64</memory>
    <os><type>hvm</type></os>
  </domain>
</node>
)";

}  // namespace

TEST_CASE("inventory reads domains, CIDs, states, networks and groups from the test driver") {
  vmgate::test::TempDir dir;
  vmgate::test::write_file(dir.path() / "node.xml", kNodeXml);
  EmbeddedDirectory directory;
  LibvirtConfig options;
  options.uri = "test://" + (dir.path() / "node.xml").string();
  LibvirtInventory inventory(options, directory);
  inventory.start();
  REQUIRE(inventory.wait_first_sync(10s));

  CHECK(inventory.stats().connected);
  CHECK(inventory.stats().syncs == 1);
  CHECK(directory.size() == 3);

  auto web = directory.find("web1");
  REQUIRE(web.status == LookupStatus::found);
  CHECK(web.vm->uuid == "6e3c4f5a-1b2c-4d5e-8f90-a1b2c3d4e5f6");
  CHECK(web.vm->cid == 3u);
  CHECK(web.vm->state == VmState::running);
  CHECK(web.vm->networks == std::vector<std::string>{"default"});
  CHECK(web.vm->groups == std::vector<std::string>{"web"});

  auto db = directory.find("0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0");
  REQUIRE(db.status == LookupStatus::found);
  CHECK(db.vm->name == "db1");
  CHECK(db.vm->cid == 4u);
  CHECK(db.vm->state == VmState::shut_off);

  auto plain = directory.find("novsock");
  REQUIRE(plain.status == LookupStatus::found);
  CHECK_FALSE(plain.vm->cid.has_value());
  CHECK(plain.vm->state == VmState::running);

  inventory.stop();
  CHECK_FALSE(inventory.stats().connected);
  CHECK(directory.size() == 3);  // the last known picture stays after stop
}

TEST_CASE("inventory keeps retrying a URI it cannot open, and stops while waiting") {
  vmgate::test::TempDir dir;
  EmbeddedDirectory directory;
  LibvirtConfig options;
  options.uri = "test://" + (dir.path() / "missing.xml").string();
  options.reconnect_min = 10ms;
  options.reconnect_max = 20ms;
  LibvirtInventory inventory(options, directory);
  inventory.start();
  CHECK_FALSE(inventory.wait_first_sync(200ms));
  CHECK_FALSE(inventory.stats().connected);
  CHECK(inventory.stats().syncs == 0);
  CHECK(directory.size() == 0);

  // Once the file appears, the next attempt succeeds.
  vmgate::test::write_file(dir.path() / "missing.xml", kNodeXml);
  REQUIRE(inventory.wait_first_sync(10s));
  CHECK(directory.size() == 3);
  inventory.stop();
}

TEST_CASE("inventory reads each of hundreds of domains with its own CID and state") {
  // Enough domains to be read from several threads: every record must come
  // out whole and under its own name, whichever thread read it.
  constexpr int kDomains = 400;
  auto cid_of = [](int i) -> std::optional<std::uint32_t> {
    if (i % 5 == 0) return std::nullopt;  // every fifth has no vsock device
    if (i % 7 == 0) return std::nullopt;  // auto='yes': the test driver assigns none
    return 3 + i;
  };
  std::string node = "<node>\n";
  for (int i = 0; i < kDomains; ++i) {
    char uuid[37];
    std::snprintf(uuid, sizeof uuid, "d0000000-0000-4000-8000-%012x", i);
    bool shut_off = i % 3 == 0;
    node += shut_off
                ? "<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>"
                : "<domain type='test'>";
    node += "<name>vm" + std::to_string(i) + "</name><uuid>" + uuid +
            "</uuid><memory unit='MiB'>64</memory><os><type>hvm</type></os><devices>";
    if (i % 5 != 0 && i % 7 == 0) node += "<vsock model='virtio'><cid auto='yes'/></vsock>";
    if (cid_of(i)) {
      node += "<vsock model='virtio'><cid auto='no' address='" + std::to_string(*cid_of(i)) +
              "'/></vsock>";
    }
    node += "</devices>";
    if (shut_off) node += "<test:runstate>5</test:runstate>";
    node += "</domain>\n";
  }
  node += "</node>\n";

  vmgate::test::TempDir dir;
  vmgate::test::write_file(dir.path() / "node.xml", node);
  EmbeddedDirectory directory;
  LibvirtConfig options;
  options.uri = "test://" + (dir.path() / "node.xml").string();
  LibvirtInventory inventory(options, directory);
  inventory.start();
  REQUIRE(inventory.wait_first_sync(30s));
  inventory.stop();

  REQUIRE(directory.size() == kDomains);
  for (int i = 0; i < kDomains; ++i) {
    INFO("vm" << i);
    auto found = directory.find("vm" + std::to_string(i));
    REQUIRE(found.status == LookupStatus::found);
    CHECK(found.vm->cid == cid_of(i));
    CHECK(found.vm->state == (i % 3 == 0 ? VmState::shut_off : VmState::running));
  }
}
