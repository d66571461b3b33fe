// The libvirt inventory following changes another process makes through a
// real libvirtd, and surviving that libvirtd's restart.
#include <doctest/doctest.h>

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "hostd/directory/directory.hpp"
#include "hostd/inventory/libvirt_inventory.hpp"
#include "libvirt_fixture.hpp"

namespace {

using namespace std::chrono_literals;
using vmgate::hostd::Directory;
using vmgate::hostd::InventoryOptions;
using vmgate::hostd::LibvirtInventory;
using vmgate::hostd::LookupStatus;
using vmgate::hostd::VmState;

std::string domain_xml(const std::string& name, const std::string& uuid, std::uint32_t cid) {
  return "<domain type='test'><name>" + name + "</name><uuid>" + uuid +
         "</uuid><memory unit='MiB'>64</memory><os><type>hvm</type></os>"
         "<devices><vsock model='virtio'><cid auto='no' address='" +
         std::to_string(cid) + "'/></vsock></devices></domain>";
}

// True when the directory holds `name` with exactly this state and CID.
bool holds(const Directory& directory, const std::string& name, VmState state,
           std::optional<std::uint32_t> cid) {
  auto lookup = directory.find(name);
  return lookup.status == LookupStatus::found && lookup.vm->state == state && lookup.vm->cid == cid;
}

bool lacks(const Directory& directory, const std::string& name) {
  return directory.find(name).status == LookupStatus::not_found;
}

bool have_tools() {
  for (const char* tool : {"/usr/sbin/libvirtd", "/usr/bin/virsh", "/usr/bin/setpriv"}) {
    if (access(tool, X_OK) != 0) return false;
  }
  return true;
}

}  // namespace

TEST_CASE(
    "inventory follows define, start, destroy, undefine from another process and "
    "resynchronises after libvirtd restarts") {
  if (geteuid() != 0 || !have_tools()) {
    MESSAGE("skipped: needs root (setpriv runs libvirtd as nobody), libvirtd, virsh and setpriv");
    return;
  }
  vmgate::test::TempDir dir;
  vmgate::test::SessionLibvirtd libvirtd(dir.path());
  libvirtd.start();

  Directory directory;
  InventoryOptions options;
  options.uri = libvirtd.uri();
  options.reconnect_min = 50ms;
  options.reconnect_max = 400ms;
  LibvirtInventory inventory(options, directory);
  inventory.start();
  REQUIRE(inventory.wait_first_sync(10s));
  CHECK(directory.find("test").status == LookupStatus::found);  // test:///default's own domain

  auto virsh = [&](std::vector<std::string> args) {
    INFO("virsh output:\n" << libvirtd.virsh_log());
    REQUIRE(libvirtd.virsh(std::move(args)) == 0);
  };
  const std::string uuid = "6e3c4f5a-1b2c-4d5e-8f90-a1b2c3d4e5f6";
  auto xml = dir.path() / "vsock-vm.xml";

  SUBCASE("lifecycle events") {
    vmgate::test::write_file(xml, domain_xml("vsock-vm", uuid, 42));
    virsh({"define", xml.string()});
    CHECK(vmgate::test::poll_until(
        [&] { return holds(directory, "vsock-vm", VmState::shut_off, 42); }));

    virsh({"start", "vsock-vm"});
    CHECK(vmgate::test::poll_until(
        [&] { return holds(directory, "vsock-vm", VmState::running, 42); }));

    virsh({"destroy", "vsock-vm"});
    CHECK(vmgate::test::poll_until(
        [&] { return holds(directory, "vsock-vm", VmState::shut_off, 42); }));

    // A redefinition changes the CID: it is read again, not remembered.
    vmgate::test::write_file(xml, domain_xml("vsock-vm", uuid, 43));
    virsh({"define", xml.string()});
    CHECK(vmgate::test::poll_until(
        [&] { return holds(directory, "vsock-vm", VmState::shut_off, 43); }));

    virsh({"undefine", "vsock-vm"});
    CHECK(vmgate::test::poll_until([&] { return lacks(directory, "vsock-vm"); }));
    CHECK(lacks(directory, uuid));
    CHECK(inventory.stats().events >= 5);
    CHECK(inventory.stats().syncs == 1);  // events, not resynchronisations
  }

  SUBCASE("libvirtd restart") {
    // Known only to the first daemon: a resynchronisation must drop it, as no
    // event about it will ever come from the second.
    vmgate::test::write_file(xml, domain_xml("stale-vm", uuid, 50));
    virsh({"define", xml.string()});
    REQUIRE(vmgate::test::poll_until([&] { return !lacks(directory, "stale-vm"); }));
    auto syncs_before = inventory.stats().syncs.load();

    libvirtd.stop();
    CHECK(vmgate::test::poll_until([&] { return !inventory.stats().connected; }));
    CHECK(directory.find("stale-vm").status == LookupStatus::found);  // last known state kept

    libvirtd.start();
    CHECK(vmgate::test::poll_until(
        [&] { return inventory.stats().connected && inventory.stats().syncs > syncs_before; }));
    CHECK(inventory.stats().reconnects >= 1);
    CHECK(lacks(directory, "stale-vm"));
    CHECK(directory.find("test").status == LookupStatus::found);

    // Events flow on the new connection.
    auto fresh = dir.path() / "fresh-vm.xml";
    vmgate::test::write_file(fresh,
                             domain_xml("fresh-vm", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", 60));
    virsh({"define", fresh.string()});
    CHECK(vmgate::test::poll_until(
        [&] { return holds(directory, "fresh-vm", VmState::shut_off, 60); }));
  }

  inventory.stop();
}
