#include <doctest/doctest.h>

#include "hostd/config/hostd_config.hpp"
#include "hostd/reload/running_config.hpp"

using vmgate::hostd::keep_restart_only;
using vmgate::hostd::parse_hostd_config;

TEST_CASE("a reload keeps the keys that need a restart at their running values and names them") {
  auto running = parse_hostd_config("[libvirt]\nuri = \"test:///a\"\n", "hostd.toml");
  auto next = parse_hostd_config(
      "[libvirt]\nuri = \"test:///b\"\n[channel]\nmax_per_vm = 700\n"
      "[limits]\nheader_bytes = 2048\n[[listener]]\naddress = \"tcp:127.0.0.1:1\"\n"
      "trusted = true\n",
      "hostd.toml");
  auto changed = keep_restart_only(running, next);
  CHECK(changed == std::vector<std::string>{"libvirt.uri", "channel.max_per_vm"});
  CHECK(next.libvirt.uri == "test:///a");
  CHECK(next.channel.max_per_vm == running.channel.max_per_vm);
  // What may change at runtime is the new file's.
  CHECK(next.limits.header_bytes == 2048);
}

TEST_CASE("a reload takes the new file's listeners and tokens file") {
  auto running = parse_hostd_config("", "hostd.toml");
  auto next = parse_hostd_config(
      "[auth]\ntokens_file = \"/etc/vmgate/tokens\"\n"
      "[[listener]]\naddress = \"tcp:127.0.0.1:1\"\nidentity = \"token\"\n",
      "hostd.toml");
  CHECK(keep_restart_only(running, next).empty());
  REQUIRE(next.listeners.size() == 1);
  CHECK(next.listeners[0].address.to_string() == "tcp:127.0.0.1:1");
  CHECK(next.auth.tokens_file == "/etc/vmgate/tokens");
}

TEST_CASE("a reload of the same file needs no restart") {
  const char* text = "[limits]\nstop_grace_ms = 500\n";
  auto running = parse_hostd_config(text, "hostd.toml");
  auto next = parse_hostd_config(text, "hostd.toml");
  CHECK(keep_restart_only(running, next).empty());
  CHECK(next.limits.stop_grace == std::chrono::milliseconds(500));
}
