// admit(): one table of request heads, in every routing form, against one
// directory: what a request is let through to, or why not, and what the
// request's record learns either way.
#include "hostd/admission/admission.hpp"

#include <doctest/doctest.h>

#include <boost/beast/http/message.hpp>

#include <fmt/format.h>

#include "hostd/directory/embedded_directory.hpp"

using namespace vmgate;
using namespace vmgate::hostd;
namespace http = boost::beast::http;

namespace {

constexpr const char* kVm1 = "11111111-2222-3333-4444-555555555555";
constexpr const char* kVm2 = "22222222-3333-4444-5555-666666666666";
constexpr const char* kNoVsock = "33333333-4444-5555-6666-777777777777";
constexpr const char* kTwin = "44444444-5555-6666-7777-888888888888";

VmRecord vm(std::string name, std::string uuid, std::optional<std::uint32_t> cid,
            VmState state = VmState::running) {
  VmRecord r;
  r.name = std::move(name);
  r.uuid = std::move(uuid);
  r.cid = cid;
  r.state = state;
  return r;
}

// The routing forms, each naming `target`.
enum class Form { connect, header, absolute, host };

http::request_header<> head_for(Form form, const std::string& target) {
  http::request_header<> h;
  h.version(11);
  switch (form) {
    case Form::connect:
      h.method(http::verb::connect);
      h.target(target + ":5986");
      break;
    case Form::header:
      h.method(http::verb::post);
      h.target("/wsman");
      h.set("X-VM-Id", target);
      break;
    case Form::absolute:
      h.method(http::verb::post);
      h.target("http://" + target + ":5986/wsman");
      break;
    case Form::host:
      h.method(http::verb::post);
      h.target("/wsman");
      h.set(http::field::host, target + ".vms.example:5986");
      break;
  }
  return h;
}

struct Fixture {
  Fixture() {
    config.routing.host_suffix = ".vms.example";
    config.limits.max_request_body = 1000;
    directory.replace_all({vm("vm1", kVm1, 3), vm("vm2", kVm2, 4, VmState::shut_off),
                           vm("novsock", kNoVsock, std::nullopt),
                           // named like vm1's UUID: a target naming that UUID is ambiguous
                           vm(kVm1, kTwin, 5)});
  }

  boost::system::result<Admitted, Refused> admit(
      const http::request_header<>& head, std::optional<std::uint64_t> length = {},
      Identity::Kind who = Identity::Kind::trusted_listener) {
    return admit_as(head, Identity{who, "test"}, length);
  }

  boost::system::result<Admitted, Refused> admit_as(const http::request_header<>& head,
                                                    const Identity& identity,
                                                    std::optional<std::uint64_t> length = {}) {
    const AdmissionContext context{config.routing, config.channel, config.limits, directory,
                                   policy};
    return hostd::admit(
        AdmissionRequest{
            .head = head, .content_length = length, .guest_port = 5986, .identity = identity},
        context);
  }

  HostdConfig config;
  EmbeddedDirectory directory;
  AccessPolicy policy;
};

constexpr Form all_forms[] = {Form::connect, Form::header, Form::absolute, Form::host};

const char* name_of(Form f) {
  switch (f) {
    case Form::connect:
      return "CONNECT";
    case Form::header:
      return "X-VM-Id";
    case Form::absolute:
      return "absolute";
    case Form::host:
      return "Host suffix";
  }
  return "?";
}

}  // namespace

TEST_CASE("admission lets a request to a running VM through in every routing form") {
  Fixture f;
  for (Form form : all_forms) {
    INFO(name_of(form));
    auto admitted = f.admit(head_for(form, "vm1"));
    REQUIRE(admitted.has_value());
    CHECK(admitted->destination.vm.uuid == kVm1);
    CHECK(admitted->destination.address.to_string() == "vsock:3:5500");
    CHECK(admitted->route.port == 5986);
  }
}

TEST_CASE("admission answers 404 naming the VM nobody knows, in every routing form") {
  Fixture f;
  for (Form form : all_forms) {
    INFO(name_of(form));
    auto refused = f.admit(head_for(form, "nosuch"));
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().step == AdmissionStep::select);
    CHECK(refused.error().refusal.status == 404);
    CHECK(refused.error().refusal.reason == "vm 'nosuch' is not known to this host");
    REQUIRE(refused.error().route);  // the record still learns the form and target
    CHECK(refused.error().route->target.value == "nosuch");
    CHECK_FALSE(refused.error().vm);
  }
}

TEST_CASE("admission answers 409 listing the candidates of an ambiguous name, in every form") {
  Fixture f;
  for (Form form : all_forms) {
    INFO(name_of(form));
    auto refused = f.admit(head_for(form, kVm1));
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().refusal.status == 409);
    CHECK(refused.error().candidates.size() == 2);
    const auto& reason = refused.error().refusal.reason;
    CHECK(reason.find("matches more than one VM") != std::string::npos);
    CHECK(reason.find(kTwin) != std::string::npos);
  }
}

TEST_CASE("admission answers 503 for a VM that is shut off, and says so, in every form") {
  Fixture f;
  for (Form form : all_forms) {
    INFO(name_of(form));
    auto refused = f.admit(head_for(form, "vm2"));
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().step == AdmissionStep::state);
    CHECK(refused.error().refusal.status == 503);
    CHECK(refused.error().refusal.reason == "vm vm2 is shut_off");
    REQUIRE(refused.error().vm);
    CHECK(refused.error().vm->uuid == kVm2);
  }
}

TEST_CASE("admission answers 413 for a declared body over max_request_body, in every form") {
  Fixture f;
  for (Form form : all_forms) {
    INFO(name_of(form));
    auto refused = f.admit(head_for(form, "vm1"), 1001);
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().step == AdmissionStep::size);
    CHECK(refused.error().refusal.status == 413);
    CHECK(refused.error().refusal.reason == "request body of 1001 bytes exceeds the limit of 1000");
    // Exactly at the limit is fine.
    CHECK(f.admit(head_for(form, "vm1"), 1000).has_value());
  }
}

TEST_CASE("admission answers 503 for a running VM without a vsock device") {
  Fixture f;
  auto refused = f.admit(head_for(Form::header, "novsock"));
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.error().step == AdmissionStep::channel);
  CHECK(refused.error().refusal.status == 503);
  CHECK(refused.error().refusal.reason.find("has no vsock device") != std::string::npos);
}

TEST_CASE("a target naming many VMs is resolved, then refused 501 in one place until delivery") {
  Fixture f;
  auto refused = f.admit(head_for(Form::header, "vm1, novsock"));
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.error().step == AdmissionStep::select);
  CHECK(refused.error().refusal.status == 501);
  CHECK(refused.error().refusal.reason ==
        "fan-out delivery is not ready: 'vm1,novsock' names 2 VMs");
  // What the directory says of the set reaches a trusted client...
  auto unknown_group = f.admit(head_for(Form::header, "group:web"));
  REQUIRE_FALSE(unknown_group.has_value());
  CHECK(unknown_group.error().refusal.status == 404);
  CHECK(unknown_group.error().refusal.reason.find("group 'web' is not known") != std::string::npos);
  auto too_many = f.admit(head_for(Form::header, "web[1-100000]"));
  REQUIRE_FALSE(too_many.has_value());
  CHECK(too_many.error().refusal.status == 400);
  // ...and nothing of it reaches one that is not.
  auto untrusted = f.admit(head_for(Form::header, "group:web"), {}, Identity::Kind::token);
  REQUIRE_FALSE(untrusted.has_value());
  CHECK(untrusted.error().refusal.status == 501);
  CHECK(untrusted.error().refusal.reason == "fan-out delivery is not ready");
}

TEST_CASE("admission answers 400 when the head names no usable target") {
  Fixture f;
  http::request_header<> none;
  none.method(http::verb::get);
  none.target("/wsman");
  none.version(11);
  auto refused = f.admit(none);
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.error().step == AdmissionStep::route);
  CHECK(refused.error().refusal.status == 400);
  CHECK(refused.error().refusal.reason.find("no target VM") != std::string::npos);
  CHECK_FALSE(refused.error().route);

  auto bad = f.admit(head_for(Form::header, "bad name"));
  REQUIRE_FALSE(bad.has_value());
  CHECK(bad.error().refusal.status == 400);
}

TEST_CASE(
    "admission refuses a client nobody vouches for with 403, before it learns the VM's state") {
  Fixture f;
  for (const char* target : {"vm1", "vm2"}) {
    INFO(target);
    auto refused = f.admit(head_for(Form::header, target), {}, Identity::Kind::anonymous);
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().step == AdmissionStep::authorize);
    CHECK(refused.error().refusal.status == 403);
  }
}

namespace {

// token:ansible may reach vm1 by UUID, novsock, and anything named vm* on 5986, but
// not vm2; anyone with a token is kept from vm2 by a deny rule.
AccessPolicy ansible_policy() {
  auto config = parse_hostd_config(R"(
[[acl]]
name = "ansible-vm1"
action = "allow"
identities = ["token:ansible"]
vms = ["11111111-2222-3333-4444-555555555555", "vm*", "novsock"]
ports = [5986]

[[acl]]
name = "secret-no-vm2"
action = "deny"
identities = ["token:*"]
vms = ["vm2"]
)",
                                   "hostd.toml");
  return AccessPolicy(config.acl);
}

Identity token(std::string name) {
  return Identity{Identity::Kind::token, std::move(name)};
}

}  // namespace

TEST_CASE("a client the rules refuse gets one 403 whether or not the VM exists, naming no rule") {
  Fixture f;
  f.policy = ansible_policy();
  for (Form form : all_forms) {
    INFO(name_of(form));
    for (const char* target :
         {"vm1", "vm2", "novsock", "nosuch", "33333333-0000-0000-0000-000000000000"}) {
      INFO(target);
      auto refused = f.admit_as(head_for(form, target), token("other"));
      REQUIRE_FALSE(refused.has_value());
      CHECK(refused.error().step == AdmissionStep::authorize);
      CHECK(refused.error().refusal.status == 403);
      CHECK(refused.error().refusal.reason ==
            fmt::format("token:other may not reach '{}' on port 5986", target));
      REQUIRE(refused.error().access);
      CHECK_FALSE(refused.error().access->allowed);
      CHECK(refused.error().candidates.empty());
    }
  }
  // The deciding rule is in the record, never in the answer.
  auto denied = f.admit_as(head_for(Form::header, "vm2"), token("ansible"));
  REQUIRE_FALSE(denied.has_value());
  CHECK(denied.error().access == AccessDecision{false, "secret-no-vm2"});
  CHECK(denied.error().refusal.reason == "token:ansible may not reach 'vm2' on port 5986");
  CHECK(denied.error().refusal.reason.find("secret") == std::string::npos);
  // A port the rule does not cover is refused the same way.
  auto head = head_for(Form::absolute, "vm1");
  head.target("http://vm1:5985/wsman");
  auto port = f.admit_as(head, token("ansible"));
  REQUIRE_FALSE(port.has_value());
  CHECK(port.error().refusal.reason == "token:ansible may not reach 'vm1' on port 5985");
  CHECK(port.error().access == AccessDecision{false, "default"});
}

TEST_CASE("an unknown VM is 404 only to a client that could reach a VM of that name") {
  Fixture f;
  f.policy = ansible_policy();
  auto unknown = f.admit_as(head_for(Form::header, "vm9"), token("ansible"));
  REQUIRE_FALSE(unknown.has_value());
  CHECK(unknown.error().step == AdmissionStep::select);
  CHECK(unknown.error().refusal.status == 404);
  CHECK(unknown.error().refusal.reason == "vm 'vm9' is not known to this host");
  CHECK_FALSE(unknown.error().access);

  auto elsewhere = f.admit_as(head_for(Form::header, "nosuch"), token("ansible"));
  REQUIRE_FALSE(elsewhere.has_value());
  CHECK(elsewhere.error().refusal.status == 403);
  // A trusted listener's client keeps the directory's answer.
  CHECK(f.admit(head_for(Form::header, "nosuch")).error().refusal.status == 404);
}

TEST_CASE("an ambiguous name lists only the candidates the client may reach, 403 if none") {
  Fixture f;
  f.policy = ansible_policy();
  // kVm1 names vm1 by UUID and, by name, the twin: ansible may reach only vm1.
  auto some = f.admit_as(head_for(Form::header, kVm1), token("ansible"));
  REQUIRE_FALSE(some.has_value());
  CHECK(some.error().refusal.status == 409);
  CHECK(some.error().candidates == std::vector<std::string>{fmt::format("vm1 ({})", kVm1)});
  CHECK(some.error().refusal.reason.find(kTwin) == std::string::npos);

  auto none = f.admit_as(head_for(Form::header, kVm1), token("other"));
  REQUIRE_FALSE(none.has_value());
  CHECK(none.error().refusal.status == 403);
  CHECK(none.error().refusal.reason ==
        fmt::format("token:other may not reach '{}' on port 5986", kVm1));
  CHECK(none.error().candidates.empty());

  // A trusted listener's client is shown both, as before.
  CHECK(f.admit(head_for(Form::header, kVm1)).error().candidates.size() == 2);
}

TEST_CASE(
    "what admission lets through, or refuses after authorize, carries the rule that allowed it") {
  Fixture f;
  f.policy = ansible_policy();
  auto admitted = f.admit_as(head_for(Form::connect, "vm1"), token("ansible"));
  REQUIRE(admitted.has_value());
  CHECK(admitted->access == AccessDecision{true, "ansible-vm1"});

  auto no_vsock = f.admit_as(head_for(Form::header, "novsock"), token("ansible"));
  REQUIRE_FALSE(no_vsock.has_value());
  CHECK(no_vsock.error().step == AdmissionStep::channel);
  CHECK(no_vsock.error().access == AccessDecision{true, "ansible-vm1"});

  auto trusted = f.admit(head_for(Form::header, "vm1"));
  REQUIRE(trusted.has_value());
  CHECK(trusted->access == AccessDecision{true, "trusted"});
}
