// libFuzzer target for hostd's TOML config loader (hostd/config/hostd_config.hpp),
// as hostd runs it at start-up and on each reload: any text gives either a
// config or a config::ConfigError "FILE:LINE: KEY: reason" naming the file
// and one of its lines (config_error_shape.hpp), and nothing else escapes:
// no other exception type, no crash, no sanitizer report. Of a config that
// loads it checks what the daemon then relies on without checking again:
//   - authz compiles its [[acl]] rules without a refusal (AccessPolicy
//     throws std::invalid_argument on a pattern the loader should have
//     refused), and every rule has a unique, non-empty name that no
//     built-in decision takes;
//   - there is a listener, each with a name and a guest port (but one on
//     tcp port 0, any free port, which has none of its own);
//   - a host suffix is empty or starts with '.';
//   - the VM header is a header name.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <set>
#include <string>
#include <string_view>

#include "common/config_reader.hpp"
#include "hostd/authz/access_policy.hpp"
#include "hostd/config/hostd_config.hpp"
#include "tests/fuzz/config_error_shape.hpp"

using namespace vmgate::hostd;

namespace {

void check(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "hostd config property violated: %s\n", what);
  std::abort();
}

constexpr const char* file_name = "hostd.toml";

void check_config(const HostdConfig& c) {
  try {
    const AccessPolicy policy(c.acl);
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "hostd config property violated: %s\n", e.what());
    std::abort();
  }
  std::set<std::string_view> names;
  for (const AclRule& rule : c.acl) {
    check(!rule.name.empty(), "a rule has a name");
    check(rule.name != trusted_rule && rule.name != default_rule, "no rule takes a built-in name");
    check(names.insert(rule.name).second, "rule names are unique");
    check(!rule.identities.empty() && !rule.vms.empty(), "a rule names identities and VMs");
  }
  check(!c.listeners.empty(), "hostd listens somewhere");
  for (const ListenerConfig& l : c.listeners) {
    check(!l.name.empty(), "a listener has a name");
    // tcp port 0 (any free port) is the one listener that may have none.
    check(l.guest_port != 0 ||
              (l.address.kind == vmgate::transport::Kind::tcp && l.address.port == 0),
          "a listener has a guest port");
  }
  check(c.routing.host_suffix.empty() || c.routing.host_suffix.starts_with('.'),
        "a host suffix starts with '.'");
  check(!c.routing.vm_header.empty() &&
            c.routing.vm_header.find_first_of(" :\t\r\n") == std::string::npos,
        "the VM header is a header name");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    check_config(parse_hostd_config(text, file_name));
  } catch (const vmgate::config::ConfigError& e) {
    vmgate::fuzz::check_config_error(e.what(), file_name, text);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hostd config: not a ConfigError escaped: %s\n", e.what());
    std::abort();
  }
  return 0;
}
