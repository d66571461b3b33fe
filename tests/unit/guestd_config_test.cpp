// guestd's configuration: defaults, and every bad value named by file, line
// and key.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <fmt/format.h>

#include "common/config_reader.hpp"
#include "guestd/config/guestd_config.hpp"

using namespace std::chrono_literals;
using vmgate::config::ConfigError;
using vmgate::guestd::GuestdConfig;
using vmgate::guestd::parse_guestd_config;
namespace transport = vmgate::transport;

namespace {

// The ConfigError message for `text`, or a failed check when it loads.
std::string error_of(const std::string& text) {
  try {
    parse_guestd_config(text, "guestd.toml");
  } catch (const ConfigError& e) {
    return e.what();
  }
  FAIL_CHECK("config loaded but should not have: " << text);
  return {};
}

}  // namespace

TEST_CASE("guestd config: an empty file gives the documented defaults") {
  GuestdConfig c = parse_guestd_config("", "guestd.toml");
  CHECK(c.listen.kind == transport::Kind::vsock);
  CHECK(c.listen.cid == transport::vsock_cid_any);
  CHECK(c.listen.port == 5500);
  CHECK(c.allowed_peer_cids == std::set<std::uint32_t>{2});
  CHECK(c.allowed_ports == std::set<std::uint16_t>{5986, 8114});
  CHECK(c.agents.empty());
  CHECK(c.limits.preamble_timeout == 5000ms);
  CHECK(c.limits.agent_connect_timeout == 3000ms);
  CHECK(c.limits.idle_timeout == 300000ms);
  CHECK(c.limits.max_connections == 1024);
  CHECK(c.limits.shutdown_grace == 5000ms);
  CHECK(c.agent_for(5986).to_string() == "tcp:127.0.0.1:5986");
  CHECK(c.socket_mode == 0600);
  CHECK_FALSE(c.listen_remote);
}

TEST_CASE("guestd config: the packaged example file loads and matches the defaults") {
  auto path = std::filesystem::path(VMGATE_SOURCE_DIR) / "guestd/guestd.toml";
  REQUIRE(std::filesystem::exists(path));
  GuestdConfig c = vmgate::guestd::load_guestd_config(path.string());
  GuestdConfig d;
  CHECK(c.listen == d.listen);
  CHECK(c.allowed_peer_cids == d.allowed_peer_cids);
  CHECK(c.allowed_ports == d.allowed_ports);
  CHECK(c.agents.empty());
  CHECK(c.limits.preamble_timeout == d.limits.preamble_timeout);
  CHECK(c.limits.idle_timeout == d.limits.idle_timeout);
  CHECK(c.limits.max_connections == d.limits.max_connections);
  CHECK(c.socket_mode == d.socket_mode);
  CHECK(c.listen_remote == d.listen_remote);
}

TEST_CASE("guestd config: every key is read") {
  GuestdConfig c = parse_guestd_config(R"(
listen = "unix:/run/vmgate/test.sock"
socket_mode = "0660"
listen_remote = true
allowed_peer_cids = [1, 2]
allowed_ports = [5986, 8114, 5986]
[agents]
"5986" = "tcp:127.0.0.1:15986"
8114 = "unix:/run/bits.sock"
[limits]
preamble_timeout_ms = 250
agent_connect_timeout_ms = 100
idle_timeout_ms = 1000
max_connections = 7
shutdown_grace_ms = 0
)",
                                       "guestd.toml");
  CHECK(c.listen.to_string() == "unix:/run/vmgate/test.sock");
  CHECK(c.socket_mode == 0660);
  CHECK(c.listen_remote);
  CHECK(c.allowed_peer_cids == std::set<std::uint32_t>{1, 2});
  CHECK(c.allowed_ports == std::set<std::uint16_t>{5986, 8114});
  CHECK(c.agent_for(5986).to_string() == "tcp:127.0.0.1:15986");
  CHECK(c.agent_for(8114).to_string() == "unix:/run/bits.sock");
  CHECK(c.limits.preamble_timeout == 250ms);
  CHECK(c.limits.agent_connect_timeout == 100ms);
  CHECK(c.limits.idle_timeout == 1000ms);
  CHECK(c.limits.max_connections == 7);
  CHECK(c.limits.shutdown_grace == 0ms);
}

TEST_CASE("guestd config: peers are checked by CID only on vsock listeners") {
  GuestdConfig vsock = parse_guestd_config("allowed_peer_cids = [2]", "guestd.toml");
  CHECK(vsock.peer_allowed(2));
  CHECK_FALSE(vsock.peer_allowed(3));
  CHECK_FALSE(vsock.peer_allowed(1));
  CHECK_FALSE(vsock.peer_allowed(std::nullopt));  // not AF_VSOCK on a vsock listener

  GuestdConfig lab = parse_guestd_config("allowed_peer_cids = [1]", "guestd.toml");
  CHECK(lab.peer_allowed(1));
  CHECK_FALSE(lab.peer_allowed(2));

  GuestdConfig unix_listener = parse_guestd_config("listen = \"unix:/tmp/g.sock\"", "guestd.toml");
  CHECK(unix_listener.peer_allowed(std::nullopt));
}

TEST_CASE("guestd config: each bad value names file, line and key") {
  struct Case {
    std::string text;
    std::string expected;  // the start of the message
  };
  const Case cases[] = {
      {"listen = \"vsock:ANY\"", "guestd.toml:1: listen: "},
      {"listen = \"http://x\"", "guestd.toml:1: listen: "},
      {"listen = \"fcvsock:/run/v.sock:5500\"", "guestd.toml:1: listen: "},
      {"listen = \"vsock:ANY:0\"", "guestd.toml:1: listen: "},
      {"listen = \"unix:relative\"", "guestd.toml:1: listen: "},
      {"listen = 5500", "guestd.toml:1: listen: must be a string"},
      {"\nallowed_ports = [0]", "guestd.toml:2: allowed_ports: 0 is out of range"},
      {"allowed_ports = [65536]", "guestd.toml:1: allowed_ports: 65536 is out of range"},
      {"allowed_ports = [\"5986\"]", "guestd.toml:1: allowed_ports: must be an array of integers"},
      {"allowed_ports = []", "guestd.toml:1: allowed_ports: is empty"},
      {"allowed_ports = 5986", "guestd.toml:1: allowed_ports: must be an array"},
      {"allowed_peer_cids = [-1]", "guestd.toml:1: allowed_peer_cids: -1 is out of range"},
      {"allowed_peer_cids = [4294967295]", "guestd.toml:1: allowed_peer_cids: 4294967295 is out"},
      {"allowed_peer_cids = []", "guestd.toml:1: allowed_peer_cids: is empty"},
      {"[agents]\n\"0\" = \"tcp:127.0.0.1:1\"", "guestd.toml:2: agents.0: must be a port number"},
      {"[agents]\n\"65536\" = \"tcp:127.0.0.1:1\"", "guestd.toml:2: agents.65536: must be a port"},
      {"[agents]\nwinrm = \"tcp:127.0.0.1:1\"", "guestd.toml:2: agents.winrm: must be a port"},
      {"[agents]\n\"5986\" = \"127.0.0.1:15986\"", "guestd.toml:2: agents.5986: "},
      {"[agents]\n\"5986\" = \"tcp:127.0.0.1:99999\"", "guestd.toml:2: agents.5986: "},
      {"[agents]\n\"5986\" = 15986", "guestd.toml:2: agents.5986: must be a string"},
      {"[agents]\n\"22\" = \"tcp:127.0.0.1:22\"", "guestd.toml:2: agents.22: port 22 is not in"},
      {"agents = 1", "guestd.toml:1: agents: must be a table"},
      {"[limits]\npreamble_timeout_ms = 0", "guestd.toml:2: limits.preamble_timeout_ms: 0 is out"},
      {"[limits]\n\npreamble_timeout_ms = \"5s\"",
       "guestd.toml:3: limits.preamble_timeout_ms: must be an integer"},
      {"[limits]\nagent_connect_timeout_ms = -5",
       "guestd.toml:2: limits.agent_connect_timeout_ms: -5 is out"},
      {"[limits]\nidle_timeout_ms = 1", "guestd.toml:2: limits.idle_timeout_ms: 1 is out"},
      {"[limits]\nmax_connections = 0", "guestd.toml:2: limits.max_connections: 0 is out"},
      {"[limits]\nshutdown_grace_ms = -1", "guestd.toml:2: limits.shutdown_grace_ms: -1 is out"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.text);
    std::string message = error_of(c.text);
    CHECK_MESSAGE(message.starts_with(c.expected), message);
  }
}

TEST_CASE("guestd config: a tcp listener off loopback is refused unless asked for twice") {
  for (std::string address :
       {"0.0.0.0", "192.0.2.7", "[::]", "[2001:db8::1]", "[::ffff:127.0.0.1]"}) {
    CAPTURE(address);
    const std::string uri = fmt::format("tcp:{}:5500", address);
    const std::string text = fmt::format("allowed_ports = [5986]\nlisten = \"{}\"", uri);
    std::string message = error_of(text);
    CHECK_MESSAGE(message.starts_with(fmt::format("guestd.toml:2: listen: {} is not a loopback "
                                                  "address",
                                                  uri)),
                  message);
    CHECK_MESSAGE(message.find("set listen_remote = true as well") != std::string::npos, message);

    GuestdConfig told_twice =
        parse_guestd_config(fmt::format("{}\nlisten_remote = true", text), "guestd.toml");
    CHECK(told_twice.listen.to_string() == uri);
    CHECK(told_twice.listen_remote);
  }
}

TEST_CASE("guestd config: loopback tcp and vsock listeners need no second word") {
  for (std::string uri : {"tcp:127.0.0.1:5500", "tcp:127.0.0.2:0", "tcp:[::1]:5500"}) {
    CAPTURE(uri);
    GuestdConfig c = parse_guestd_config(fmt::format("listen = \"{}\"", uri), "guestd.toml");
    CHECK(c.listen.to_string() == uri);
    CHECK_FALSE(c.listen_remote);
  }
  GuestdConfig vsock = parse_guestd_config("listen = \"vsock:ANY:5500\"", "guestd.toml");
  CHECK(vsock.listen.kind == transport::Kind::vsock);
  CHECK(vsock.peer_allowed(2));
  CHECK_FALSE(vsock.peer_allowed(3));
}

TEST_CASE("guestd config: a unix socket others may connect to is refused unless asked for twice") {
  struct Case {
    std::string mode;
    std::string who;
  };
  const Case cases[] = {
      {"0660", "group members"},
      {"0620", "group members"},
      {"0602", "other users"},
      {"0666", "group members and other users"},
      {"777", "group members and other users"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.mode);
    const std::string text =
        fmt::format("listen = \"unix:/run/vmgate/g.sock\"\n\nsocket_mode = \"{}\"", c.mode);
    std::string message = error_of(text);
    CHECK_MESSAGE(message.starts_with(fmt::format("guestd.toml:3: socket_mode: 0{} lets {} connect "
                                                  "to unix:/run/vmgate/g.sock",
                                                  c.mode.substr(c.mode.size() - 3), c.who)),
                  message);
    CHECK_MESSAGE(message.find("set listen_remote = true as well") != std::string::npos, message);

    GuestdConfig told_twice =
        parse_guestd_config(fmt::format("{}\nlisten_remote = true", text), "guestd.toml");
    CHECK(told_twice.socket_mode == std::stoul(c.mode, nullptr, 8));
  }
  // Read bits do not let anyone connect; only write does (unix(7)).
  for (std::string mode : {"0600", "0644", "0700", "0200"}) {
    CAPTURE(mode);
    GuestdConfig c = parse_guestd_config(
        fmt::format("listen = \"unix:/run/vmgate/g.sock\"\nsocket_mode = \"{}\"", mode),
        "guestd.toml");
    CHECK(c.socket_mode == std::stoul(mode, nullptr, 8));
    CHECK_FALSE(c.listen_remote);
  }
}

TEST_CASE("guestd config: socket_mode and listen_remote are refused where they mean nothing") {
  struct Case {
    std::string text;
    std::string expected;
  };
  const Case cases[] = {
      {"listen = \"unix:/g.sock\"\nsocket_mode = \"0o600\"",
       "guestd.toml:2: socket_mode: '0o600' is not a file mode"},
      {"listen = \"unix:/g.sock\"\nsocket_mode = \"0800\"",
       "guestd.toml:2: socket_mode: '0800' is not a file mode"},
      {"listen = \"unix:/g.sock\"\nsocket_mode = \"04600\"",
       "guestd.toml:2: socket_mode: '04600' is not a file mode"},
      {"listen = \"unix:/g.sock\"\nsocket_mode = \"60\"",
       "guestd.toml:2: socket_mode: '60' is not a file mode"},
      {"listen = \"unix:/g.sock\"\nsocket_mode = 600",
       "guestd.toml:2: socket_mode: must be a string"},
      {"listen = \"unix:/g.sock\"\nsocket_mode = \"0400\"",
       "guestd.toml:2: socket_mode: 0400 would not let even guestd's own user connect"},
      {"listen = \"unix:/g.sock\"\nlisten_remote = 1",
       "guestd.toml:2: listen_remote: must be true or false"},
      {"socket_mode = \"0600\"",
       "guestd.toml:1: socket_mode: applies to a unix: listener only, and listen is "
       "vsock:ANY:5500"},
      {"listen = \"tcp:127.0.0.1:5500\"\nsocket_mode = \"0600\"",
       "guestd.toml:2: socket_mode: applies to a unix: listener only"},
      {"listen = \"vsock:ANY:5500\"\nlisten_remote = true",
       "guestd.toml:2: listen_remote: a vsock listener admits peers by allowed_peer_cids"},
      {"listen = \"tcp:localhost:5500\"",
       "guestd.toml:1: listen: tcp:localhost:5500: a tcp listener binds a numeric address"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.text);
    std::string message = error_of(c.text);
    CHECK_MESSAGE(message.starts_with(c.expected), message);
  }
}

TEST_CASE("guestd config: an unknown key is refused with its place") {
  CHECK(error_of("listen = \"vsock:ANY:5500\"\nallowed_port = [5986]")
            .starts_with("guestd.toml:2: allowed_port: unknown key"));
  CHECK(error_of("[limits]\nidle_timeout = 5")
            .starts_with("guestd.toml:2: limits.idle_timeout: unknown key"));
  CHECK(error_of("[limit]\nidle_timeout_ms = 5").starts_with("guestd.toml:1: limit: unknown key"));
  CHECK(error_of("[limits.extra]\n").starts_with("guestd.toml:1: limits.extra: unknown key"));
}

TEST_CASE("guestd config: a syntax error names its line, and a missing file says so") {
  CHECK(error_of("listen = \"vsock:ANY:5500\"\nallowed_ports = [5986")
            .starts_with("guestd.toml:2: syntax error"));
  auto dir = std::filesystem::temp_directory_path();
  auto missing = (dir / "vmgate-guestd-config-test-missing.toml").string();
  std::filesystem::remove(missing);
  try {
    vmgate::guestd::load_guestd_config(missing);
    FAIL_CHECK("a missing file loaded");
  } catch (const ConfigError& e) {
    CHECK(std::string(e.what()).starts_with(fmt::format("{}: cannot read", missing)));
  }
}
