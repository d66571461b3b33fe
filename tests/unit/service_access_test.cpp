// Which calling VMs may reach each host service: an entry written as an
// address is for every VM, a table's `vms` for those it names.
#include "hostd/authz/service_access.hpp"

#include <doctest/doctest.h>

#include "hostd/config/hostd_config.hpp"

using namespace vmgate::hostd;

namespace {

constexpr const char* kDb1 = "0f3c1a2b-0000-4000-8000-000000000001";

ServiceAccess access_of(const char* services) {
  return ServiceAccess(parse_hostd_config(services, "hostd.toml").host_services);
}

}  // namespace

TEST_CASE("a host service is for the VMs its entry names, and a bare address for every VM") {
  const ServiceAccess access = access_of(R"([host_services]
monitor = "tcp:127.0.0.1:9000"
[host_services.secrets]
address = "unix:/run/secrets.sock"
vms = ["db*", "0F3C1A2B-0000-4000-8000-000000000001"]
)");
  const VmRecord db2{.uuid = "0f3c1a2b-0000-4000-8000-000000000002", .name = "db2"};
  const VmRecord web1{.uuid = "0f3c1a2b-0000-4000-8000-000000000003", .name = "web1"};
  // By UUID, whatever the VM is called now.
  const VmRecord renamed{.uuid = kDb1, .name = "renamed"};
  CHECK(access.decide(web1, "monitor") == AccessDecision{true, "host_services.monitor"});
  CHECK(access.decide(db2, "secrets") == AccessDecision{true, "host_services.secrets"});
  CHECK(access.decide(renamed, "secrets") == AccessDecision{true, "host_services.secrets"});
  CHECK(access.decide(web1, "secrets") == AccessDecision{false, "host_services.secrets"});
  CHECK(access.decide(web1, "nosuch") == AccessDecision{false, "default"});
  CHECK(ServiceAccess().decide(web1, "monitor") == AccessDecision{false, "default"});
}
