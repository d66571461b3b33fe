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

TEST_CASE("a full hostd config is read") {
  auto c = parse_hostd_config(R"(
threads = 2
[libvirt]
uri = "test:///tmp/node.xml"
reconnect_min_ms = 100
[routing]
vm_header = "X-Target"
host_suffix = "vms.example"
[channel]
transport = "unix:/run/vmgate/{name}.sock"
connect_timeout_ms = 1500
[limits]
header_bytes = 8192
max_request_body = 1048576
[[listener]]
name = "wsman"
address = "tcp:127.0.0.1:0"
guest_port = 5986
trusted = true
)",
                              "hostd.toml");
  CHECK(c.threads == 2);
  CHECK(c.libvirt.uri == "test:///tmp/node.xml");
  CHECK(c.routing.host_suffix == ".vms.example");
  CHECK(c.channel.connect_timeout.count() == 1500);
  CHECK(c.limits.max_request_body == 1048576);
  REQUIRE(c.listeners.size() == 1);
  CHECK(c.listeners[0].name == "wsman");
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

TEST_CASE("a trusted listener off loopback must be asked for twice") {
  auto e = error_of("[[listener]]\naddress = \"tcp:0.0.0.0:5986\"\ntrusted = true\n");
  CHECK(e.find("not a loopback address") != std::string::npos);
  auto ok = parse_hostd_config(
      "[[listener]]\naddress = \"tcp:0.0.0.0:5986\"\ntrusted = true\ntrusted_remote = true\n",
      "hostd.toml");
  CHECK(ok.listeners.at(0).guest_port == 5986);
}

TEST_CASE("a listener without authentication must be marked trusted") {
  auto e = error_of("[[listener]]\naddress = \"tcp:127.0.0.1:5986\"\n");
  CHECK(e.starts_with("hostd.toml:1: listener[0].trusted:"));
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
