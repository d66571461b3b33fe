#include "hostd/cluster/cluster_directory.hpp"

#include <doctest/doctest.h>

#include <map>

namespace {

using namespace vmgate::hostd;

constexpr const char* kWebUuid = "6e3c4f5a-1b2c-4d5e-8f90-a1b2c3d4e5f6";
constexpr const char* kDbUuid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

VmRecord vm(std::string name, std::string uuid, std::optional<std::uint32_t> cid,
            VmState state = VmState::running) {
  VmRecord record;
  record.name = std::move(name);
  record.uuid = std::move(uuid);
  record.cid = cid;
  record.state = state;
  return record;
}

VmClaim remote(std::string host, VmRecord record, std::int64_t time_ns) {
  record.host = std::move(host);
  return VmClaim{std::move(record), EventStamp{time_ns, 1}};
}

// A clock the test moves.
struct FakeClock {
  std::int64_t now = 1000;
  ClusterDirectory::Clock clock() {
    return [this] { return now; };
  }
};

}  // namespace

TEST_CASE("the cluster directory routes this host's VMs and other hosts' claims alike") {
  FakeClock time;
  ClusterDirectory directory("kvm1", time.clock());
  directory.replace_all({vm("web1", kWebUuid, 3)});
  directory.replace_remote({HostRecord{"kvm2", "tcp:127.0.0.1:7443", "1"}},
                           {remote("kvm2", vm("db1", kDbUuid, std::nullopt), 500)});
  auto web = directory.find("web1");
  REQUIRE(web.status == LookupStatus::found);
  CHECK(web.vm->host == "kvm1");
  CHECK(web.vm->cid == 3u);
  auto db = directory.find("db1");
  REQUIRE(db.status == LookupStatus::found);
  CHECK(db.vm->host == "kvm2");
  CHECK(directory.size() == 2);
  REQUIRE(directory.host_record("kvm2"));
  CHECK(directory.host_record("kvm2")->peer_address == "tcp:127.0.0.1:7443");
}

TEST_CASE("another host's claim carries no CID that a guest here could be mistaken for") {
  ClusterDirectory directory("kvm1");
  VmRecord other = vm("db1", kDbUuid, 3);
  directory.put_remote_claim(remote("kvm2", other, 1));
  CHECK_FALSE(directory.by_cid(3));
  CHECK_FALSE(directory.find("db1").vm->cid);
}

TEST_CASE("this host's own claims read back from etcd are ignored: libvirt is its authority") {
  ClusterDirectory directory("kvm1");
  directory.put_remote_claim(remote("kvm1", vm("ghost", kDbUuid, std::nullopt), 1));
  CHECK(directory.find("ghost").status == LookupStatus::not_found);
  directory.replace_remote({HostRecord{"kvm1", "tcp:x:1", ""}},
                           {remote("kvm1", vm("ghost", kDbUuid, std::nullopt), 1)});
  CHECK(directory.size() == 0);
  CHECK_FALSE(directory.host_record("kvm1"));
}

TEST_CASE("a VM that moved here from another host is routed here once it runs here") {
  FakeClock time;
  ClusterDirectory directory("kvm2", time.clock());
  directory.put_remote_claim(remote("kvm1", vm("web1", kWebUuid, std::nullopt), 1000));
  CHECK(directory.find("web1").vm->host == "kvm1");
  // The incoming migration: defined here, paused. The source still runs it.
  time.now = 2000;
  directory.upsert(vm("web1", kWebUuid, 9, VmState::paused));
  CHECK(directory.find("web1").vm->host == "kvm1");
  // Resumed here, with a newer event: here it is.
  time.now = 3000;
  directory.upsert(vm("web1", kWebUuid, 9, VmState::running));
  auto found = directory.find("web1");
  CHECK(found.vm->host == "kvm2");
  CHECK(found.vm->cid == 9u);
  // The source undefines it and lets its key go: still here.
  directory.remove_remote_claim(kWebUuid);
  CHECK(directory.find("web1").vm->host == "kvm2");
}

TEST_CASE("a VM that left this host for another is routed there, and its channels are told") {
  FakeClock time;
  ClusterDirectory directory("kvm1", time.clock());
  directory.replace_all({vm("web1", kWebUuid, 3)});
  std::vector<std::string> changed;
  auto id = directory.observe([&](const DirectoryChange& change) {
    for (const auto& uuid : change.uuids)
      changed.push_back(uuid);
  });
  directory.put_remote_claim(remote("kvm2", vm("web1", kWebUuid, std::nullopt), 5000));
  auto found = directory.find("web1");
  CHECK(found.vm->host == "kvm2");
  CHECK_FALSE(found.vm->cid);
  CHECK(changed == std::vector<std::string>{kWebUuid});
  CHECK_FALSE(directory.by_cid(3));
  directory.unobserve(id);
}

TEST_CASE("a resynchronisation that finds a VM unchanged keeps its event stamp") {
  FakeClock time;
  ClusterDirectory directory("kvm1", time.clock());
  std::vector<std::string> published;
  directory.on_local_change([&](const std::string& uuid) { published.push_back(uuid); });
  directory.replace_all({vm("web1", kWebUuid, 3), vm("db1", kDbUuid, 4)});
  CHECK(published.size() == 2);
  const EventStamp first = directory.local_claim(kWebUuid)->event;
  published.clear();
  time.now = 9000;
  // libvirtd came back: the same web1, a changed db1.
  directory.replace_all({vm("web1", kWebUuid, 3), vm("db1", kDbUuid, 4, VmState::paused)});
  CHECK(directory.local_claim(kWebUuid)->event == first);
  CHECK(directory.local_claim(kDbUuid)->event.time_ns == 9000);
  CHECK(published == std::vector<std::string>{kDbUuid});
  // A VM gone from the resynchronisation is published too (its claim goes).
  published.clear();
  directory.replace_all({vm("web1", kWebUuid, 3)});
  CHECK(published == std::vector<std::string>{kDbUuid});
  CHECK_FALSE(directory.local_claim(kDbUuid));
}

TEST_CASE("a host whose record and claims vanished leaves no VM behind") {
  ClusterDirectory directory("kvm1");
  directory.put_remote_host(HostRecord{"kvm2", "tcp:127.0.0.1:1", ""});
  directory.put_remote_claim(remote("kvm2", vm("db1", kDbUuid, std::nullopt), 1));
  directory.remove_remote_claim(kDbUuid);
  directory.remove_remote_host("kvm2");
  CHECK(directory.find("db1").status == LookupStatus::not_found);
  CHECK_FALSE(directory.host_record("kvm2"));
}

TEST_CASE("one name on two hosts is ambiguous, listing both") {
  ClusterDirectory directory("kvm1");
  directory.replace_all({vm("web1", kWebUuid, 3)});
  directory.put_remote_claim(remote("kvm2", vm("web1", kDbUuid, std::nullopt), 1));
  auto found = directory.find("web1");
  CHECK(found.status == LookupStatus::ambiguous);
  CHECK(found.candidates.size() == 2);
}

TEST_CASE("HOST/NAME picks the VM of that name on that host") {
  ClusterDirectory directory("kvm1");
  directory.replace_all({vm("web1", kWebUuid, 3)});
  directory.put_remote_claim(remote("kvm2", vm("web1", kDbUuid, std::nullopt), 1));
  auto parsed = parse_target("kvm2/web1");
  REQUIRE(parsed.has_value());
  auto selection = directory.select(*parsed);
  REQUIRE(selection.status == Selection::Status::found);
  CHECK(selection.vms.front().uuid == kDbUuid);
  auto local = directory.select(*parse_target("kvm1/WEB1"));
  REQUIRE(local.status == Selection::Status::found);
  CHECK(local.vms.front().uuid == kWebUuid);
  CHECK(directory.select(*parse_target("kvm3/web1")).status == Selection::Status::not_found);
}

TEST_CASE("a group resolves over every host's VMs, each where it runs") {
  ClusterDirectory directory("kvm1");
  GroupsConfig groups;
  groups.groups.push_back(GroupDefinition{.name = "web", .members = {"web1", "db1"}});
  const FanoutConfig limits;
  directory.use_groups(groups, limits, nullptr);
  directory.replace_all({vm("web1", kWebUuid, 3)});
  directory.put_remote_claim(remote("kvm2", vm("db1", kDbUuid, std::nullopt), 1));
  auto parsed = parse_target("group:web");
  REQUIRE(parsed.has_value());
  auto selection = directory.select(*parsed);
  REQUIRE(selection.status == Selection::Status::found);
  REQUIRE(selection.vms.size() == 2);
  std::map<std::string, std::string> hosts;
  for (const auto& found : selection.vms)
    hosts[found.name] = found.host;
  CHECK(hosts["web1"] == "kvm1");
  CHECK(hosts["db1"] == "kvm2");
}
