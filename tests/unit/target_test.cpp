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
