#include "hostd/directory/embedded_directory.hpp"

#include <doctest/doctest.h>

namespace {

using vmgate::hostd::EmbeddedDirectory;
using vmgate::hostd::LookupStatus;
using vmgate::hostd::Selection;
using vmgate::hostd::VmRecord;
using vmgate::hostd::VmState;

constexpr const char* kWebUuid = "6e3c4f5a-1b2c-4d5e-8f90-a1b2c3d4e5f6";
constexpr const char* kDbUuid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

VmRecord vm(std::string name, std::string uuid, std::uint32_t cid,
            VmState state = VmState::running) {
  VmRecord record;
  record.name = std::move(name);
  record.uuid = std::move(uuid);
  record.cid = cid;
  record.state = state;
  return record;
}

void fill_two_vms(EmbeddedDirectory& directory) {
  directory.replace_all({vm("web1", kWebUuid, 3), vm("db1", kDbUuid, 4, VmState::shut_off)});
}

}  // namespace

TEST_CASE("directory finds a VM by its libvirt name") {
  EmbeddedDirectory directory;
  directory.replace_all({vm("web1", kWebUuid, 3), vm("db1", kDbUuid, 4, VmState::shut_off)});
  auto found = directory.find("db1");
  REQUIRE(found.status == LookupStatus::found);
  CHECK(found.vm->uuid == kDbUuid);
  CHECK(found.vm->cid == 4u);
  CHECK(found.vm->state == VmState::shut_off);
}

TEST_CASE("directory finds a VM by UUID in any case") {
  EmbeddedDirectory directory;
  directory.replace_all({vm("web1", "6E3C4F5A-1B2C-4D5E-8F90-A1B2C3D4E5F6", 3)});
  for (const char* query :
       {kWebUuid, "6E3C4F5A-1B2C-4D5E-8F90-A1B2C3D4E5F6", "6e3C4f5A-1b2c-4D5E-8f90-a1B2c3D4e5F6"}) {
    auto found = directory.find(query);
    REQUIRE(found.status == LookupStatus::found);
    CHECK(found.vm->name == "web1");
    CHECK(found.vm->uuid == kWebUuid);  // stored lower-case
  }
}

TEST_CASE("directory matches a name ignoring case only when nothing matches exactly") {
  EmbeddedDirectory directory;
  directory.replace_all({vm("Web1", kWebUuid, 3)});
  auto found = directory.find("web1");
  REQUIRE(found.status == LookupStatus::found);
  CHECK(found.vm->name == "Web1");

  directory.upsert(vm("web1", kDbUuid, 4));
  found = directory.find("web1");
  REQUIRE(found.status == LookupStatus::found);
  CHECK(found.vm->uuid == kDbUuid);
  CHECK(directory.find("WEB1").status == LookupStatus::ambiguous);
}

TEST_CASE("directory reports an unknown VM as not found") {
  EmbeddedDirectory directory;
  fill_two_vms(directory);
  auto missing = directory.find("nope");
  CHECK(missing.status == LookupStatus::not_found);
  CHECK_FALSE(missing.vm.has_value());
  CHECK(directory.find("").status == LookupStatus::not_found);
  CHECK(directory.find("6e3c4f5a-1b2c-4d5e-8f90-a1b2c3d4e5f7").status == LookupStatus::not_found);
}

TEST_CASE("a name equal to another VM's UUID is ambiguous and lists both candidates") {
  EmbeddedDirectory directory;
  fill_two_vms(directory);
  directory.upsert(vm(kWebUuid, "11111111-2222-3333-4444-555555555555", 9));
  auto lookup = directory.find(kWebUuid);
  REQUIRE(lookup.status == LookupStatus::ambiguous);
  CHECK_FALSE(lookup.vm.has_value());
  REQUIRE(lookup.candidates.size() == 2);
  std::string web = std::string("web1 (") + kWebUuid + ")";
  std::string impostor = std::string(kWebUuid) + " (11111111-2222-3333-4444-555555555555)";
  CHECK((lookup.candidates[0] == web || lookup.candidates[1] == web));
  CHECK((lookup.candidates[0] == impostor || lookup.candidates[1] == impostor));
  // The same VM named by its own UUID is not ambiguous.
  directory.replace_all({vm(kWebUuid, kWebUuid, 3)});
  CHECK(directory.find(kWebUuid).status == LookupStatus::found);
}

TEST_CASE("upsert of a renamed VM drops the old name") {
  EmbeddedDirectory directory;
  fill_two_vms(directory);
  directory.upsert(vm("web2", kWebUuid, 7));
  CHECK(directory.find("web1").status == LookupStatus::not_found);
  auto renamed = directory.find("web2");
  REQUIRE(renamed.status == LookupStatus::found);
  CHECK(renamed.vm->cid == 7u);
  CHECK(directory.size() == 2);
}

TEST_CASE("upsert replaces a VM's record, matched by UUID in any case") {
  EmbeddedDirectory directory;
  fill_two_vms(directory);
  directory.upsert(vm("web1", "6E3C4F5A-1B2C-4D5E-8F90-A1B2C3D4E5F6", 5, VmState::paused));
  CHECK(directory.size() == 2);
  auto found = directory.find("web1");
  REQUIRE(found.status == LookupStatus::found);
  CHECK(found.vm->cid == 5u);
  CHECK(found.vm->state == VmState::paused);
}

TEST_CASE("remove forgets a VM by UUID, name and UUID both") {
  EmbeddedDirectory directory;
  fill_two_vms(directory);
  directory.remove("6E3C4F5A-1B2C-4D5E-8F90-A1B2C3D4E5F6");
  CHECK(directory.size() == 1);
  CHECK(directory.find("web1").status == LookupStatus::not_found);
  CHECK(directory.find(kWebUuid).status == LookupStatus::not_found);
  CHECK(directory.find("db1").status == LookupStatus::found);
  directory.remove(kWebUuid);  // unknown: no effect
  CHECK(directory.size() == 1);
}

TEST_CASE("a stale record sharing a name does not hide the live one once removed") {
  EmbeddedDirectory directory;
  fill_two_vms(directory);
  const char* new_uuid = "22222222-3333-4444-5555-666666666666";
  directory.upsert(vm("web1", new_uuid, 8));  // redefined before the old one's event
  CHECK(directory.find("web1").status == LookupStatus::ambiguous);
  directory.remove(kWebUuid);
  auto found = directory.find("web1");
  REQUIRE(found.status == LookupStatus::found);
  CHECK(found.vm->uuid == new_uuid);
}

TEST_CASE("replace_all drops VMs that are no longer listed") {
  EmbeddedDirectory directory;
  fill_two_vms(directory);
  VmRecord app = vm("app1", "33333333-4444-5555-6666-777777777777", 10);
  app.groups = {"web"};
  app.networks = {"default"};
  directory.replace_all({app});
  CHECK(directory.size() == 1);
  CHECK(directory.find("web1").status == LookupStatus::not_found);
  CHECK(directory.find("db1").status == LookupStatus::not_found);
  auto snapshot = directory.snapshot();
  REQUIRE(snapshot.size() == 1);
  app.host = "local";  // every VM of the embedded directory runs here
  CHECK(snapshot[0] == app);
  directory.replace_all({});
  CHECK(directory.size() == 0);
  CHECK(directory.snapshot().empty());
}

TEST_CASE("every VM of the embedded directory is on the host it was made for") {
  EmbeddedDirectory directory("kvm7");
  fill_two_vms(directory);
  directory.upsert(vm("app1", "33333333-4444-5555-6666-777777777777", 10));
  for (const auto& record : directory.snapshot())
    CHECK(record.host == "kvm7");
  CHECK(directory.find("web1").vm->host == "kvm7");
}

TEST_CASE("select gives the one VM a name or UUID target names") {
  EmbeddedDirectory directory;
  fill_two_vms(directory);
  auto by_name = directory.select(*vmgate::hostd::parse_target("web1"));
  REQUIRE(by_name.status == Selection::Status::found);
  REQUIRE(by_name.vms.size() == 1);
  CHECK(by_name.vms[0].uuid == kWebUuid);
  auto by_uuid = directory.select(*vmgate::hostd::parse_target(kDbUuid));
  REQUIRE(by_uuid.status == Selection::Status::found);
  CHECK(by_uuid.vms[0].name == "db1");
}

TEST_CASE("select says which name is unknown or ambiguous") {
  EmbeddedDirectory directory;
  fill_two_vms(directory);
  auto missing = directory.select(*vmgate::hostd::parse_target("nosuch"));
  CHECK(missing.status == Selection::Status::not_found);
  CHECK(missing.name == "nosuch");
  CHECK(missing.vms.empty());
  directory.upsert(vm(kWebUuid, "99999999-8888-7777-6666-555555555555", 11));
  auto ambiguous = directory.select(*vmgate::hostd::parse_target(kWebUuid));
  CHECK(ambiguous.status == Selection::Status::ambiguous);
  CHECK(ambiguous.candidates.size() == 2);
  CHECK(ambiguous.vms.empty());
}

TEST_CASE("select expands group, network and list targets, and leaves HOST/NAME ones") {
  EmbeddedDirectory directory;
  fill_two_vms(directory);
  auto select = [&directory](const char* text) {
    auto target = vmgate::hostd::parse_target(text);
    REQUIRE(target.has_value());
    return directory.select(*target);
  };
  auto list = select("web1,db1");
  CHECK(list.status == Selection::Status::found);
  CHECK(list.vms.size() == 2);
  auto group = select("group:web");
  CHECK(group.status == Selection::Status::not_found);
  CHECK(group.reason.find("group 'web' is not known") != std::string::npos);
  CHECK(select("net:default").status == Selection::Status::not_found);
  CHECK(select("kvm1/web1").status == Selection::Status::unsupported);
}

TEST_CASE("by_cid finds the VM that holds a CID, and follows a CID that changes") {
  EmbeddedDirectory directory;
  fill_two_vms(directory);
  REQUIRE(directory.by_cid(3));
  CHECK(directory.by_cid(3)->name == "web1");
  CHECK(directory.by_cid(4)->name == "db1");
  CHECK_FALSE(directory.by_cid(5));
  // Restarted with another CID: the old one no longer names it.
  directory.upsert(vm("web1", kWebUuid, 7));
  CHECK_FALSE(directory.by_cid(3));
  CHECK(directory.by_cid(7)->name == "web1");
  directory.remove(kWebUuid);
  CHECK_FALSE(directory.by_cid(7));
  // A VM without a vsock device holds no CID.
  VmRecord plain = vm("plain", "12121212-3434-5656-7878-909090909090", 0);
  plain.cid.reset();
  directory.upsert(plain);
  CHECK(directory.size() == 2);
}

TEST_CASE("by_cid names nobody while two VMs claim one CID") {
  EmbeddedDirectory directory;
  fill_two_vms(directory);
  directory.upsert(vm("web1-restored", "abababab-cdcd-efef-0101-232323232323", 3));
  CHECK_FALSE(directory.by_cid(3));
  directory.remove("abababab-cdcd-efef-0101-232323232323");
  CHECK(directory.by_cid(3)->name == "web1");
}

TEST_CASE("observers hear of every change, and no more once they leave") {
  EmbeddedDirectory directory;
  std::vector<vmgate::hostd::DirectoryChange> heard;
  auto id = directory.observe([&](const vmgate::hostd::DirectoryChange& c) { heard.push_back(c); });
  fill_two_vms(directory);
  directory.upsert(vm("web1", "6E3C4F5A-1B2C-4D5E-8F90-A1B2C3D4E5F6", 9));
  directory.remove(kDbUuid);
  REQUIRE(heard.size() == 3);
  CHECK(heard[0].everything);
  CHECK_FALSE(heard[1].everything);
  CHECK(heard[1].uuids == std::vector<std::string>{kWebUuid});  // lower-cased, as stored
  CHECK(heard[2].uuids == std::vector<std::string>{kDbUuid});
  directory.unobserve(id);
  directory.remove(kWebUuid);
  CHECK(heard.size() == 3);
}

TEST_CASE("state names are stable for logs and the admin API") {
  CHECK(vmgate::hostd::state_name(VmState::running) == "running");
  CHECK(vmgate::hostd::state_name(VmState::shut_off) == "shut_off");
}
