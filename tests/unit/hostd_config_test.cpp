#include <doctest/doctest.h>

#include "common/config_reader.hpp"
#include "hostd/config/hostd_config.hpp"

using vmgate::config::ConfigError;
using vmgate::hostd::parse_hostd_config;

namespace {

std::string error_of(std::string_view text) {
  try {
    parse_hostd_config(text, "hostd.toml");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("an empty hostd config gives loopback listeners on the agent ports") {
  auto c = parse_hostd_config("", "hostd.toml");
  CHECK(c.libvirt.uri == "qemu:///system");
  CHECK(c.libvirt.read_only);
  REQUIRE(c.listeners.size() == 2);
  CHECK(c.listeners[0].address.to_string() == "tcp:127.0.0.1:5986");
  CHECK(c.listeners[0].guest_port == 5986);
  CHECK(c.listeners[1].guest_port == 8114);
  CHECK(c.channel.transport_template == "vsock:{cid}:{port}");
  CHECK(c.routing.vm_header == "X-VM-Id");
}

TEST_CASE("a full hostd config is read, every key into its field") {
  auto c = parse_hostd_config(R"(
threads = 2
[libvirt]
uri = "test:///tmp/node.xml"
read_only = false
reconnect_min_ms = 100
reconnect_max_ms = 7000
[routing]
vm_header = "X-Target"
host_suffix = "vms.example"
[channel]
transport = "unix:/run/vmgate/{name}.sock"
guestd_port = 6600
connect_timeout_ms = 1500
pool_max_idle = 3
pool_idle_timeout_ms = 2500
[limits]
header_bytes = 8192
request_line_bytes = 2048
header_fields = 40
chunk_extension_bytes = 16
trailer_bytes = 512
max_request_body = 1048576
header_timeout_ms = 750
idle_timeout_ms = 9000
max_connections = 12
[admin]
address = "unix:/run/vmgate/admin.sock"
[[listener]]
name = "wsman"
address = "tcp:127.0.0.1:0"
guest_port = 5985
trusted = true
)",
                              "hostd.toml");
  CHECK(c.threads == 2);
  CHECK(c.libvirt.uri == "test:///tmp/node.xml");
  CHECK_FALSE(c.libvirt.read_only);
  CHECK(c.libvirt.reconnect_min.count() == 100);
  CHECK(c.libvirt.reconnect_max.count() == 7000);
  CHECK(c.routing.vm_header == "X-Target");
  CHECK(c.routing.host_suffix == ".vms.example");
  CHECK(c.channel.transport_template == "unix:/run/vmgate/{name}.sock");
  CHECK(c.channel.guestd_port == 6600);
  CHECK(c.channel.connect_timeout.count() == 1500);
  CHECK(c.channel.pool_max_idle == 3);
  CHECK(c.channel.pool_idle_timeout.count() == 2500);
  CHECK(c.limits.header_bytes == 8192);
  CHECK(c.limits.request_line_bytes == 2048);
  CHECK(c.limits.header_fields == 40);
  CHECK(c.limits.chunk_extension_bytes == 16);
  CHECK(c.limits.trailer_bytes == 512);
  CHECK(c.limits.max_request_body == 1048576);
  CHECK(c.limits.header_timeout.count() == 750);
  CHECK(c.limits.idle_timeout.count() == 9000);
  CHECK(c.limits.max_connections == 12);
  CHECK(c.admin.address.to_string() == "unix:/run/vmgate/admin.sock");
  REQUIRE(c.listeners.size() == 1);
  CHECK(c.listeners[0].name == "wsman");
  CHECK(c.listeners[0].address.to_string() == "tcp:127.0.0.1:0");
  CHECK(c.listeners[0].guest_port == 5985);
  CHECK(c.listeners[0].trusted());
  CHECK_FALSE(c.listeners[0].trusted_remote);
}

TEST_CASE("the limits and timeouts an empty config leaves have their documented defaults") {
  auto c = parse_hostd_config("", "hostd.toml");
  CHECK(c.threads == 0);
  CHECK(c.libvirt.reconnect_min.count() == 500);
  CHECK(c.libvirt.reconnect_max.count() == 30000);
  CHECK(c.channel.guestd_port == 5500);
  CHECK(c.channel.connect_timeout.count() == 3000);
  CHECK(c.limits.header_bytes == 32 * 1024);
  CHECK(c.limits.request_line_bytes == 8 * 1024);
  CHECK(c.limits.header_fields == 100);
  CHECK(c.limits.chunk_extension_bytes == 1024);
  CHECK(c.limits.trailer_bytes == 8 * 1024);
  CHECK(c.limits.max_request_body == 0);
  CHECK(c.limits.header_timeout.count() == 60000);
  CHECK(c.limits.idle_timeout.count() == 300000);
  CHECK(c.limits.max_connections == 4096);
}

TEST_CASE("a libvirt reconnect_max_ms below reconnect_min_ms is refused at its line") {
  CHECK(error_of("[libvirt]\nreconnect_min_ms = 1000\nreconnect_max_ms = 999\n") ==
        "hostd.toml:3: libvirt.reconnect_max_ms: must not be smaller than reconnect_min_ms");
  // Equal is fine: a fixed retry interval.
  auto c = parse_hostd_config("[libvirt]\nreconnect_min_ms = 1000\nreconnect_max_ms = 1000\n",
                              "hostd.toml");
  CHECK(c.libvirt.reconnect_max.count() == 1000);
}

TEST_CASE("channels on demand need a read-write libvirt connection, and make it the default") {
  auto off = parse_hostd_config("", "hostd.toml");
  CHECK_FALSE(off.libvirt.attach_vsock_on_demand);
  CHECK(off.libvirt.read_only);
  CHECK(off.libvirt.attach_timeout.count() == 10'000);
  CHECK(off.libvirt.attached_guestd_timeout.count() == 15'000);
  CHECK(off.libvirt.attach_retry_after.count() == 10'000);

  auto on = parse_hostd_config(
      "[libvirt]\nattach_vsock_on_demand = true\nattach_timeout_ms = 500\n"
      "attached_guestd_timeout_ms = 700\nattach_retry_after_ms = 0\n",
      "hostd.toml");
  CHECK(on.libvirt.attach_vsock_on_demand);
  CHECK_FALSE(on.libvirt.read_only);
  CHECK(on.libvirt.attach_timeout.count() == 500);
  CHECK(on.libvirt.attached_guestd_timeout.count() == 700);
  CHECK(on.libvirt.attach_retry_after.count() == 0);
  CHECK(error_of("[libvirt]\nattach_retry_after_ms = 3600001\n") ==
        "hostd.toml:2: libvirt.attach_retry_after_ms: 3600001 is out of range (0..3600000)");

  CHECK(error_of("[libvirt]\nread_only = true\nattach_vsock_on_demand = true\n") ==
        "hostd.toml:3: libvirt.attach_vsock_on_demand: needs a read-write libvirt connection, "
        "and read_only = true makes it read-only");
}

TEST_CASE("the channel connect retries have their defaults, and max below min is refused") {
  auto c = parse_hostd_config("", "hostd.toml");
  CHECK(c.channel.connect_retry_min.count() == 50);
  CHECK(c.channel.connect_retry_max.count() == 500);
  CHECK(error_of("[channel]\nconnect_retry_min_ms = 200\nconnect_retry_max_ms = 100\n") ==
        "hostd.toml:3: channel.connect_retry_max_ms: must not be smaller than "
        "connect_retry_min_ms");
}

TEST_CASE("values out of their range are refused at their line and key") {
  struct Case {
    const char* text;
    const char* error_start;
  };
  for (auto [text, error_start] : {
           Case{"[limits]\nheader_timeout_ms = 99\n", "hostd.toml:2: limits.header_timeout_ms:"},
           Case{"[limits]\nidle_timeout_ms = 99\n", "hostd.toml:2: limits.idle_timeout_ms:"},
           Case{"[limits]\nmax_connections = 0\n", "hostd.toml:2: limits.max_connections:"},
           Case{"[limits]\nmax_request_body = -1\n", "hostd.toml:2: limits.max_request_body:"},
           Case{"[limits]\nrequest_line_bytes = 63\n", "hostd.toml:2: limits.request_line_bytes:"},
           Case{"[limits]\nheader_fields = 7\n", "hostd.toml:2: limits.header_fields:"},
           Case{"[limits]\nchunk_extension_bytes = 65537\n",
                "hostd.toml:2: limits.chunk_extension_bytes:"},
           Case{"[limits]\ntrailer_bytes = -1\n", "hostd.toml:2: limits.trailer_bytes:"},
           Case{"[channel]\nguestd_port = 0\n", "hostd.toml:2: channel.guestd_port:"},
           Case{"threads = 257\n", "hostd.toml:1: threads:"},
           Case{"[libvirt]\nuri = \"\"\n", "hostd.toml:2: libvirt.uri: must not be empty"},
           Case{"[routing]\nvm_header = \"X VM\"\n",
                "hostd.toml:2: routing.vm_header: must be a header name"},
       }) {
    CAPTURE(text);
    CHECK(error_of(text).starts_with(error_start));
  }
}

TEST_CASE("hostd config errors name file, line and key") {
  CHECK(error_of("[limits]\nheader_bytes = 10\n") ==
        "hostd.toml:2: limits.header_bytes: 10 is out of range (1024..1048576)");
  CHECK(error_of("[channel]\ntransport = \"vsock:{cid}:{porty}\"\n")
            .starts_with("hostd.toml:2: channel.transport: unknown placeholder"));
  CHECK(error_of("[channel]\ntransport = \"carrier-pigeon:{cid}:1\"\n")
            .starts_with("hostd.toml:2: channel.transport: unknown transport scheme"));
  CHECK(error_of("[routing]\nvm_heder = \"X\"\n") ==
        "hostd.toml:2: routing.vm_heder: unknown key (misspelt, or not valid here)");
  CHECK(
      error_of("[[listener]]\naddress = \"tcp:127.0.0.1:1\"\nguest_port = 70000\ntrusted = true\n")
          .starts_with("hostd.toml:3: listener[0].guest_port:"));
  CHECK(error_of("[libvirt]\nuri = 5\n") == "hostd.toml:2: libvirt.uri: must be a string");
  CHECK(error_of("[libvirt\n").starts_with("hostd.toml:1: syntax error"));
}

TEST_CASE("an unknown key that is not a bare key is named quoted, as TOML writes it") {
  CHECK(error_of("\"\" = 4\n") == "hostd.toml:1: \"\": unknown key (misspelt, or not valid here)");
  CHECK(error_of("[limits]\n\"a: b\\n\" = 1\n") ==
        "hostd.toml:2: limits.\"a: b\\u000A\": unknown key (misspelt, or not valid here)");
}

TEST_CASE("two listeners on one address are refused at the second, naming the first") {
  auto e = error_of(
      "[[listener]]\naddress = \"tcp:127.0.0.1:5986\"\ntrusted = true\n\n"
      "[[listener]]\naddress = \"tcp:127.0.0.1:5986\"\ntrusted = true\n");
  CHECK(e ==
        "hostd.toml:6: listener[1].address: tcp:127.0.0.1:5986 is the address of an "
        "earlier listener too (hostd.toml:1: listener[0])");
  // Port 0 is a port of the kernel's choosing for each.
  auto c = parse_hostd_config(
      "[[listener]]\naddress = \"tcp:127.0.0.1:0\"\ntrusted = true\n"
      "[[listener]]\naddress = \"tcp:127.0.0.1:0\"\ntrusted = true\n",
      "hostd.toml");
  CHECK(c.listeners.size() == 2);
}

TEST_CASE("a listener knows its section's line, and moving the section changes nothing else") {
  auto c = parse_hostd_config(
      "threads = 1\n[[listener]]\nname = \"a\"\naddress = \"tcp:127.0.0.1:1\"\ntrusted = true\n",
      "hostd.toml");
  CHECK(c.listeners.at(0).where.text == "hostd.toml:2: listener[0]");
  auto moved = parse_hostd_config(
      "\n\nthreads = 1\n[[listener]]\nname = \"a\"\naddress = \"tcp:127.0.0.1:1\"\n"
      "trusted = true\n",
      "hostd.toml");
  CHECK(moved.listeners.at(0).where.text == "hostd.toml:4: listener[0]");
  CHECK(moved.listeners.at(0) == c.listeners.at(0));
}

TEST_CASE("a trusted listener off loopback must be asked for twice") {
  auto e = error_of("[[listener]]\naddress = \"tcp:0.0.0.0:5986\"\ntrusted = true\n");
  CHECK(e.find("not a loopback address") != std::string::npos);
  auto ok = parse_hostd_config(
      "[[listener]]\naddress = \"tcp:0.0.0.0:5986\"\ntrusted = true\ntrusted_remote = true\n",
      "hostd.toml");
  CHECK(ok.listeners.at(0).guest_port == 5986);
}

TEST_CASE("a unix listener needs a guest_port: it has no port of its own to default to") {
  CHECK(error_of("[[listener]]\naddress = \"unix:/run/vmgate/hostd.sock\"\ntrusted = true\n") ==
        "hostd.toml:1: listener[0].guest_port: is required: unix:/run/vmgate/hostd.sock has no "
        "port to default to");
  auto ok = parse_hostd_config(
      "[[listener]]\naddress = \"unix:/run/vmgate/hostd.sock\"\nguest_port = 5985\ntrusted = "
      "true\n",
      "hostd.toml");
  CHECK(ok.listeners.at(0).guest_port == 5985);
}

TEST_CASE("a listener's name must not be empty: logs and records name it") {
  CHECK(error_of("[[listener]]\nname = \"\"\naddress = \"tcp:127.0.0.1:5986\"\ntrusted = true\n") ==
        "hostd.toml:2: listener[0].name: must not be empty: logs and records name the listener");
}

TEST_CASE(
    "a listener that neither authenticates nor is trusted refuses to start, saying what to add") {
  auto e = error_of("[[listener]]\naddress = \"tcp:127.0.0.1:5986\"\n");
  CHECK(e.starts_with("hostd.toml:1: listener[0].identity:"));
  CHECK(e.find("identity = \"certificate\"") != std::string::npos);
  CHECK(e.find("trusted = true") != std::string::npos);
}

TEST_CASE("the admin listener is on loopback port 9090 unless configured") {
  auto c = parse_hostd_config("", "hostd.toml");
  CHECK(c.admin.enabled);
  CHECK(c.admin.address.to_string() == "tcp:127.0.0.1:9090");

  auto off = parse_hostd_config("[admin]\nenabled = false\n", "hostd.toml");
  CHECK(!off.admin.enabled);

  auto ephemeral = parse_hostd_config("[admin]\naddress = \"tcp:127.0.0.1:0\"\n", "hostd.toml");
  CHECK(ephemeral.admin.address.port == 0);
  auto local = parse_hostd_config("[admin]\naddress = \"unix:/run/vmgate/admin.sock\"\n", "h");
  CHECK(local.admin.address.to_string() == "unix:/run/vmgate/admin.sock");
}

TEST_CASE("an admin listener off loopback must be asked for twice") {
  CHECK(error_of("[admin]\naddress = \"tcp:0.0.0.0:9090\"\n")
            .find("hostd.toml:2: admin.address: tcp:0.0.0.0:9090 is not a loopback address") == 0);
  auto c = parse_hostd_config("[admin]\naddress = \"tcp:0.0.0.0:9090\"\nallow_remote = true\n",
                              "hostd.toml");
  CHECK(c.admin.allow_remote);
  CHECK(error_of("[admin]\naddress = \"vsock:3:9090\"\n").find("tcp:HOST:PORT or unix:PATH") !=
        std::string::npos);
  CHECK(error_of("[admin]\nport = 9090\n").find("admin.port") != std::string::npos);
}

TEST_CASE("the channel pool's size and idle timeout are read, and bad values name the line") {
  auto d = parse_hostd_config("", "hostd.toml");
  CHECK(d.channel.pool_max_idle == 64);
  CHECK(d.channel.pool_idle_timeout.count() == 4000);

  auto c = parse_hostd_config("[channel]\npool_max_idle = 0\npool_idle_timeout_ms = 1500\n",
                              "hostd.toml");
  CHECK(c.channel.pool_max_idle == 0);
  CHECK(c.channel.pool_idle_timeout.count() == 1500);

  CHECK(error_of("[channel]\npool_max_idle = -1\n") ==
        "hostd.toml:2: channel.pool_max_idle: -1 is out of range (0..65536)");
  CHECK(error_of("[channel]\n\npool_idle_timeout_ms = 5\n")
            .starts_with("hostd.toml:3: channel.pool_idle_timeout_ms:"));
  CHECK(error_of("[channel]\npool_max_idle = \"many\"\n") ==
        "hostd.toml:2: channel.pool_max_idle: must be an integer");
}

TEST_CASE("hostd config: the channel budget's keys, their defaults and their one rule") {
  auto d = parse_hostd_config("", "hostd.toml");
  CHECK(d.channel.max_per_vm == 512);
  CHECK(d.channel.max_private_per_vm == 128);
  CHECK(d.channel.wait_timeout == std::chrono::milliseconds(10000));
  CHECK(d.channel.max_waiting_per_vm == 4096);
  auto c = parse_hostd_config(
      "[channel]\nmax_per_vm = 8\nwait_timeout_ms = 250\nmax_waiting_per_vm = 0\n", "hostd.toml");
  CHECK(c.channel.max_per_vm == 8);
  CHECK(c.channel.max_private_per_vm == 8);  // unset, it follows max_per_vm down
  CHECK(c.channel.wait_timeout == std::chrono::milliseconds(250));
  CHECK(c.channel.max_waiting_per_vm == 0);
  CHECK(error_of("[channel]\nmax_per_vm = 8\nmax_private_per_vm = 9\n") ==
        "hostd.toml:3: channel.max_private_per_vm: must not be larger than max_per_vm");
  CHECK(error_of("[channel]\nmax_per_vm = 0\n") ==
        "hostd.toml:2: channel.max_per_vm: 0 is out of range (1..1000000)");
}

TEST_CASE("hostd config: the per-client and tunnel caps, their defaults and their one rule") {
  auto d = parse_hostd_config("", "hostd.toml");
  CHECK(d.limits.max_connections_per_client == 1024);
  CHECK(d.limits.max_tunnels == 2048);
  auto c = parse_hostd_config(
      "[limits]\nmax_connections = 100\nmax_connections_per_client = 10\nmax_tunnels = 20\n",
      "hostd.toml");
  CHECK(c.limits.max_connections_per_client == 10);
  CHECK(c.limits.max_tunnels == 20);
  // Unset, both follow a smaller max_connections down.
  auto small = parse_hostd_config("[limits]\nmax_connections = 2\n", "hostd.toml");
  CHECK(small.limits.max_connections_per_client == 2);
  CHECK(small.limits.max_tunnels == 2);
  CHECK(error_of("[limits]\nmax_connections = 8\nmax_connections_per_client = 9\n") ==
        "hostd.toml:3: limits.max_connections_per_client: must not be larger than "
        "max_connections");
  CHECK(error_of("[limits]\nmax_connections = 8\nmax_tunnels = 9\n") ==
        "hostd.toml:3: limits.max_tunnels: must not be larger than max_connections");
  CHECK(error_of("[limits]\nmax_tunnels = 0\n") ==
        "hostd.toml:2: limits.max_tunnels: 0 is out of range (1..1000000)");
}

TEST_CASE("[[acl]] rules are read in order, each key into its field, unnamed ones as acl[N]") {
  auto c = parse_hostd_config(R"(
[[acl]]
name = "ansible-web"
action = "allow"
identities = ["token:ansible", "cert:*.ops.example", "cidr:10.0.0.0/8", "cidr:2001:db8::/32"]
vms = ["web*", "6F1C0000-0000-0000-0000-000000000000", "*"]
ports = [5985, 5986]

[[acl]]
action = "deny"
identities = ["token:*"]
vms = ["db*"]
)",
                              "hostd.toml");
  REQUIRE(c.acl.size() == 2);
  CHECK(c.acl[0].name == "ansible-web");
  CHECK_FALSE(c.acl[0].deny);
  CHECK(c.acl[0].identities.size() == 4);
  CHECK(c.acl[0].vms.size() == 3);
  CHECK(c.acl[0].ports == std::vector<std::uint16_t>{5985, 5986});
  CHECK(c.acl[1].name == "acl[1]");
  CHECK(c.acl[1].deny);
  CHECK(c.acl[1].ports.empty());  // every port
  CHECK(parse_hostd_config("", "hostd.toml").acl.empty());
}

TEST_CASE("a bad [[acl]] rule stops hostd at its line and key, saying what is wrong") {
  auto rule = [](std::string_view body) {
    return error_of(std::string("[[acl]]\n") + std::string(body));
  };
  const std::string minimal = "identities = [\"token:a\"]\nvms = [\"*\"]\n";
  CHECK(rule(minimal) == "hostd.toml:1: acl[0].action: is required: \"allow\" or \"deny\"");
  CHECK(rule("action = \"permit\"\n" + minimal) ==
        "hostd.toml:2: acl[0].action: 'permit' is not one of allow, deny");
  CHECK(rule("action = \"allow\"\nvms = [\"*\"]\n")
            .starts_with("hostd.toml:1: acl[0].identities: is required and must not be empty"));
  CHECK(rule("action = \"allow\"\nidentities = []\nvms = [\"*\"]\n")
            .starts_with("hostd.toml:3: acl[0].identities: is required and must not be empty"));
  CHECK(rule("action = \"allow\"\nidentities = [\"token:a\"]\nvms = []\n")
            .starts_with("hostd.toml:4: acl[0].vms: is required and must not be empty"));
  CHECK(rule("action = \"allow\"\nidentities = [\"cidr:10.0.0.300/8\"]\nvms = [\"*\"]\n") ==
        "hostd.toml:3: acl[0].identities: '10.0.0.300' is not an IPv4 or IPv6 address");
  CHECK(rule("action = \"allow\"\nidentities = [\"cidr:10.1.0.0/8\"]\nvms = [\"*\"]\n") ==
        "hostd.toml:3: acl[0].identities: '10.1.0.0/8' has bits set past its /8 prefix");
  CHECK(rule("action = \"allow\"\nidentities = [\"cidr:fd00::/200\"]\nvms = [\"*\"]\n")
            .starts_with("hostd.toml:3: acl[0].identities: '200' is not a prefix length"));
  CHECK(rule("action = \"allow\"\nidentities = [\"user:bob\"]\nvms = [\"*\"]\n")
            .starts_with("hostd.toml:3: acl[0].identities: 'user:bob' is not cert:GLOB"));
  CHECK(rule("action = \"allow\"\nidentities = [\"trusted:*\"]\nvms = [\"*\"]\n")
            .starts_with("hostd.toml:3: acl[0].identities: 'trusted:*': a client of a trusted"));
  CHECK(rule("action = \"allow\"\nidentities = [\"token:a\"]\nvms = [\"group:web\"]\n")
            .starts_with("hostd.toml:4: acl[0].vms: 'group:web': groups and networks are not "
                         "served by this version"));
  CHECK(rule("action = \"allow\"\n" + minimal + "ports = [0]\n")
            .starts_with("hostd.toml:5: acl[0].ports: 0 is out of range (1..65535)"));
  CHECK(rule("action = \"allow\"\n" + minimal + "port = [5986]\n") ==
        "hostd.toml:5: acl[0].port: unknown key (misspelt, or not valid here)");
  CHECK(rule("name = \"default\"\naction = \"allow\"\n" + minimal)
            .starts_with("hostd.toml:2: acl[0].name: 'default' is what records call"));
  CHECK(error_of("[[acl]]\nname = \"a\"\naction = \"allow\"\n" + minimal +
                 "[[acl]]\nname = \"a\"\naction = \"deny\"\n" + minimal)
            .starts_with("hostd.toml:7: acl[1].name: 'a' names an earlier rule too"));
  // An unnamed rule's default name is taken too: naming another rule after it is caught.
  CHECK(error_of("[[acl]]\naction = \"allow\"\n" + minimal +
                 "[[acl]]\nname = \"acl[0]\"\naction = \"deny\"\n" + minimal)
            .starts_with("hostd.toml:6: acl[1].name: 'acl[0]' names an earlier rule too"));
}

TEST_CASE("cluster mode is off unless enabled, with its documented defaults") {
  auto c = parse_hostd_config("", "hostd.toml");
  CHECK_FALSE(c.cluster.enabled);
  CHECK(c.cluster.lease_ttl.count() == 10);
  REQUIRE(c.cluster.etcd_endpoints.size() == 1);
  CHECK(c.cluster.etcd_endpoints[0].to_string() == "tcp:127.0.0.1:2379");
  CHECK(c.cluster.peer_listen.port == 7443);
}

TEST_CASE("cluster mode without the peer TLS files is refused at its line") {
  CHECK(error_of("[cluster]\nenabled = true\npeer_address = \"tcp:10.0.0.1:7443\"\n") ==
        "hostd.toml:1: cluster.peer_certificate: is required in cluster mode: hosts "
        "authenticate each other with TLS certificates from one cluster CA (PEM files)");
}

TEST_CASE("a cluster host listening on every address must say where peers reach it") {
  CHECK(error_of("[cluster]\nenabled = true\npeer_certificate = \"c\"\npeer_key = \"k\"\n"
                 "peer_ca = \"ca\"\n") ==
        "hostd.toml:1: cluster.peer_address: is required when peer_listen (tcp:0.0.0.0:7443) is "
        "not an address other hosts can connect to");
  auto c = parse_hostd_config(
      "[cluster]\nenabled = true\nhost_name = \"kvm1\"\npeer_certificate = \"c\"\n"
      "peer_key = \"k\"\npeer_ca = \"ca\"\npeer_listen = \"tcp:10.0.0.1:7443\"\n"
      "etcd_endpoints = [\"tcp:10.0.0.5:2379\", \"tcp:10.0.0.6:2379\"]\nlease_ttl_s = 5\n",
      "hostd.toml");
  CHECK(c.cluster.enabled);
  CHECK(c.cluster.host_name == "kvm1");
  CHECK(c.cluster.etcd_endpoints.size() == 2);
  CHECK(c.cluster.lease_ttl.count() == 5);
}

TEST_CASE("a cluster host publishes its DNS addresses unless it names client addresses") {
  auto c = parse_hostd_config(
      "[routing]\nhost_suffix = \"vms.example\"\n[dns]\nlisten = [\"127.0.0.1:53\"]\n"
      "addresses = [\"192.0.2.1\"]\n",
      "hostd.toml");
  CHECK(c.cluster.client_addresses == std::vector<std::string>{"192.0.2.1"});
  c = parse_hostd_config(
      "[cluster]\nclient_addresses = [\"198.51.100.7\", \"2001:db8::7\"]\n"
      "[dns]\naddresses = [\"192.0.2.1\"]\n",
      "hostd.toml");
  CHECK(c.cluster.client_addresses == std::vector<std::string>{"198.51.100.7", "2001:db8::7"});
  CHECK(parse_hostd_config("", "hostd.toml").cluster.client_addresses.empty());
}

TEST_CASE("cluster client addresses that a client could not connect to are refused") {
  CHECK(error_of("[cluster]\nclient_addresses = [\"kvm1.example\"]\n") ==
        "hostd.toml:2: cluster.client_addresses: 'kvm1.example' is not an IPv4 or IPv6 address");
  CHECK(error_of("[cluster]\nclient_addresses = [\"192.0.2.1\", \"0.0.0.0\"]\n") ==
        "hostd.toml:2: cluster.client_addresses: '0.0.0.0' is not an address a client can "
        "connect to");
  CHECK(error_of("[cluster]\nclient_addresses = [\"::\"]\n") ==
        "hostd.toml:2: cluster.client_addresses: '::' is not an address a client can connect to");
}

TEST_CASE("a cluster host name that cannot be an etcd key segment is refused") {
  CHECK(error_of("[cluster]\nhost_name = \"kvm/1\"\n") ==
        "hostd.toml:2: cluster.host_name: must be letters, digits, '.', '-' or '_' (it is part of "
        "etcd keys)");
}

TEST_CASE("guest-started traffic is off by default and its listeners are checked at load") {
  auto c = parse_hostd_config("", "hostd.toml");
  CHECK_FALSE(c.inbound.enabled());
  CHECK(c.host_services.empty());

  c = parse_hostd_config(R"([inbound]
listen = "vsock:ANY:5501"
per_vm = "unix:/run/vmgate/in/{name}.sock"
[inbound.peer_cids]
"1" = "labvm"
[host_services]
monitor = "tcp:127.0.0.1:9000"
"registry.v2" = "unix:/run/registry.sock"
)",
                         "hostd.toml");
  CHECK(c.inbound.enabled());
  REQUIRE(c.inbound.listen);
  CHECK(c.inbound.listen->to_string() == "vsock:ANY:5501");
  CHECK(c.inbound.peer_cids.at(1) == "labvm");
  CHECK(c.host_services.at("monitor").address.to_string() == "tcp:127.0.0.1:9000");
  CHECK(c.host_services.at("monitor").vms == std::vector<std::string>{"*"});
  CHECK(c.host_services.at("registry.v2").address.to_string() == "unix:/run/registry.sock");

  // Only the peer CID could tell VMs apart on one listener.
  CHECK(error_of("[inbound]\nlisten = \"tcp:127.0.0.1:5501\"\n")
            .starts_with("hostd.toml:2: inbound.listen: is vsock:ANY:PORT"));
  CHECK(error_of("[inbound]\nper_vm = \"unix:/run/in/all.sock\"\n")
            .starts_with("hostd.toml:2: inbound.per_vm: must name each VM's socket apart"));
  CHECK(error_of("[inbound]\nper_vm = \"tcp:127.0.0.1:{name}\"\n")
            .starts_with("hostd.toml:2: inbound.per_vm:"));
  CHECK(error_of("[inbound.peer_cids]\nx = \"labvm\"\n")
            .starts_with("hostd.toml:2: inbound.peer_cids.x: must be a CID"));
  CHECK(error_of("[host_services]\nmonitor = \"http://x\"\n")
            .starts_with("hostd.toml:2: host_services.monitor:"));
  CHECK(error_of("[host_services]\n\"a/b\" = \"tcp:127.0.0.1:1\"\n")
            .starts_with("hostd.toml:2: host_services.a/b:"));
}

TEST_CASE("a host service written as a table is for the VMs its vms name, checked at its line") {
  auto c = parse_hostd_config(R"([host_services]
monitor = "tcp:127.0.0.1:9000"
[host_services.secrets]
address = "unix:/run/secrets.sock"
vms = ["db*", "0F3C1A2B-0000-4000-8000-000000000001"]
)",
                              "hostd.toml");
  CHECK(c.host_services.at("monitor").vms == std::vector<std::string>{"*"});
  CHECK(c.host_services.at("secrets").address.to_string() == "unix:/run/secrets.sock");
  CHECK(c.host_services.at("secrets").vms ==
        std::vector<std::string>{"db*", "0F3C1A2B-0000-4000-8000-000000000001"});

  CHECK(error_of("[host_services.secrets]\nvms = [\"db*\"]\n")
            .starts_with("hostd.toml:1: host_services.secrets.address: is required"));
  CHECK(error_of("[host_services.secrets]\naddress = \"unix:/run/s.sock\"\n")
            .starts_with("hostd.toml:1: host_services.secrets.vms: is required and must not be "
                         "empty"));
  CHECK(error_of("[host_services.secrets]\naddress = \"unix:/run/s.sock\"\nvms = []\n")
            .starts_with("hostd.toml:3: host_services.secrets.vms: is required"));
  CHECK(error_of("[host_services.secrets]\naddress = \"unix:/run/s.sock\"\nvms = [\"\"]\n")
            .starts_with("hostd.toml:3: host_services.secrets.vms:"));
  CHECK(error_of("[host_services.secrets]\naddress = \"tcp:127.0.0.1:0\"\nvms = [\"*\"]\n")
            .starts_with("hostd.toml:2: host_services.secrets.address: tcp port must not be 0"));
  CHECK(error_of("[host_services.secrets]\naddress = \"unix:/run/s.sock\"\nvms = [\"*\"]\n"
                 "ports = [1]\n")
            .starts_with("hostd.toml:4: host_services.secrets.ports:"));
}

TEST_CASE("an ACL rule may name calling VMs, and a bad vm: pattern is refused at its line") {
  auto c = parse_hostd_config(R"([[acl]]
action = "allow"
identities = ["vm:web*"]
vms = ["db1"]
)",
                              "hostd.toml");
  REQUIRE(c.acl.size() == 1);
  CHECK(c.acl[0].identities == std::vector<std::string>{"vm:web*"});
  CHECK(error_of("[[acl]]\naction = \"allow\"\nidentities = [\"vm:a/b\"]\nvms = [\"*\"]\n")
            .starts_with("hostd.toml:3: acl[0].identities:"));
}

TEST_CASE("static groups, joinable groups, fan-out limits and the state file are read") {
  auto c = parse_hostd_config(R"(
[fanout]
max_targets = 500
max_group_depth = 4

[directory]
state_file = "/tmp/state.json"

[groups]
web = ["web[01-04]", "group:db", "net:front"]
db = []

[groups.joinable]
batch = ["batch*", "6e3c4f5a-1b2c-4d5e-8f90-a1b2c3d4e5f6"]
)",
                              "hostd.toml");
  CHECK(c.fanout.max_targets == 500);
  CHECK(c.fanout.max_group_depth == 4);
  CHECK(c.directory.state_file == "/tmp/state.json");
  REQUIRE(c.groups.groups.size() == 2);
  CHECK(c.groups.groups[1].name == "web");
  CHECK(c.groups.groups[1].members ==
        std::vector<std::string>{"web[01-04]", "group:db", "net:front"});
  REQUIRE(c.groups.joinable.size() == 1);
  CHECK(c.groups.joinable[0].name == "batch");
  auto defaults = parse_hostd_config("", "hostd.toml");
  CHECK(defaults.fanout.max_targets == 10'000);
  CHECK(defaults.fanout.max_group_depth == 8);
  CHECK(defaults.directory.state_file.starts_with("/var/lib/vmgate/"));
}

TEST_CASE("a group member that is not a target item is refused at its line") {
  CHECK(error_of("[groups]\nweb = [\"vm 1\"]\n").starts_with("hostd.toml:2: groups.web: 'vm 1': "));
  CHECK(error_of("[groups]\nweb = [\"!vm1\"]\n").starts_with("hostd.toml:2: groups.web: '!vm1': "));
  CHECK(error_of("[groups]\nweb = [\"a,b\"]\n") ==
        "hostd.toml:2: groups.web: 'a,b': one member per string");
  CHECK(
      error_of("[groups.joinable]\nweb = []\n").starts_with("hostd.toml:2: groups.joinable.web: "));
  CHECK(error_of("[directory]\nstate_file = \"rel.json\"\n") ==
        "hostd.toml:2: directory.state_file: must be an absolute path");
}
