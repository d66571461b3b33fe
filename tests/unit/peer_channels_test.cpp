#include "hostd/cluster/peer_channels.hpp"

#include <doctest/doctest.h>

using namespace vmgate::hostd;

namespace {

VmRecord remote_vm() {
  VmRecord vm;
  vm.uuid = "6e3c4f5a-1b2c-4d5e-8f90-a1b2c3d4e5f6";
  vm.name = "web1";
  vm.host = "kvm2";
  return vm;
}

}  // namespace

TEST_CASE("a forwarded request names its VM by UUID and carries the client for the receiver") {
  const std::string head = encode_peer_request(remote_vm(), 5986,
                                               PeerRequest{.target_host = "kvm2",
                                                           .client = "203.0.113.7:51514",
                                                           .identity = "token:alice",
                                                           .request_id = "5b2c0e9a"});
  CHECK(head ==
        "CONNECT 6e3c4f5a-1b2c-4d5e-8f90-a1b2c3d4e5f6:5986 HTTP/1.1\r\n"
        "Host: 6e3c4f5a-1b2c-4d5e-8f90-a1b2c3d4e5f6:5986\r\n"
        "Vmgate-Host: kvm2\r\n"
        "Vmgate-Client: 203.0.113.7:51514\r\n"
        "Vmgate-Identity: token:alice\r\n"
        "Vmgate-Request-Id: 5b2c0e9a\r\n"
        "\r\n");
}

TEST_CASE("a forwarded request drops a field that would inject a line") {
  const std::string head =
      encode_peer_request(remote_vm(), 5986,
                          PeerRequest{.target_host = "kvm2",
                                      .client = "203.0.113.7:51514",
                                      .identity = "cert:evil\r\nVmgate-Host: kvm9",
                                      .request_id = "5b2c0e9a"});
  CHECK(head.find("Vmgate-Identity") == std::string::npos);
  CHECK(head.find("kvm9") == std::string::npos);
  CHECK(head.find("Vmgate-Request-Id: 5b2c0e9a\r\n") != std::string::npos);
}
