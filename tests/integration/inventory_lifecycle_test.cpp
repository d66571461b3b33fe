// The libvirt inventory following changes another process makes through a
// real libvirtd, and surviving that libvirtd's restart.
#include <doctest/doctest.h>

#include <libvirt/libvirt.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "hostd/directory/embedded_directory.hpp"
#include "hostd/inventory/domain_xml.hpp"
#include "hostd/inventory/libvirt_inventory.hpp"
#include "libvirt_fixture.hpp"
#include "tests/support/skip.hpp"

namespace {

using namespace std::chrono_literals;
using vmgate::hostd::EmbeddedDirectory;
using vmgate::hostd::LibvirtConfig;
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
bool holds(const EmbeddedDirectory& directory, const std::string& name, VmState state,
           std::optional<std::uint32_t> cid) {
  auto lookup = directory.find(name);
  return lookup.status == LookupStatus::found && lookup.vm->state == state && lookup.vm->cid == cid;
}

bool lacks(const EmbeddedDirectory& directory, const std::string& name) {
  return directory.find(name).status == LookupStatus::not_found;
}

// What a directory entry should say of one domain.
using Picture = std::map<std::string, std::pair<VmState, std::optional<std::uint32_t>>>;

Picture picture_of(const EmbeddedDirectory& directory) {
  Picture picture;
  for (const auto& vm : directory.snapshot())
    picture[vm.name] = {vm.state, vm.cid};
  return picture;
}

// The same, read from libvirt itself once nothing changes any more.
Picture picture_of(virConnectPtr connection) {
  Picture picture;
  virDomainPtr* domains = nullptr;
  int count = virConnectListAllDomains(connection, &domains, 0);
  for (int i = 0; i < count; ++i) {
    int state = 0;
    int reason = 0;
    virDomainGetState(domains[i], &state, &reason, 0);
    std::unique_ptr<char, decltype(&std::free)> xml(virDomainGetXMLDesc(domains[i], 0), &std::free);
    VmState vm_state = state == VIR_DOMAIN_RUNNING   ? VmState::running
                       : state == VIR_DOMAIN_SHUTOFF ? VmState::shut_off
                                                     : VmState::other;
    picture[virDomainGetName(domains[i])] = {
        vm_state, xml ? vmgate::hostd::parse_domain_xml(xml.get()).cid : std::nullopt};
    virDomainFree(domains[i]);
  }
  std::free(domains);
  return picture;
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
    vmgate::test::skip("needs root (setpriv runs libvirtd as nobody), libvirtd, virsh and setpriv");
    return;
  }
  vmgate::test::TempDir dir;
  vmgate::test::SessionLibvirtd libvirtd(dir.path());
  libvirtd.start();

  EmbeddedDirectory directory;
  LibvirtConfig options;
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

TEST_CASE("changes made while the first synchronisation reads the domains are not lost") {
  if (geteuid() != 0 || !have_tools()) {
    vmgate::test::skip("needs root (setpriv runs libvirtd as nobody), libvirtd, virsh and setpriv");
    return;
  }
  vmgate::test::TempDir dir;
  vmgate::test::SessionLibvirtd libvirtd(dir.path());
  libvirtd.start();
  // test:///default forgets its domains when its last client leaves; this one
  // stays from the first virsh to the last look.
  std::unique_ptr<virConnect, decltype(&virConnectClose)> holder(
      virConnectOpenReadOnly(libvirtd.uri().c_str()), &virConnectClose);
  REQUIRE(holder != nullptr);

  // Enough domains that the synchronisation reads them from several threads
  // and lasts while the changes below are made.
  constexpr int kDomains = 600;
  constexpr int kChanged = 150;
  auto name = [](const char* prefix, int i) { return prefix + std::to_string(i); };
  auto uuid = [](int tag, int i) {
    char text[37];
    std::snprintf(text, sizeof text, "c%07x-0000-4000-8000-%012x", tag, i);
    return std::string(text);
  };
  auto define_file = [&](const std::string& vm, const std::string& id, std::uint32_t cid) {
    auto path = dir.path() / (vm + "-" + std::to_string(cid) + ".xml");
    vmgate::test::write_file(path, domain_xml(vm, id, cid));
    return "define " + path.string() + "; ";
  };
  std::string populate;
  for (int i = 0; i < kDomains; ++i)
    populate += define_file(name("d", i), uuid(0, i), 1000 + i) + "start " + name("d", i) + "; ";
  INFO("virsh output:\n" << libvirtd.virsh_log());
  REQUIRE(libvirtd.virsh({populate}) == 0);

  // Stop, undefine, redefine with another CID, define and start new ones:
  // made from another connection, one at a time, from the moment the
  // inventory has registered its callbacks (stats().connected) while it lists
  // and reads the domains. The last change waits for the synchronisation to
  // end, so changes fall on both sides of it; how many came before is
  // counted, and the test requires some did.
  EmbeddedDirectory directory;
  LibvirtConfig options;
  options.uri = libvirtd.uri();
  LibvirtInventory inventory(options, directory);
  std::atomic<int> before_sync{0};
  std::atomic<int> failed_changes{0};
  std::string changer_error;
  std::thread changer([&] {
    std::unique_ptr<virConnect, decltype(&virConnectClose)> connection(
        virConnectOpen(libvirtd.uri().c_str()), &virConnectClose);
    if (!connection) {
      changer_error = "cannot open a read-write connection";
      return;
    }
    virConnectPtr c = connection.get();
    auto check = [&](bool ok) {
      if (!ok) ++failed_changes;
    };
    auto define = [&](const std::string& vm, const std::string& id, std::uint32_t cid) {
      virDomainPtr d = virDomainDefineXML(c, domain_xml(vm, id, cid).c_str());
      check(d != nullptr);
      return d;
    };
    if (!vmgate::test::poll_until([&] { return inventory.stats().connected.load(); }, 30s)) {
      changer_error = "the inventory never connected";
      return;
    }
    for (int k = 0; k < kChanged; ++k) {
      if (k == kChanged - 1)
        vmgate::test::poll_until([&] { return inventory.stats().syncs.load() >= 1; }, 30s);
      virDomainPtr d = virDomainLookupByName(c, name("d", k).c_str());
      check(d != nullptr);
      if (d != nullptr) {
        check(virDomainDestroy(d) == 0);
        if (k % 3 == 0) check(virDomainUndefine(d) == 0);
        virDomainFree(d);
      }
      if (k % 3 == 1) {
        if (virDomainPtr r = define(name("d", k), uuid(0, k), 5000 + k)) virDomainFree(r);
      }
      if (virDomainPtr n = define(name("n", k), uuid(1, k), 9000 + k)) {
        if (k % 2 == 0) check(virDomainCreate(n) == 0);
        virDomainFree(n);
      }
      if (inventory.stats().syncs.load() == 0) ++before_sync;
    }
  });

  inventory.start();
  bool synchronised = inventory.wait_first_sync(30s);
  changer.join();
  REQUIRE(synchronised);
  REQUIRE(changer_error.empty());
  REQUIRE(failed_changes == 0);
  INFO(before_sync.load() << " of " << kChanged << " changes were made during the first sync");
  REQUIRE(before_sync > 0);
  REQUIRE(before_sync < kChanged);

  Picture truth = picture_of(holder.get());
  REQUIRE(truth.size() == static_cast<std::size_t>(kDomains + 1 + kChanged - (kChanged + 2) / 3));
  CHECK(vmgate::test::poll_until([&] { return picture_of(directory) == truth; }));
  CHECK(picture_of(directory) == truth);
  CHECK(inventory.stats().syncs == 1);
  inventory.stop();
}
