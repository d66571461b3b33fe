// plan_fanout: which VMs of a selection a client's request goes to, and what
// the others are reported as: the ACL rules per VM (a VM the client named
// but may not reach is a 403 part, one it may not see is left out), state
// and channel settled before anything is opened.
#include "hostd/fanout/fanout_plan.hpp"

#include <doctest/doctest.h>

#include "hostd/directory/embedded_directory.hpp"

using namespace vmgate;
using namespace vmgate::hostd;

namespace {

VmRecord vm(std::string name, std::string uuid, std::optional<std::uint32_t> cid,
            VmState state = VmState::running) {
  VmRecord r;
  r.name = std::move(name);
  r.uuid = std::move(uuid);
  r.cid = cid;
  r.state = state;
  return r;
}

std::vector<VmRecord> fleet() {
  return {vm("web01", "aaaaaaaa-0000-0000-0000-000000000001", 3),
          vm("web02", "aaaaaaaa-0000-0000-0000-000000000002", 4, VmState::shut_off),
          vm("web03", "aaaaaaaa-0000-0000-0000-000000000003", std::nullopt),
          vm("db1", "bbbbbbbb-0000-0000-0000-000000000001", 5),
          vm("db2", "bbbbbbbb-0000-0000-0000-000000000002", 6)};
}

// token:ops may reach web* only.
AccessPolicy web_only() {
  AclRule rule;
  rule.name = "ops-web";
  rule.identities = {"token:ops"};
  rule.vms = {"web*"};
  return AccessPolicy({rule});
}

Target parsed(std::string_view text) {
  auto t = parse_target(text);
  REQUIRE(t.has_value());
  return *t;
}

const FanoutMember* member(const FanoutPlan& plan, std::string_view name) {
  for (const auto& m : plan.members)
    if (m.vm.name == name) return &m;
  return nullptr;
}

const Identity ops{Identity::Kind::token, "ops"};
const Identity trusted{Identity::Kind::trusted_listener, "lab"};

}  // namespace

TEST_CASE("group, network and list targets fan out, and a name, a UUID or HOST/NAME does not") {
  CHECK(names_many(parsed("group:web")));
  CHECK(names_many(parsed("net:default")));
  CHECK(names_many(parsed("web01,db1")));
  CHECK_FALSE(names_many(parsed("web01")));
  CHECK_FALSE(names_many(parsed("aaaaaaaa-0000-0000-0000-000000000001")));
  CHECK_FALSE(names_many(parsed("host1/web01")));
}

TEST_CASE("a fan-out plan delivers to running VMs and settles the rest without trying") {
  const ChannelConfig channel;
  const FanoutPlan plan =
      plan_fanout(fleet(), parsed("group:all"), trusted, 5986, AccessPolicy(), channel);
  REQUIRE(plan.members.size() == 5);
  CHECK(plan.to_deliver() == 3);
  CHECK(plan.access->rule == trusted_rule);
  const FanoutMember* web01 = member(plan, "web01");
  REQUIRE(web01);
  CHECK_FALSE(web01->settled);
  CHECK(web01->address.to_string() == "vsock:3:5500");
  const FanoutMember* web02 = member(plan, "web02");
  REQUIRE(web02->settled);
  CHECK(web02->settled->vm_class == VmClass::not_running);
  CHECK(web02->settled->status == 503);
  CHECK(web02->settled->reason == "vm web02 is shut_off");
  CHECK(web02->settled->uuid == "aaaaaaaa-0000-0000-0000-000000000002");
  const FanoutMember* web03 = member(plan, "web03");
  REQUIRE(web03->settled);
  CHECK(web03->settled->vm_class == VmClass::unreachable);
  CHECK(web03->settled->reason.find("no vsock device") != std::string::npos);
}

TEST_CASE("a VM the client may not see is left out of a fan-out, not reported") {
  const FanoutPlan plan =
      plan_fanout(fleet(), parsed("group:all"), ops, 5986, web_only(), ChannelConfig{});
  CHECK(plan.members.size() == 3);
  CHECK_FALSE(member(plan, "db1"));
  CHECK_FALSE(member(plan, "db2"));
  CHECK(plan.access->allowed);
  CHECK(plan.access->rule == "ops-web");
}

TEST_CASE("a VM the client named but may not reach is a 403 part under the name it wrote") {
  const FanoutPlan plan =
      plan_fanout(fleet(), parsed("group:web,DB1,bbbbbbbb-0000-0000-0000-000000000002"), ops, 5986,
                  web_only(), ChannelConfig{});
  REQUIRE(plan.members.size() == 5);
  const FanoutMember* db1 = member(plan, "DB1");
  REQUIRE(db1);
  REQUIRE(db1->settled);
  CHECK(db1->settled->vm_class == VmClass::refused);
  CHECK(db1->settled->status == 403);
  CHECK(db1->settled->uuid.empty());  // it wrote no UUID: it learns none
  CHECK(db1->settled->reason == "token:ops may not reach 'DB1' on port 5986");
  const FanoutMember* db2 = member(plan, "bbbbbbbb-0000-0000-0000-000000000002");
  REQUIRE(db2);
  CHECK(db2->settled->name == "bbbbbbbb-0000-0000-0000-000000000002");  // not its name
}

TEST_CASE("a fan-out the client may see nothing of is empty, with the denial to answer 403") {
  AclRule rule;
  rule.name = "ops-app";
  rule.identities = {"token:ops"};
  rule.vms = {"app*"};
  const FanoutPlan plan =
      plan_fanout(fleet(), parsed("group:all"), ops, 5986, AccessPolicy({rule}), ChannelConfig{});
  CHECK(plan.members.empty());
  REQUIRE(plan.access);
  CHECK_FALSE(plan.access->allowed);
  CHECK(plan.access->rule == default_rule);
}

TEST_CASE("a VM is named by its name or UUID in any case, as a target or list member") {
  const VmRecord web01 = vm("web01", "aaaaaaaa-0000-0000-0000-000000000001", 3);
  CHECK(named_as(parsed("WEB01"), web01) == "WEB01");
  CHECK(named_as(parsed("group:x,AAAAAAAA-0000-0000-0000-000000000001"), web01) ==
        "AAAAAAAA-0000-0000-0000-000000000001");
  CHECK_FALSE(named_as(parsed("group:web01"), web01));
  CHECK_FALSE(named_as(parsed("net:web01"), web01));
  CHECK_FALSE(named_as(parsed("web02,db1"), web01));
}

TEST_CASE("a name the target lists that no VM has is a 404 part, or 403 for who may not reach it") {
  const FanoutPlan trusted_plan = plan_fanout(fleet(), parsed("web01,nosuch"), trusted, 5986,
                                              AccessPolicy(), ChannelConfig{}, {"nosuch"});
  const FanoutMember* nosuch = member(trusted_plan, "nosuch");
  REQUIRE(nosuch);
  REQUIRE(nosuch->settled);
  CHECK(nosuch->settled->vm_class == VmClass::not_found);
  CHECK(nosuch->settled->status == 404);
  // token:ops may reach web* only: of "db9" it learns no more than of a denied VM.
  const FanoutPlan ops_plan = plan_fanout(fleet(), parsed("web01,db9,web99"), ops, 5986, web_only(),
                                          ChannelConfig{}, {"db9", "web99"});
  CHECK(member(ops_plan, "db9")->settled->vm_class == VmClass::refused);
  CHECK(member(ops_plan, "db9")->settled->status == 403);
  CHECK(member(ops_plan, "web99")->settled->vm_class == VmClass::not_found);
}

TEST_CASE("in a cluster, a running VM of another host is a remote member, without an address") {
  std::vector<VmRecord> vms = fleet();
  for (VmRecord& r : vms)
    r.host = r.name.starts_with("web") ? "kvm1" : "kvm2";
  const FanoutPlan plan = plan_fanout(std::move(vms), parsed("group:all"), trusted, 5986,
                                      AccessPolicy(), ChannelConfig{}, {}, "kvm1");
  CHECK(plan.to_deliver() == 3);
  CHECK_FALSE(member(plan, "web01")->remote);
  CHECK(member(plan, "web01")->address.to_string() == "vsock:3:5500");
  for (const char* name : {"db1", "db2"}) {
    const FanoutMember* db = member(plan, name);
    CHECK(db->remote);
    CHECK_FALSE(db->settled);
  }
}

TEST_CASE("another host's fan-out message is delivered only to this host's VMs, by UUID") {
  EmbeddedDirectory directory("kvm2");
  directory.replace_all(fleet());
  const std::string web01 = "aaaaaaaa-0000-0000-0000-000000000001";
  const std::string web02 = "aaaaaaaa-0000-0000-0000-000000000002";
  const std::string absent = "cccccccc-0000-0000-0000-000000000001";
  const FanoutPlan plan = plan_peer_fanout({web01, web02, "db1", absent, web01, "bad\x01name"},
                                           directory, "kvm2", ChannelConfig{});
  REQUIRE(plan.members.size() == 6);
  CHECK(plan.to_deliver() == 1);
  CHECK(plan.members[0].vm.name == "web01");
  CHECK(plan.members[0].address.to_string() == "vsock:3:5500");
  CHECK(plan.members[1].settled->vm_class == VmClass::not_running);
  const VmResult& by_name = *plan.members[2].settled;
  CHECK(by_name.vm_class == VmClass::not_found);
  CHECK(by_name.reason.find("is not a UUID") != std::string::npos);
  CHECK(plan.members[3].settled->vm_class == VmClass::not_found);
  CHECK(plan.members[3].settled->uuid == absent);  // the sender knows which VM it is
  CHECK(plan.members[4].settled->reason.find("listed twice") != std::string::npos);
  CHECK(plan.members[5].settled->name == "(unprintable)");
  // The same VMs, asked of a host the directory does not place them on.
  const FanoutPlan elsewhere = plan_peer_fanout({web01}, directory, "kvm1", ChannelConfig{});
  CHECK(elsewhere.to_deliver() == 0);
  CHECK(elsewhere.members[0].settled->reason == "vm " + web01 + " is not on host kvm1");
}
