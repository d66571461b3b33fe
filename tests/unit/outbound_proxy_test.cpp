// guestd's way out (guestd/outbound): what an app's request names, and the
// [outbound] config that keeps the proxy on loopback.
#include "guestd/outbound/outbound_proxy.hpp"

#include <doctest/doctest.h>

#include "common/config_reader.hpp"
#include "guestd/config/guestd_config.hpp"

using namespace vmgate;
using namespace vmgate::guestd;

namespace {

std::string error_of(const std::string& text) {
  try {
    parse_guestd_config(text, "guestd.toml");
  } catch (const config::ConfigError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("a name under the host suffix is a host service, any other a VM") {
  OutboundConfig config;
  CHECK(send_target(config, "monitor.host") == "host:monitor");
  CHECK(send_target(config, "Monitor.HOST") == "host:Monitor");
  CHECK(send_target(config, "web2") == "web2");
  CHECK(send_target(config, ".host") == ".host");
  config.host_suffix = ".svc.internal";
  CHECK(send_target(config, "monitor.host") == "monitor.host");
  CHECK(send_target(config, "monitor.svc.internal") == "host:monitor");
}

TEST_CASE("the outbound proxy is off by default and goes to the host's CID 2") {
  auto c = parse_guestd_config("", "guestd.toml");
  CHECK_FALSE(c.outbound.listen);
  CHECK(c.outbound.hostd.to_string() == "vsock:2:5501");
  c = parse_guestd_config("[outbound]\nlisten = \"tcp:127.0.0.1:5580\"\nhostd = \"unix:/x.sock\"\n",
                          "guestd.toml");
  REQUIRE(c.outbound.listen);
  CHECK(c.outbound.listen->port == 5580);
  CHECK(c.outbound.hostd.to_string() == "unix:/x.sock");
}

TEST_CASE("an outbound listener anyone but this VM's apps could reach is refused at load") {
  CHECK(error_of("\n[outbound]\nlisten = \"tcp:0.0.0.0:5580\"\n")
            .starts_with("guestd.toml:3: outbound.listen: tcp:0.0.0.0:5580 is not a loopback"));
  CHECK(error_of("[outbound]\nlisten = \"tcp:10.0.0.5:5580\"\n")
            .starts_with("guestd.toml:2: outbound.listen:"));
  CHECK(error_of("[outbound]\nlisten = \"vsock:ANY:5580\"\n")
            .starts_with("guestd.toml:2: outbound.listen:"));
  CHECK(error_of("[outbound]\nlisten = \"tcp:[::1]:5580\"\n").empty());
  CHECK(error_of("[outbound]\nhost_suffix = \"host\"\n")
            .starts_with("guestd.toml:2: outbound.host_suffix:"));
  CHECK(error_of("[outbound]\nlisen = \"tcp:127.0.0.1:1\"\n").find("lisen") != std::string::npos);
}
