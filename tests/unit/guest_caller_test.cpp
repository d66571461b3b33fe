// Who a guest-started connection is from (hostd/guestside/guest_caller):
// the directory's CID index or a configured alias for a vsock peer, the VM a
// per-VM socket was made for, and the paths those sockets take.
#include "hostd/guestside/guest_caller.hpp"

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "hostd/config/hostd_config.hpp"
#include "hostd/directory/embedded_directory.hpp"

using namespace vmgate;
using namespace vmgate::hostd;

namespace {

constexpr const char* kWeb1 = "aaaaaaaa-0000-0000-0000-000000000001";
constexpr const char* kLab = "aaaaaaaa-0000-0000-0000-000000000002";

VmRecord vm(std::string name, std::string uuid, std::optional<std::uint32_t> cid) {
  VmRecord r;
  r.name = std::move(name);
  r.uuid = std::move(uuid);
  r.cid = cid;
  r.state = VmState::running;
  return r;
}

}  // namespace

TEST_CASE("a vsock peer is the VM that holds its CID, and follows a CID that changes") {
  EmbeddedDirectory directory;
  directory.replace_all({vm("web1", kWeb1, 3)});
  InboundConfig inbound;
  auto caller = caller_by_cid(3, inbound, directory);
  REQUIRE(caller.has_value());
  CHECK(caller->name == "web1");
  CHECK(vm_identity(*caller).to_string() == "vm:web1");
  CHECK(vm_identity(*caller).vm_uuid == kWeb1);

  directory.upsert(vm("web1", kWeb1, 7));  // restarted, or restored, with a new CID
  CHECK_FALSE(caller_by_cid(3, inbound, directory).has_value());
  REQUIRE(caller_by_cid(7, inbound, directory).has_value());
}

TEST_CASE("a vsock peer whose CID no VM holds is unknown, saying which CID") {
  EmbeddedDirectory directory;
  directory.replace_all({vm("web1", kWeb1, 3)});
  auto caller = caller_by_cid(9, InboundConfig{}, directory);
  REQUIRE_FALSE(caller.has_value());
  CHECK(caller.error() == "no vm holds cid 9");
}

TEST_CASE("a peer_cids alias names the VM before the CID index does") {
  EmbeddedDirectory directory;
  directory.replace_all({vm("web1", kWeb1, 1), vm("labvm", kLab, 5)});
  InboundConfig inbound;
  inbound.peer_cids[1] = "labvm";
  auto caller = caller_by_cid(1, inbound, directory);
  REQUIRE(caller.has_value());
  CHECK(caller->name == "labvm");

  inbound.peer_cids[1] = "gone";
  auto missing = caller_by_cid(1, inbound, directory);
  REQUIRE_FALSE(missing.has_value());
  CHECK(missing.error().find("stands for vm gone") != std::string::npos);
}

TEST_CASE("a per-VM socket's caller is its VM as the directory has it now") {
  EmbeddedDirectory directory;
  directory.replace_all({vm("web1", kWeb1, 3)});
  REQUIRE(caller_by_uuid(kWeb1, directory).has_value());
  directory.upsert(vm("web1-renamed", kWeb1, 3));
  CHECK(caller_by_uuid(kWeb1, directory)->name == "web1-renamed");
  directory.remove(kWeb1);
  auto gone = caller_by_uuid(kWeb1, directory);
  REQUIRE_FALSE(gone.has_value());
  CHECK(gone.error() == fmt::format("vm {} is no longer defined", kWeb1));
}

TEST_CASE("per-VM socket paths come from the template, and names that could leave it get none") {
  InboundConfig inbound;
  CHECK_FALSE(per_vm_socket_path(inbound, vm("web1", kWeb1, 3)));
  inbound.per_vm_template = "unix:/run/vmgate/in/{name}.sock";
  CHECK(per_vm_socket_path(inbound, vm("web1", kWeb1, 3)) == "/run/vmgate/in/web1.sock");
  CHECK_FALSE(per_vm_socket_path(inbound, vm("..", kWeb1, 3)));
  CHECK_FALSE(per_vm_socket_path(inbound, vm("a/b", kWeb1, 3)));
  inbound.per_vm_template = "unix:/run/in/{uuid}";
  CHECK(per_vm_socket_path(inbound, vm("web1", kWeb1, 3)) == fmt::format("/run/in/{}", kWeb1));
}

TEST_CASE("hybrid vsock listens on UDS_PATH_PORT of each VM whose channel is fcvsock") {
  InboundConfig inbound;
  ChannelConfig channel;
  channel.transport_template = "fcvsock:/srv/fc/{name}/v.sock:{port}";
  CHECK_FALSE(hybrid_socket_path(inbound, channel, vm("web1", kWeb1, 3)));
  inbound.hybrid_port = 5501;
  CHECK(hybrid_socket_path(inbound, channel, vm("web1", kWeb1, 3)) == "/srv/fc/web1/v.sock_5501");
  channel.transport_template = "vsock:{cid}:{port}";
  CHECK_FALSE(hybrid_socket_path(inbound, channel, vm("web1", kWeb1, 3)));
}
