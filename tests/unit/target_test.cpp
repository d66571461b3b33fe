#include <doctest/doctest.h>

#include <string>
#include <string_view>

#include "hostd/route/target.hpp"

using vmgate::hostd::parse_authority;
using vmgate::hostd::parse_target;
using vmgate::hostd::Target;

TEST_CASE("a target is a name, a UUID, HOST/NAME, group:, net: or a list") {
  auto vm = parse_target("vm1");
  REQUIRE(vm.has_value());
  CHECK(vm->kind == Target::Kind::vm);
  CHECK(vm->single_vm());

  auto uuid = parse_target("6f1c2e8a-1b2c-4d5e-8f90-0123456789ab");
  REQUIRE(uuid.has_value());
  CHECK(uuid->kind == Target::Kind::vm);
  CHECK(vmgate::hostd::looks_like_uuid(uuid->value));

  auto host_vm = parse_target("kvm7/vm1");
  REQUIRE(host_vm.has_value());
  CHECK(host_vm->kind == Target::Kind::host_vm);
  CHECK(host_vm->host == "kvm7");
  CHECK(host_vm->value == "vm1");

  auto group = parse_target("group:web");
  REQUIRE(group.has_value());
  CHECK(group->kind == Target::Kind::group);
  CHECK(group->value == "web");

  auto net = parse_target("net:default");
  REQUIRE(net.has_value());
  CHECK(net->kind == Target::Kind::network);

  auto list = parse_target("vm1, group:web,net:default");
  REQUIRE(list.has_value());
  CHECK(list->kind == Target::Kind::list);
  REQUIRE(list->members.size() == 3);
  CHECK(list->to_string() == "vm1,group:web,net:default");
  CHECK_FALSE(list->single_vm());
}

TEST_CASE("malformed targets are refused with a reason") {
  auto reason = [](std::string_view text) {
    auto parsed = parse_target(text);
    return parsed ? std::string("accepted") : parsed.error();
  };
  const std::string invalid_name = "invalid name in target (printable, no spaces";
  CHECK(reason("") == "empty target");
  CHECK(reason("group:") == "empty target");
  CHECK(reason("vm1,") == "empty item at the end of a target list");
  CHECK(reason("a/b/c").starts_with(invalid_name));
  CHECK(reason("a b/c") == "invalid host name in target 'a b/c'");
  CHECK(reason("vm 1").starts_with(invalid_name));
  CHECK(reason(std::string(300, 'a')).starts_with(invalid_name));
  CHECK(reason("vm\x01").starts_with(invalid_name));
  std::string many = "vm0";
  for (int i = 1; i <= 1000; ++i)
    many += ",vm" + std::to_string(i);
  CHECK(reason(many).starts_with("more than "));
}

TEST_CASE("authorities carry an optional port in 1..65535") {
  auto a = parse_authority("vm1:5986");
  REQUIRE(a.has_value());
  CHECK(a->host == "vm1");
  CHECK(a->port == 5986);
  auto b = parse_authority("vm1");
  REQUIRE(b.has_value());
  CHECK(b->port == 0);
  CHECK_FALSE(parse_authority("vm1:").has_value());
  CHECK_FALSE(parse_authority(":5986").has_value());
  CHECK_FALSE(parse_authority("vm1:65536").has_value());
  CHECK_FALSE(parse_authority("vm1:x").has_value());
}

TEST_CASE("a range keeps the zero padding of its lower bound and takes lists of spans") {
  auto range = parse_target("web[01-03,09]");
  REQUIRE(range.has_value());
  CHECK(range->kind == Target::Kind::range);
  CHECK(range->count == 4);
  auto names = vmgate::hostd::expand_range(*range, 100);
  REQUIRE(names.has_value());
  CHECK(*names == std::vector<std::string>{"web01", "web02", "web03", "web09"});

  auto unpadded = vmgate::hostd::expand_range(*parse_target("db[8-10]"), 100);
  REQUIRE(unpadded.has_value());
  CHECK(*unpadded == std::vector<std::string>{"db8", "db9", "db10"});

  auto two = parse_target("rack[1-2]-node[01-02].lab");
  REQUIRE(two.has_value());
  CHECK(two->count == 4);
  CHECK(*vmgate::hostd::expand_range(*two, 100) ==
        std::vector<std::string>{"rack1-node01.lab", "rack1-node02.lab", "rack2-node01.lab",
                                 "rack2-node02.lab"});
}

TEST_CASE("a range past the limit is refused from its count, before it is expanded") {
  auto huge = parse_target("web[1-999999999999999999]");
  REQUIRE(huge.has_value());
  CHECK(huge->count == 999999999999999999ULL);
  auto refused = vmgate::hostd::expand_range(*huge, 10000);
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.error() ==
        "range 'web[1-999999999999999999]' names 999999999999999999 VMs, more than "
        "fanout.max_targets (10000)");
  // Products saturate rather than wrap around to a small count.
  auto product = parse_target("a[1-999999999]b[1-999999999]c[1-999999999]");
  REQUIRE(product.has_value());
  CHECK_FALSE(vmgate::hostd::expand_range(*product, 10000).has_value());
}

TEST_CASE("lists mix groups, ranges and exclusions, with spaces after commas") {
  auto list = parse_target("group:web, db[1-3], !db2,!group:old");
  REQUIRE(list.has_value());
  REQUIRE(list->kind == Target::Kind::list);
  REQUIRE(list->members.size() == 4);
  CHECK(list->members[0].kind == Target::Kind::group);
  CHECK(list->members[1].kind == Target::Kind::range);
  CHECK(list->members[1].value == "db[1-3]");
  CHECK(list->members[2].exclude);
  CHECK(list->members[2].value == "db2");
  CHECK(list->members[3].exclude);
  CHECK(list->members[3].kind == Target::Kind::group);
  CHECK(list->to_string() == "group:web,db[1-3],!db2,!group:old");
  // A range's own commas make no list.
  auto one = parse_target("web[01-05,09]");
  REQUIRE(one.has_value());
  CHECK(one->kind == Target::Kind::range);
  auto alone = parse_target("!vm1");
  REQUIRE(alone.has_value());
  CHECK(alone->exclude);
  CHECK_FALSE(alone->single_vm());
}

TEST_CASE("malformed ranges are refused with a reason") {
  auto reason = [](std::string_view text) {
    auto parsed = parse_target(text);
    return parsed ? std::string("accepted") : parsed.error();
  };
  CHECK(reason("web[01-") == "invalid range 'web[01-': '[' without ']'");
  CHECK(reason("web]") == "invalid range 'web]': ']' without '['");
  CHECK(reason("web[]") == "invalid range 'web[]': empty '[]'");
  CHECK(reason("web[5-1]") == "invalid range 'web[5-1]': 5 is above 1");
  CHECK(reason("web[a-b]").find("is not N or N-M") != std::string::npos);
  CHECK(reason("web[1,]") == "invalid range 'web[1,]': empty item after ','");
  CHECK(reason("w b[1-2]").find("printable") != std::string::npos);
  CHECK(reason("!!vm1") == "'!!' in a target: exclude an item once");
  CHECK(reason("!") == "empty target");
}
