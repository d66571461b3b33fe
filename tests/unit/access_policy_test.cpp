// AccessPolicy: one rule set, read from a config as hostd reads it, and a
// table of identities × VMs × ports with the answer and the rule that gives
// it. Then the pieces the rules are made of: globs, networks, identities.
#include "hostd/authz/access_policy.hpp"

#include <doctest/doctest.h>

#include "common/config_reader.hpp"

using namespace vmgate;
using namespace vmgate::hostd;

namespace {

constexpr const char* kWeb1 = "aaaaaaaa-0000-0000-0000-000000000001";
constexpr const char* kWeb2 = "aaaaaaaa-0000-0000-0000-000000000002";
constexpr const char* kDb1 = "bbbbbbbb-0000-0000-0000-000000000001";
constexpr const char* kDb2 = "bbbbbbbb-0000-0000-0000-000000000002";
constexpr const char* kApp = "cccccccc-0000-0000-0000-000000000001";

// The deny rules come last: they win all the same.
constexpr const char* kRules = R"(
[[acl]]
name = "ops-all"
action = "allow"
identities = ["cert:*.ops.example"]
vms = ["*"]

[[acl]]
name = "ansible-web"
action = "allow"
identities = ["token:ansible"]
vms = ["web*"]
ports = [5986]

[[acl]]
name = "ansible-db1"
action = "allow"
identities = ["token:ansible"]
vms = ["BBBBBBBB-0000-0000-0000-000000000001"]

[[acl]]
name = "lan"
action = "allow"
identities = ["cidr:10.1.0.0/16", "cidr:2001:db8:1::/48"]
vms = ["web1", "bbbbbbbb-0000-0000-0000-000000000002"]
ports = [5985, 5986]

[[acl]]
name = "no-db"
action = "deny"
identities = ["token:*", "cert:*"]
vms = ["db*"]

[[acl]]
action = "deny"
identities = ["cidr:10.1.2.66/32"]
vms = ["*"]
)";

VmRecord vm_named(const std::string& name) {
  static const std::pair<const char*, const char*> vms[] = {
      {"web1", kWeb1}, {"web2", kWeb2}, {"db1", kDb1}, {"db2", kDb2}, {"app", kApp}};
  for (auto [n, uuid] : vms)
    if (name == n) return VmRecord{.uuid = uuid, .name = n};
  FAIL("no test VM " << name);
  return {};
}

Identity identity_of(std::string_view text) {
  auto parsed = parse_identity(text);
  REQUIRE_MESSAGE(parsed.has_value(), text);
  return *parsed;
}

struct Case {
  const char* identity;
  const char* vm;
  std::uint16_t port;
  bool allowed;
  const char* rule;
};

constexpr Case kMatrix[] = {
    // token: an allow limited to ports, and a deny that wins over a later-read allow.
    {"token:ansible", "web1", 5986, true, "ansible-web"},
    {"token:ansible", "web2", 5986, true, "ansible-web"},
    {"token:ansible", "web1", 5985, false, "default"},
    {"token:ansible", "db1", 5986, false, "no-db"},  // ansible-db1 allows it by UUID: deny wins
    {"token:ansible", "app", 5986, false, "default"},
    {"token:Ansible", "web1", 5986, false, "default"},  // token names are matched as written
    {"token:other", "web1", 5986, false, "default"},
    {"token:other", "db2", 5986, false, "no-db"},
    // cert: any SAN or the CN, ignoring case; "*.ops.example" needs a label before it.
    {"cert:host.ops.example,ops", "app", 1234, true, "ops-all"},
    {"cert:ops,backup.ops.example", "app", 1234, true, "ops-all"},  // CN first or last alike
    {"cert:HOST.OPS.Example", "web2", 22, true, "ops-all"},
    {"cert:ops.example", "app", 1234, false, "default"},
    {"cert:host.ops.example.evil", "app", 1234, false, "default"},
    {"cert:host.ops.example", "db1", 5986, false, "no-db"},
    // cidr: v4, v4-mapped v6, v6; a /32 deny inside an allowed /16.
    {"source:10.1.2.3", "web1", 5985, true, "lan"},
    {"source:10.1.2.3", "db2", 5986, true, "lan"},  // by UUID; no-db names tokens and certs
    {"source:10.1.2.3", "db1", 5986, false, "default"},
    {"source:10.1.2.3", "web2", 5985, false, "default"},
    {"source:10.1.2.3", "web1", 22, false, "default"},
    {"source:::ffff:10.1.2.3", "web1", 5986, true, "lan"},
    {"source:10.2.0.1", "web1", 5986, false, "default"},
    {"source:10.1.2.66", "web1", 5986, false, "acl[5]"},
    {"source:2001:db8:1::5", "web1", 5986, true, "lan"},
    {"source:2001:db8:1:ffff::1", "web1", 5986, true, "lan"},
    {"source:2001:db8:2::5", "web1", 5986, false, "default"},
    // Nobody.
    {"anonymous", "web1", 5986, false, "default"},
};

AccessPolicy policy_of(const char* rules) {
  return AccessPolicy(parse_hostd_config(rules, "hostd.toml").acl);
}

}  // namespace

TEST_CASE("the ACL matrix: each identity, VM and port gets its answer from the rule that decides") {
  const AccessPolicy policy = policy_of(kRules);
  for (const Case& c : kMatrix) {
    INFO(c.identity << " -> " << c.vm << ":" << c.port);
    const AccessDecision decision = policy.decide(identity_of(c.identity), vm_named(c.vm), c.port);
    CHECK(decision.allowed == c.allowed);
    CHECK(decision.rule == c.rule);
  }
}

TEST_CASE("a trusted listener's client reaches every VM whatever the rules, as rule trusted") {
  const AccessPolicy policy = policy_of(kRules);
  const Identity trusted{Identity::Kind::trusted_listener, "loopback"};
  for (const char* vm : {"db1", "app"})
    CHECK(policy.decide(trusted, vm_named(vm), 1) == AccessDecision{true, "trusted"});
  CHECK(AccessPolicy().decide(trusted, vm_named("app"), 1).allowed);
}

TEST_CASE("with no rules every client but a trusted listener's is refused by default") {
  const AccessPolicy none;
  for (const char* who : {"token:ansible", "cert:host.ops.example", "source:10.1.2.3"})
    CHECK(none.decide(identity_of(who), vm_named("web1"), 5986) ==
          AccessDecision{false, "default"});
}

TEST_CASE("cidr rules match clients known by their source address only") {
  const AccessPolicy policy = policy_of(kRules);
  // A client with a certificate, from inside the lan network: its certificate decides.
  Identity cert = identity_of("cert:someone.example");
  cert.address = boost::asio::ip::make_address("10.1.2.3");
  CHECK(policy.decide(cert, vm_named("web1"), 5985) == AccessDecision{false, "default"});
  Identity token = identity_of("token:other");
  token.address = boost::asio::ip::make_address("10.1.2.3");
  CHECK_FALSE(policy.decide(token, vm_named("web1"), 5985).allowed);
  // A source identity without an address matches no network.
  CHECK_FALSE(policy.decide(Identity{Identity::Kind::source, "?"}, vm_named("web1"), 5985).allowed);
}

TEST_CASE("a target that names no VM is decided on what the client wrote") {
  const AccessPolicy policy = policy_of(kRules);
  const Identity ansible = identity_of("token:ansible");
  CHECK(policy.decide_target(ansible, "web9", 5986) == AccessDecision{true, "ansible-web"});
  CHECK(policy.decide_target(ansible, "db9", 5986) == AccessDecision{false, "no-db"});
  CHECK(policy.decide_target(ansible, "other", 5986) == AccessDecision{false, "default"});
  // A UUID, in any case, is matched as the UUID it is.
  CHECK(policy.decide_target(identity_of("source:10.1.2.3"), "BBBBBBBB-0000-0000-0000-000000000002",
                             5986) == AccessDecision{true, "lan"});
}

TEST_CASE("globs: * matches any run of characters, anywhere, and nothing else is special") {
  struct {
    const char* glob;
    const char* text;
    bool match;
  } cases[] = {
      {"*", "", true},
      {"*", "anything", true},
      {"web*", "web", true},
      {"web*", "web01", true},
      {"web*", "aweb01", false},
      {"*db", "prod-db", true},
      {"*db", "prod-db2", false},
      {"a*b*c", "aXXbYYc", true},
      {"a*b*c", "aXXbYY", false},
      {"a*a", "a", false},
      {"a**", "a", true},
      {"w?b", "wxb", false},
      {"w?b", "w?b", true},
      {"exact", "exact", true},
      {"exact", "exactly", false},
      {"*.ops.example", "a.b.ops.example", true},
  };
  for (const auto& c : cases) {
    INFO(c.glob << " ~ " << c.text);
    CHECK(glob_match(c.glob, c.text) == c.match);
  }
  CHECK(glob_match("*.OPS.example", "host.ops.EXAMPLE", true));
  CHECK_FALSE(glob_match("*.OPS.example", "host.ops.EXAMPLE"));
}

TEST_CASE("networks: v4 and v6 prefixes, and the mistakes refused with a reason") {
  auto contains = [](const char* network, const char* address) {
    auto n = parse_network(network);
    REQUIRE_MESSAGE(n.has_value(), network);
    return n->contains(boost::asio::ip::make_address(address));
  };
  CHECK(contains("10.0.0.0/8", "10.255.0.1"));
  CHECK_FALSE(contains("10.0.0.0/8", "11.0.0.1"));
  CHECK(contains("10.1.2.3/32", "10.1.2.3"));
  CHECK_FALSE(contains("10.1.2.3/32", "10.1.2.4"));
  CHECK(contains("0.0.0.0/0", "192.0.2.1"));
  CHECK_FALSE(contains("0.0.0.0/0", "2001:db8::1"));  // a v4 network holds v4 clients only
  CHECK(contains("192.168.0.0/23", "192.168.1.200"));
  CHECK_FALSE(contains("192.168.0.0/23", "192.168.2.1"));
  CHECK(contains("2001:db8::/32", "2001:db8:ffff::1"));
  CHECK_FALSE(contains("2001:db8::/32", "2001:db9::1"));
  CHECK(contains("::/0", "::1"));
  CHECK(contains("10.0.0.0/8", "::ffff:10.9.9.9"));

  for (const char* bad : {"10.0.0.0", "10.0.0.0/33", "2001:db8::/129", "10.0.0.0/", "10.0.0.0/x",
                          "10.0.0.0/8/8", "ten/8", "10.1.2.3/8", "2001:db8::1/32"}) {
    INFO(bad);
    CHECK_FALSE(parse_network(bad).has_value());
  }
  CHECK(parse_network("10.1.2.3/8").error().find("bits set past") != std::string::npos);
  CHECK(parse_network("10.0.0.0").error().find("no prefix length") != std::string::npos);
}

TEST_CASE("identity patterns: cert:, token: and cidr: only, each with something to match") {
  CHECK(parse_identity_pattern("cert:*.ops.example")->kind == IdentityPattern::Kind::certificate);
  CHECK(parse_identity_pattern("token:ansible")->kind == IdentityPattern::Kind::token);
  CHECK(parse_identity_pattern("cidr:10.0.0.0/8")->kind == IdentityPattern::Kind::cidr);
  for (const char* bad : {"ansible", "token:", "user:bob", "cidr:10.0.0.0", "source:10.0.0.0/8"})
    CHECK_FALSE_MESSAGE(parse_identity_pattern(bad).has_value(), bad);
  auto trusted = parse_identity_pattern("trusted:*");
  REQUIRE_FALSE(trusted.has_value());
  CHECK(trusted.error().find("trusted listener may reach every VM") != std::string::npos);
}

TEST_CASE("VM patterns: name globs and UUIDs, and groups refused as not served yet") {
  auto uuid = parse_vm_pattern("AAAAAAAA-0000-0000-0000-000000000001");
  REQUIRE(uuid.has_value());
  CHECK(uuid->uuid);
  CHECK(uuid->matches(vm_named("web1")));
  CHECK_FALSE(
      uuid->matches(VmRecord{.uuid = kWeb2, .name = "aaaaaaaa-0000-0000-0000-000000000001"}));
  CHECK(parse_vm_pattern("*")->matches(vm_named("app")));
  auto group = parse_vm_pattern("group:web");
  REQUIRE_FALSE(group.has_value());
  CHECK(group.error().find("not served by this version") != std::string::npos);
  for (const char* bad : {"", "net:default", "a b", "a,b", "host/vm"})
    CHECK_FALSE_MESSAGE(parse_vm_pattern(bad).has_value(), bad);
}

TEST_CASE("an identity written out is read back as the client it names") {
  auto token = parse_identity("token:ansible");
  REQUIRE(token.has_value());
  CHECK(token->kind == Identity::Kind::token);
  CHECK(token->to_string() == "token:ansible");

  auto cert = parse_identity("cert:ops.example,ops");
  REQUIRE(cert.has_value());
  CHECK(cert->kind == Identity::Kind::certificate);
  CHECK(cert->name == "ops.example");
  CHECK(cert->certificate_names == std::vector<std::string>{"ops.example", "ops"});
  CHECK(cert->to_string() == "cert:ops.example");

  auto v6 = parse_identity("source:2001:DB8::1");
  REQUIRE(v6.has_value());
  CHECK(v6->kind == Identity::Kind::source);
  REQUIRE(v6->address);
  CHECK(v6->address->is_v6());
  CHECK(v6->to_string() == "source:2001:db8::1");

  CHECK(parse_identity("anonymous")->kind == Identity::Kind::anonymous);
  for (const char* bad : {"", "ansible", "token:", "cert:", "cert:a,,b", "cert:a,", "source:10.1.2",
                          "source:", "trusted:admin", "user:bob"})
    CHECK_FALSE_MESSAGE(parse_identity(bad).has_value(), bad);
}

TEST_CASE("a calling VM reaches another only where a vm: rule names the pair and the port") {
  const std::vector<AclRule> rules = {
      {.name = "web-to-db", .identities = {"vm:web*"}, .vms = {"db1"}, .ports = {5432}},
      {.name = "app-by-uuid", .identities = {std::string("vm:") + kApp}, .vms = {"web1"}},
      {.name = "no-web2", .deny = true, .identities = {"vm:web2"}, .vms = {"*"}},
  };
  AccessPolicy policy(rules);
  auto calling = [](std::string name, std::string uuid) {
    Identity identity;
    identity.kind = Identity::Kind::vm;
    identity.name = std::move(name);
    identity.vm_uuid = std::move(uuid);
    return identity;
  };
  VmRecord db1{.uuid = kDb1, .name = "db1"};
  VmRecord web1{.uuid = kWeb1, .name = "web1"};
  CHECK(policy.decide(calling("web1", kWeb1), db1, 5432) == AccessDecision{true, "web-to-db"});
  CHECK(policy.decide(calling("web1", kWeb1), db1, 22) == AccessDecision{false, "default"});
  CHECK(policy.decide(calling("db1", kDb1), web1, 5432) == AccessDecision{false, "default"});
  CHECK(policy.decide(calling("web2", kWeb2), db1, 5432) == AccessDecision{false, "no-web2"});
  // By UUID, whatever the calling VM is called now.
  CHECK(policy.decide(calling("renamed", kApp), web1, 5986) == AccessDecision{true, "app-by-uuid"});
  // A client whose token is called like a VM is not that VM.
  Identity token;
  token.kind = Identity::Kind::token;
  token.name = "web1";
  CHECK(policy.decide(token, db1, 5432) == AccessDecision{false, "default"});
}
