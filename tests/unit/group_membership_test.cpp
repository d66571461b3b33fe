// GroupMembership: guests' joins, who may join, and the state file.
#include "hostd/directory/group_membership.hpp"

#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "hostd/directory/embedded_directory.hpp"

using namespace vmgate::hostd;
namespace fs = std::filesystem;

namespace {

constexpr const char* kWeb = "6e3c4f5a-1b2c-4d5e-8f90-a1b2c3d4e5f6";
constexpr const char* kDb = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

VmRecord vm(std::string name, std::string uuid) {
  VmRecord r;
  r.name = std::move(name);
  r.uuid = std::move(uuid);
  r.cid = 3;
  r.state = VmState::running;
  return r;
}

struct TempDir {
  fs::path path;
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "vmgate-groups-XXXXXX").string();
    path = ::mkdtemp(pattern.data());
  }
  ~TempDir() { fs::remove_all(path); }
  std::string file() const { return (path / "state.json").string(); }
};

std::vector<JoinableGroup> joinable() {
  return {{"web", {"web*"}}, {"any", {"*"}}};
}

}  // namespace

TEST_CASE("a join is allowed only for a joinable group and a VM it lets in") {
  TempDir dir;
  auto store = GroupMembership::open(dir.file(), joinable());
  REQUIRE(store.has_value());
  auto& s = **store;
  auto joined = s.join(vm("web1", kWeb), "web");
  REQUIRE(joined.has_value());
  CHECK(*joined);
  CHECK(*s.join(vm("web1", kWeb), "web") == false);  // already a member
  auto not_joinable = s.join(vm("web1", kWeb), "db");
  REQUIRE_FALSE(not_joinable.has_value());
  CHECK(not_joinable.error().kind == MembershipRefusal::Kind::not_joinable);
  CHECK(not_joinable.error().reason ==
        "group 'db' is not joinable ([groups.joinable] does not list it)");
  auto not_allowed = s.join(vm("db1", kDb), "web");
  REQUIRE_FALSE(not_allowed.has_value());
  CHECK(not_allowed.error().kind == MembershipRefusal::Kind::not_allowed);
  CHECK(not_allowed.error().reason ==
        "vm db1 may not join group 'web' ([groups.joinable] web does not match it)");
  CHECK(s.join(vm("db1", kDb), "any").has_value());
  CHECK(s.joins() == std::vector<GuestJoin>{{kWeb, "web"}, {kDb, "any"}});
  CHECK(*s.leave(kWeb, "web"));
  CHECK_FALSE(*s.leave(kWeb, "web"));
  CHECK(s.joins() == std::vector<GuestJoin>{{kDb, "any"}});
}

TEST_CASE("joins survive a restart through the state file, written whole and private") {
  TempDir dir;
  {
    auto store = GroupMembership::open(dir.file(), joinable());
    REQUIRE(store.has_value());
    REQUIRE((*store)->join(vm("web1", kWeb), "web").has_value());
    REQUIRE((*store)->join(vm("db1", kDb), "any").has_value());
    REQUIRE((*store)->leave(kDb, "any").has_value());
  }
  CHECK_FALSE(fs::exists(dir.file() + ".tmp"));
  struct stat st {};
  REQUIRE(::stat(dir.file().c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  auto again = GroupMembership::open(dir.file(), joinable());
  REQUIRE(again.has_value());
  CHECK((*again)->joins() == std::vector<GuestJoin>{{kWeb, "web"}});
}

TEST_CASE("a corrupt state file is refused with an error naming the file") {
  TempDir dir;
  for (const char* text : {"{not json", "[]", "{\"vmgate_directory_state\": 2, \"joins\": []}",
                           "{\"vmgate_directory_state\": 1, \"joins\": [{\"uuid\": \"x\", "
                           "\"group\": \"web\"}]}"}) {
    INFO(text);
    std::ofstream(dir.file()) << text;
    auto store = GroupMembership::open(dir.file(), joinable());
    REQUIRE_FALSE(store.has_value());
    CHECK(store.error().starts_with(dir.file() + ": corrupt directory state file: "));
  }
}

TEST_CASE("a missing state file is an empty store, and one that cannot be written fails the join") {
  TempDir dir;
  auto store =
      GroupMembership::open((dir.path / "no-such-dir" / "state.json").string(), joinable());
  REQUIRE(store.has_value());
  CHECK((*store)->joins().empty());
  auto joined = (*store)->join(vm("web1", kWeb), "web");
  REQUIRE_FALSE(joined.has_value());
  CHECK(joined.error().kind == MembershipRefusal::Kind::not_recorded);
  CHECK(joined.error().reason.find("state.json.tmp: open: ") != std::string::npos);
  CHECK((*store)->joins().empty());  // not answered, not kept
}

TEST_CASE("a VM the directory no longer knows loses its joins, and a join makes it a member") {
  TempDir dir;
  EmbeddedDirectory directory;
  directory.replace_all({vm("web1", kWeb), vm("web2", kDb)});
  auto store = GroupMembership::open(dir.file(), joinable());
  REQUIRE(store.has_value());
  GroupsConfig groups;
  FanoutConfig limits;
  directory.use_groups(groups, limits, store->get());
  (*store)->follow(directory);
  REQUIRE((*store)->join(vm("web1", kWeb), "web").has_value());
  REQUIRE((*store)->join(vm("web2", kDb), "web").has_value());
  auto members = directory.resolve(*parse_target("group:web"));
  REQUIRE(members.vms.size() == 2);
  CHECK(members.vms[0].added_by.source == Provenance::Source::guest_join);

  directory.remove(kWeb);  // undefined
  CHECK((*store)->joins() == std::vector<GuestJoin>{{kDb, "web"}});
  directory.upsert(vm("web2", kDb));  // still known: kept
  CHECK((*store)->joins().size() == 1);
  directory.replace_all({});  // a resynchronisation without it
  CHECK((*store)->joins().empty());
  auto reopened = GroupMembership::open(dir.file(), joinable());
  CHECK((*reopened)->joins().empty());
}
