// resolve_target(): groups from each source, nesting, cycles, depth,
// ranges, networks and exclusion, over a snapshot of VMs.
#include "hostd/directory/target_resolver.hpp"

#include <doctest/doctest.h>

#include <fmt/format.h>

#include "hostd/directory/embedded_directory.hpp"

using namespace vmgate::hostd;

namespace {

VmRecord vm(std::string name, int n, std::vector<std::string> groups = {},
            std::vector<std::string> networks = {}) {
  VmRecord r;
  r.name = std::move(name);
  r.uuid = fmt::format("00000000-0000-0000-0000-{:012}", n);
  r.cid = static_cast<std::uint32_t>(n + 2);
  r.state = VmState::running;
  r.groups = std::move(groups);
  r.networks = std::move(networks);
  return r;
}

struct Fixture {
  std::vector<VmRecord> vms{vm("web01", 1, {}, {"front"}), vm("web02", 2, {}, {"front"}),
                            vm("web03", 3, {"canary"}),    vm("db1", 4, {"db"}, {"back"}),
                            vm("db2", 5, {"db"}),          vm("db3", 6)};
  GroupsConfig groups;
  std::vector<GuestJoin> joins;
  FanoutConfig limits;

  void group(std::string name, std::vector<std::string> members) {
    groups.groups.push_back({std::move(name), std::move(members), {}});
  }
  Resolution resolve(std::string_view text) {
    auto target = parse_target(text);
    REQUIRE(target.has_value());
    return resolve_target(*target, vms, GroupSources{groups, joins, limits});
  }
  static std::vector<std::string> names(const Resolution& r) {
    std::vector<std::string> out;
    for (const auto& v : r.vms)
      out.push_back(v.vm.name);
    return out;
  }
};

}  // namespace

TEST_CASE("a config group nests groups and ranges, each VM once, with the rule that added it") {
  Fixture f;
  f.group("web", {"web[01-02]", "group:db", "web01"});
  auto r = f.resolve("group:web");
  REQUIRE(r.status == Selection::Status::found);
  CHECK(Fixture::names(r) == std::vector<std::string>{"web01", "web02", "db1", "db2"});
  CHECK(r.vms[0].added_by.source == Provenance::Source::range);
  CHECK(r.vms[0].added_by.rule == "range web[01-02] of config group web");
  // db has no config entry: its members come from their libvirt metadata.
  CHECK(r.vms[2].added_by.source == Provenance::Source::libvirt);
  CHECK(r.vms[2].added_by.rule == "libvirt metadata of db1");
  CHECK(r.vms[2].added_by.via == std::vector<std::string>{"web", "db"});
}

TEST_CASE("a guest's join makes it a member, shown as such") {
  Fixture f;
  f.joins.push_back({"00000000-0000-0000-0000-000000000006", "db"});
  auto r = f.resolve("group:db");
  REQUIRE(r.status == Selection::Status::found);
  CHECK(Fixture::names(r) == std::vector<std::string>{"db1", "db2", "db3"});
  CHECK(r.vms[2].added_by.source == Provenance::Source::guest_join);
  CHECK(r.vms[2].added_by.rule == "guest join of db3");
}

TEST_CASE("a cycle is refused whole, naming it") {
  Fixture f;
  f.group("a", {"web01", "group:b"});
  f.group("b", {"group:a"});
  auto r = f.resolve("group:a, db1");
  CHECK(r.status == Selection::Status::invalid);
  CHECK(r.reason ==
        "group cycle, refused rather than expanded in part: group:a → group:b → group:a");
  CHECK(r.vms.empty());
}

TEST_CASE("groups nesting deeper than fanout.max_group_depth are refused") {
  Fixture f;
  f.limits.max_group_depth = 3;
  f.group("g1", {"group:g2"});
  f.group("g2", {"group:g3"});
  f.group("g3", {"web01"});
  CHECK(f.resolve("group:g1").status == Selection::Status::found);
  f.groups.groups.back().members = {"group:g4"};
  f.group("g4", {"web01"});
  auto r = f.resolve("group:g1");
  CHECK(r.status == Selection::Status::invalid);
  CHECK(r.reason ==
        "groups nest deeper than fanout.max_group_depth (3): group:g1 → group:g2 → "
        "group:g3 → group:g4");
}

TEST_CASE("exclusion wins wherever it is written, and is shown") {
  Fixture f;
  f.group("web", {"web[01-03]"});
  auto r = f.resolve("!web02, group:web, !group:canary");
  REQUIRE(r.status == Selection::Status::found);
  CHECK(Fixture::names(r) == std::vector<std::string>{"web01"});
  REQUIRE(r.excluded.size() == 2);
  CHECK(r.excluded[0].vm.name == "web02");
  CHECK(r.excluded[0].excluded_by == "!web02");
  CHECK(r.excluded[1].vm.name == "web03");
  CHECK(r.excluded[1].excluded_by == "!group:canary");
  CHECK(r.excluded[1].added_by.source == Provenance::Source::libvirt);
}

TEST_CASE("a target resolving to nothing says why") {
  Fixture f;
  f.group("empty", {});
  f.group("ghosts", {"vm-gone"});
  auto unknown = f.resolve("group:nosuch");
  CHECK(unknown.status == Selection::Status::not_found);
  CHECK(unknown.reason.find("group 'nosuch' is not known") != std::string::npos);
  CHECK(f.resolve("group:empty").reason == "'group:empty' names no VM: group 'empty' is empty");
  auto ghosts = f.resolve("group:ghosts");
  CHECK(ghosts.reason == "'group:ghosts' names no VM: group 'ghosts' is empty");
  CHECK(ghosts.unknown == std::vector<std::string>{"vm-gone"});
  auto excluded = f.resolve("db1, db2, !group:db");
  CHECK(excluded.status == Selection::Status::not_found);
  CHECK(excluded.reason == "every VM the target names is excluded (by !group:db)");
  CHECK(f.resolve("!db1").reason == "the target only excludes: name what to include as well");
  CHECK(f.resolve("net:nowhere, nosuchvm").reason.find("no VM is attached to network 'nowhere'") !=
        std::string::npos);
}

TEST_CASE("net:NETWORK names every VM with an interface on it") {
  Fixture f;
  auto r = f.resolve("net:front, net:back");
  REQUIRE(r.status == Selection::Status::found);
  CHECK(Fixture::names(r) == std::vector<std::string>{"web01", "web02", "db1"});
  CHECK(r.vms[2].added_by.rule == "network back");
}

TEST_CASE("ranges name VMs by name, padding kept, and report the names no VM has") {
  Fixture f;
  auto r = f.resolve("web[01-04], db[2-3]");
  REQUIRE(r.status == Selection::Status::found);
  CHECK(Fixture::names(r) == std::vector<std::string>{"web01", "web02", "web03", "db2", "db3"});
  CHECK(r.unknown == std::vector<std::string>{"web04"});
  // Unpadded, web[1-3] names web1..web3, which do not exist.
  CHECK(f.resolve("web[1-3]").status == Selection::Status::not_found);
}

TEST_CASE("a target naming more than fanout.max_targets VMs is refused") {
  Fixture f;
  f.limits.max_targets = 3;
  auto range = f.resolve("web[01-02], db[1-2]");
  CHECK(range.status == Selection::Status::invalid);
  CHECK(range.reason == "'web[01-02],db[1-2]' names more than fanout.max_targets (3) VMs");
  auto group = f.resolve("group:db, web01, web02");
  CHECK(group.status == Selection::Status::invalid);
  CHECK(group.reason.find("resolves to 4 VMs, more than fanout.max_targets (3)") !=
        std::string::npos);
  f.limits.max_targets = 4;
  CHECK(f.resolve("group:db, web01, web02").status == Selection::Status::found);
}

TEST_CASE("an ambiguous name in a list is refused 409 with its candidates") {
  Fixture f;
  f.vms.push_back(vm("db1", 7));
  auto r = f.resolve("web01, db1");
  CHECK(r.status == Selection::Status::ambiguous);
  CHECK(r.candidates.size() == 2);
}

TEST_CASE("the embedded directory selects a group from its own VMs and the config") {
  EmbeddedDirectory directory;
  GroupsConfig groups;
  groups.groups.push_back({"web", {"web01", "web02"}, {}});
  FanoutConfig limits;
  directory.use_groups(groups, limits, nullptr);
  directory.replace_all({vm("web01", 1), vm("web02", 2), vm("db1", 4, {"db"})});
  auto web = directory.select(*parse_target("group:web"));
  REQUIRE(web.status == Selection::Status::found);
  CHECK(web.vms.size() == 2);
  CHECK(web.vms[0].host == "local");
  auto db = directory.select(*parse_target("group:db"));
  REQUIRE(db.status == Selection::Status::found);
  CHECK(db.vms.front().name == "db1");
  CHECK(directory.select(*parse_target("kvm7/web01")).status == Selection::Status::unsupported);

  auto reports = directory.groups();
  REQUIRE(reports.size() == 2);
  CHECK(reports[0].name == "db");
  CHECK_FALSE(reports[0].in_config);
  CHECK(reports[1].name == "web");
  CHECK(reports[1].in_config);
  CHECK(reports[1].members.vms.size() == 2);
}
