// hostd's admin API without a socket: the JSON shapes vmgatectl and scripts
// read, the status codes, and /v1/check against a stand-in guestd on a unix
// socket in a temp dir.
#include <doctest/doctest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "common/asio.hpp"
#include "common/transport.hpp"
#include "hostd/admin/admin_api.hpp"
#include "hostd/admin/readiness.hpp"
#include "hostd/config/hostd_config.hpp"
#include "hostd/directory/embedded_directory.hpp"
#include "hostd/metrics/hostd_metrics.hpp"

using namespace vmgate;
using namespace vmgate::hostd;
using json = nlohmann::json;

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

const std::string uuid1 = "00000000-0000-0000-0000-000000000001";
const std::string uuid2 = "00000000-0000-0000-0000-000000000002";
const std::string uuid3 = "00000000-0000-0000-0000-000000000003";

struct TempDir {
  TempDir() {
    char templ[] = "/tmp/vmgate-admin-test.XXXXXX";
    REQUIRE(::mkdtemp(templ) != nullptr);
    path = templ;
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string path;
};

// hostd's parts the admin API reads, with a channel template on unix sockets.
struct Fixture {
  explicit Fixture(std::string transport = "vsock:{cid}:{port}") {
    config.channel.transport_template = std::move(transport);
    config.channel.connect_timeout = std::chrono::milliseconds(2000);
    ListenerConfig l;
    l.guest_port = 5986;
    config.listeners.push_back(l);
    directory.replace_all({vm("vm2", uuid2, std::nullopt, VmState::shut_off), vm("vm1", uuid1, 3)});
  }
  AdminContext context() { return AdminContext{config, directory, metrics, readiness, policy}; }

  // Runs one request to completion on its own io_context, beside `extra`.
  AdminResponse request(std::string_view method, std::string_view target,
                        std::function<void(asio::io_context&)> extra = {}) {
    asio::io_context io;
    if (extra) extra(io);
    std::optional<AdminResponse> out;
    AdminContext ctx = context();
    asio::co_spawn(io, handle_admin_request(ctx, method, target, "test"),
                   [&](std::exception_ptr e, AdminResponse r) {
                     REQUIRE(!e);
                     out = std::move(r);
                   });
    io.run_for(std::chrono::seconds(20));
    REQUIRE(out);
    return *out;
  }

  HostdConfig config;
  EmbeddedDirectory directory;
  HostdMetrics metrics{directory, nullptr};
  Readiness readiness{"test:///node.xml", nullptr};
  AccessPolicy policy;
};

json body_of(const AdminResponse& r) {
  INFO(r.body);
  REQUIRE(r.content_type == "application/json");
  return json::parse(r.body);
}

// A stand-in guestd: accepts one channel, reads the preamble, sends `answer`.
void fake_guestd(asio::io_context& io, const std::string& path, std::string answer) {
  error_code ec;
  auto address = transport::parse("unix:" + path);
  REQUIRE(address.has_value());
  auto acceptor = std::make_shared<Acceptor>(transport::listen(io.get_executor(), *address, ec));
  REQUIRE(!ec);
  asio::co_spawn(
      io,
      [acceptor, answer]() -> awaitable<void> {
        auto [aec, stream] = co_await acceptor->async_accept(use_tuple);
        if (aec) co_return;
        std::string in;
        co_await asio::async_read_until(stream, asio::dynamic_buffer(in), "\r\n\r\n", use_tuple);
        co_await asio::async_write(stream, asio::buffer(answer), use_tuple);
        error_code ignored;
        stream.close(ignored);
      },
      asio::detached);
}

}  // namespace

TEST_CASE("query parameters are percent-decoded") {
  CHECK(query_param("/v1/check?target=vm%201&port=22", "target") == "vm 1");
  CHECK(query_param("/v1/check?target=vm%201&port=22", "port") == "22");
  CHECK(query_param("/v1/resolve?target=a+b", "target") == "a b");
  CHECK(query_param("/v1/resolve?flag&target=x", "flag") == "");
  CHECK(query_param("/v1/resolve?target=%zz", "target") == "%zz");
  CHECK(!query_param("/v1/resolve", "target"));
  CHECK(!query_param("/v1/resolve?other=1", "target"));
}

TEST_CASE("a VM's JSON has name, uuid, cid, state and the channel transport") {
  ChannelConfig channel;
  auto j = vm_json(vm("vm1", uuid1, 7), channel);
  CHECK(j["name"] == "vm1");
  CHECK(j["uuid"] == uuid1);
  CHECK(j["cid"] == 7);
  CHECK(j["state"] == "running");
  CHECK(j["transport"] == "vsock:7:5500");
  CHECK(j["networks"].is_array());
  CHECK(j["groups"].is_array());
  CHECK(!j.contains("transport_error"));

  auto none = vm_json(vm("vm2", uuid2, std::nullopt), channel);
  CHECK(none["cid"].is_null());
  CHECK(none["transport"].is_null());
  CHECK(none["transport_error"].get<std::string>().find("no vsock device") != std::string::npos);

  channel.transport_template = "unix:/run/vmgate/{name}.sock";
  CHECK(vm_json(vm("vm2", uuid2, std::nullopt), channel)["transport"] ==
        "unix:/run/vmgate/vm2.sock");
}

TEST_CASE("/v1/vms lists every VM, sorted by name") {
  Fixture f;
  auto r = f.request("GET", "/v1/vms");
  CHECK(r.status == 200);
  auto j = body_of(r);
  REQUIRE(j.is_array());
  REQUIRE(j.size() == 2);
  CHECK(j[0]["name"] == "vm1");
  CHECK(j[0]["cid"] == 3);
  CHECK(j[0]["transport"] == "vsock:3:5500");
  CHECK(j[1]["name"] == "vm2");
  CHECK(j[1]["state"] == "shut_off");
  CHECK(j[1]["cid"].is_null());
}

TEST_CASE("/v1/resolve answers found, not_found, ambiguous with 200, 404, 409") {
  Fixture f;
  auto found = f.request("GET", "/v1/resolve?target=vm1");
  CHECK(found.status == 200);
  auto j = body_of(found);
  CHECK(j["result"] == "found");
  CHECK(j["target"] == "vm1");
  CHECK(j["vm"]["uuid"] == uuid1);
  CHECK(j["routable"] == true);

  auto by_uuid = body_of(f.request("GET", "/v1/resolve?target=" + uuid2));
  CHECK(by_uuid["vm"]["name"] == "vm2");
  CHECK(by_uuid["routable"] == false);
  CHECK(by_uuid["reason"] == "vm vm2 is shut_off");

  auto missing = f.request("GET", "/v1/resolve?target=nosuch");
  CHECK(missing.status == 404);
  CHECK(body_of(missing)["result"] == "not_found");

  // A VM named like another's UUID: the directory will not guess.
  f.directory.upsert(vm(uuid1, uuid3, 9));
  auto ambiguous = f.request("GET", "/v1/resolve?target=" + uuid1);
  CHECK(ambiguous.status == 409);
  auto a = body_of(ambiguous);
  CHECK(a["result"] == "ambiguous");
  CHECK(a["candidates"].size() == 2);

  CHECK(f.request("GET", "/v1/resolve?target=group:web").status == 404);
  CHECK(f.request("GET", "/v1/resolve?target=kvm7/vm1").status == 501);
  CHECK(f.request("GET", "/v1/resolve?target=bad%20name").status == 400);
  CHECK(f.request("GET", "/v1/resolve").status == 400);
}

TEST_CASE("/v1/resolve shows a set with each VM's rule, and /v1/groups where members come from") {
  Fixture f;
  GroupsConfig groups;
  groups.groups.push_back({"web", {"vm1", "group:meta"}, {}});
  FanoutConfig limits;
  f.directory.use_groups(groups, limits, nullptr);
  VmRecord tagged = vm("vm3", uuid3, 5);
  tagged.groups = {"meta"};
  f.directory.upsert(tagged);

  auto set = f.request("GET", "/v1/resolve?target=group:web,%20!vm3,%20vm2");
  CHECK(set.status == 200);
  auto j = body_of(set);
  CHECK(j["result"] == "found");
  CHECK(j["count"] == 2);
  CHECK(j["routable"] == false);
  CHECK(j["reason"] == "fan-out delivery is not ready");
  REQUIRE(j["vms"].size() == 2);
  CHECK(j["vms"][0]["name"] == "vm1");
  CHECK(j["vms"][0]["added_by"]["source"] == "name");
  CHECK(j["vms"][0]["added_by"]["rule"] == "config group web");
  CHECK(j["vms"][1]["name"] == "vm2");
  REQUIRE(j["excluded"].size() == 1);
  CHECK(j["excluded"][0]["name"] == "vm3");
  CHECK(j["excluded"][0]["excluded_by"] == "!vm3");
  CHECK(j["excluded"][0]["reached_by"]["source"] == "name");

  auto nothing = f.request("GET", "/v1/resolve?target=group:nosuch");
  CHECK(nothing.status == 404);
  CHECK(body_of(nothing)["error"].get<std::string>().find("group 'nosuch' is not known") !=
        std::string::npos);

  auto listed = body_of(f.request("GET", "/v1/groups"));
  REQUIRE(listed.size() == 2);
  CHECK(listed[0]["name"] == "meta");
  CHECK(listed[0]["in_config"] == false);
  CHECK(listed[0]["members"][0]["from"] == "libvirt");
  CHECK(listed[1]["name"] == "web");
  CHECK(listed[1]["config_members"] == json({"vm1", "group:meta"}));
  REQUIRE(listed[1]["members"].size() == 2);
  CHECK(listed[1]["members"][0]["from"] == "name");
  CHECK(listed[1]["members"][1]["from"] == "libvirt");
}

TEST_CASE("/healthz, /readyz, /metrics and unknown paths") {
  Fixture f;
  auto health = f.request("GET", "/healthz");
  CHECK(health.status == 200);
  CHECK(health.body == "ok\n");

  auto not_ready = f.request("GET", "/readyz");
  CHECK(not_ready.status == 503);
  CHECK(not_ready.body.find("listeners are not bound") != std::string::npos);
  CHECK(not_ready.body.find("test:///node.xml") != std::string::npos);
  f.readiness.listeners_bound();
  CHECK(f.request("GET", "/readyz").status == 503);
  f.readiness.libvirt_synced();
  auto ready = f.request("GET", "/readyz");
  CHECK(ready.status == 200);
  CHECK(ready.body == "ready\n");
  f.readiness.stopping();
  auto stopping = f.request("GET", "/readyz");
  CHECK(stopping.status == 503);
  CHECK(stopping.body.find("stopping") != std::string::npos);

  auto metrics = f.request("GET", "/metrics");
  CHECK(metrics.status == 200);
  CHECK(metrics.content_type == "text/plain; version=0.0.4; charset=utf-8");
  CHECK(metrics.body.find("vmgate_directory_vms 2") != std::string::npos);

  CHECK(f.request("GET", "/nope").status == 404);
  CHECK(f.request("POST", "/healthz").status == 405);
  CHECK(f.request("HEAD", "/healthz").status == 200);
}

TEST_CASE("/v1/check reports every hop of a channel that opens") {
  TempDir dir;
  Fixture f("unix:" + dir.path + "/{name}.sock");
  auto r = f.request("GET", "/v1/check?target=vm1&port=5986", [&](asio::io_context& io) {
    fake_guestd(io, dir.path + "/vm1.sock", "VMGATE/1 200 OK\r\n\r\n");
  });
  CHECK(r.status == 200);
  auto j = body_of(r);
  CHECK(j["ok"] == true);
  CHECK(j["status"] == 200);
  CHECK(j["target"] == "vm1");
  CHECK(j["port"] == 5986);
  CHECK(j["request_id"].get<std::string>().size() == 8);
  CHECK(j["elapsed_ms"].is_number());
  REQUIRE(j["hops"].size() == 3);
  CHECK(j["hops"][0]["hop"] == "directory");
  CHECK(j["hops"][0]["result"] == "found");
  CHECK(j["hops"][0]["vm"]["name"] == "vm1");
  CHECK(j["hops"][1]["hop"] == "transport");
  CHECK(j["hops"][1]["address"] == "unix:" + dir.path + "/vm1.sock");
  CHECK(j["hops"][2]["hop"] == "channel");
  CHECK(j["hops"][2]["status"] == 200);
  for (const auto& hop : j["hops"]) {
    CHECK(hop["ok"] == true);
    CHECK(hop["ms"].is_number());
  }
}

TEST_CASE("/v1/check carries guestd's refusal and the status a client would see") {
  TempDir dir;
  Fixture f("unix:" + dir.path + "/{name}.sock");
  auto r = f.request("GET", "/v1/check?target=vm1&port=22", [&](asio::io_context& io) {
    fake_guestd(io, dir.path + "/vm1.sock", "VMGATE/1 403 port-not-allowed\r\n\r\n");
  });
  CHECK(r.status == 403);
  auto j = body_of(r);
  CHECK(j["ok"] == false);
  CHECK(j["port"] == 22);
  REQUIRE(j["hops"].size() == 3);
  CHECK(j["hops"][2]["ok"] == false);
  CHECK(j["hops"][2]["status"] == 403);
  CHECK(j["reason"].get<std::string>().find("port-not-allowed") != std::string::npos);

  // Nobody listening on the VM's channel: 502, the transport named.
  auto unreachable = body_of(f.request("GET", "/v1/check?target=vm1"));
  CHECK(unreachable["status"] == 502);
  CHECK(unreachable["port"] == 5986);  // the first listener's guest port
  CHECK(unreachable["hops"][2]["reason"].get<std::string>().find("vm1.sock") != std::string::npos);
}

TEST_CASE("/v1/check stops at the directory for unknown and stopped VMs") {
  Fixture f;
  auto missing = f.request("GET", "/v1/check?target=nosuch&port=5986");
  CHECK(missing.status == 404);
  auto m = body_of(missing);
  REQUIRE(m["hops"].size() == 1);
  CHECK(m["hops"][0]["result"] == "not_found");

  auto stopped = f.request("GET", "/v1/check?target=vm2&port=5986");
  CHECK(stopped.status == 503);
  auto s = body_of(stopped);
  REQUIRE(s["hops"].size() == 1);
  CHECK(s["hops"][0]["ok"] == false);
  CHECK(s["reason"] == "vm vm2 is shut_off");

  CHECK(f.request("GET", "/v1/check?target=vm1&port=70000").status == 400);
  CHECK(f.request("GET", "/v1/check?port=1").status == 400);
}

TEST_CASE("/v1/check as an identity answers what that client would get, and names the rule") {
  TempDir dir;
  Fixture f("unix:" + dir.path + "/{name}.sock");
  auto rules = parse_hostd_config(R"(
[[acl]]
name = "ansible-vm"
action = "allow"
identities = ["token:ansible", "cidr:10.1.0.0/16"]
vms = ["vm*"]

[[acl]]
name = "no-vm2"
action = "deny"
identities = ["token:*"]
vms = ["vm2"]
)",
                                  "hostd.toml");
  f.policy = AccessPolicy(rules.acl);

  auto allowed = f.request("GET", "/v1/check?target=vm1&port=5986&as=token%3Aansible",
                           [&](asio::io_context& io) {
                             fake_guestd(io, dir.path + "/vm1.sock", "VMGATE/1 200 OK\r\n\r\n");
                           });
  CHECK(allowed.status == 200);
  auto a = body_of(allowed);
  CHECK(a["identity"] == "token:ansible");
  CHECK(a["acl"] == json({{"allowed", true}, {"rule", "ansible-vm"}}));
  REQUIRE(a["hops"].size() == 4);
  CHECK(a["hops"][1]["hop"] == "authorize");
  CHECK(a["hops"][1]["ok"] == true);
  CHECK(a["hops"][1]["rule"] == "ansible-vm");

  auto denied = f.request("GET", "/v1/check?target=vm2&port=5986&as=token:ansible");
  CHECK(denied.status == 403);
  auto d = body_of(denied);
  CHECK(d["acl"] == json({{"allowed", false}, {"rule", "no-vm2"}}));
  CHECK(d["reason"] == "token:ansible may not reach 'vm2' on port 5986");
  CHECK(d["hops"].back()["hop"] == "authorize");
  CHECK(d["hops"].back()["rule"] == "no-vm2");

  // A name no VM has: the same 403 for a client that could not reach it...
  auto unknown = body_of(f.request("GET", "/v1/check?target=db9&port=5986&as=source:10.2.0.1"));
  CHECK(unknown["status"] == 403);
  CHECK(unknown["identity"] == "source:10.2.0.1");
  CHECK(unknown["acl"]["rule"] == "default");
  // ...and the directory's 404 for one that could.
  auto absent = body_of(f.request("GET", "/v1/check?target=vm9&port=5986&as=source:10.1.2.3"));
  CHECK(absent["status"] == 404);

  // Without `as`, the operator: trusted, whatever the rules say.
  auto operator_check = body_of(f.request("GET", "/v1/check?target=vm2&port=5986"));
  CHECK(operator_check["status"] == 503);
  CHECK(operator_check["identity"] == "trusted:admin");
  CHECK(operator_check["acl"]["rule"] == "trusted");
  CHECK(operator_check["hops"].size() == 1);

  auto bad = f.request("GET", "/v1/check?target=vm1&port=5986&as=user:bob");
  CHECK(bad.status == 400);
  CHECK(body_of(bad)["error"].get<std::string>().starts_with("as: 'user:bob' is not token:NAME"));
}
