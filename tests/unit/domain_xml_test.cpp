#include "hostd/inventory/domain_xml.hpp"

#include <doctest/doctest.h>

#include <string>
#include <vector>

namespace {

using vmgate::hostd::parse_domain_xml;

std::string domain_with_devices(const std::string& devices, const std::string& metadata = "") {
  return "<domain type='kvm'><name>web1</name>" + metadata + "<devices>" + devices +
         "</devices></domain>";
}

}  // namespace

TEST_CASE("domain XML gives the vsock CID from cid/@address") {
  auto facts = parse_domain_xml(
      domain_with_devices("<vsock model='virtio'><cid auto='no' address='42'/></vsock>"));
  CHECK(facts.cid == 42u);
}

TEST_CASE("domain XML gives the CID libvirt assigned when auto='yes'") {
  // A running QEMU domain's live XML.
  auto facts = parse_domain_xml(
      domain_with_devices("<vsock model='virtio'><cid auto='yes' address='1234'/></vsock>"));
  CHECK(facts.cid == 1234u);
}

TEST_CASE("domain XML without a vsock device has no CID") {
  auto facts = parse_domain_xml(
      domain_with_devices("<interface type='user'/><disk type='file'><source file='/x'/></disk>"));
  CHECK_FALSE(facts.cid.has_value());
}

TEST_CASE("domain XML with auto='yes' and no address yet has no CID") {
  auto facts =
      parse_domain_xml(domain_with_devices("<vsock model='virtio'><cid auto='yes'/></vsock>"));
  CHECK_FALSE(facts.cid.has_value());
}

TEST_CASE("domain XML with a CID that is not a 32-bit number has no CID") {
  for (const char* address : {"", "abc", "-3", "3x", "4294967296", " 3"}) {
    auto facts = parse_domain_xml(domain_with_devices(
        std::string("<vsock model='virtio'><cid address='") + address + "'/></vsock>"));
    CHECK_MESSAGE(!facts.cid.has_value(), "address='" << address << "'");
  }
}

TEST_CASE("malformed domain XML yields no facts and does not throw") {
  for (const char* xml :
       {"", "<domain", "not xml at all", "<domain><devices><vsock><cid address='3'/>",
        "<domain><devices></domain>"}) {
    auto facts = parse_domain_xml(xml);
    CHECK_FALSE(facts.cid.has_value());
    CHECK(facts.networks.empty());
    CHECK(facts.groups.empty());
  }
}

TEST_CASE("domain XML gives the libvirt networks of its interfaces") {
  auto facts = parse_domain_xml(
      domain_with_devices("<interface type='network'><source network='default'/></interface>"
                          "<interface type='bridge'><source bridge='br0'/></interface>"
                          "<interface type='network'><source network='backend'/></interface>"
                          "<interface type='network'><source network='default'/></interface>"
                          "<interface type='network'><source/></interface>"));
  CHECK(facts.networks == std::vector<std::string>{"default", "backend"});
}

TEST_CASE("domain XML groups are matched by namespace URI, whatever the prefix") {
  auto facts = parse_domain_xml(domain_with_devices(
      "",
      "<metadata><vg:groups xmlns:vg='urn:vmgate:1'><group>web</group><group>eu</group>"
      "</vg:groups></metadata>"));
  CHECK(facts.groups == std::vector<std::string>{"web", "eu"});

  facts = parse_domain_xml(domain_with_devices(
      "", "<metadata><groups xmlns='urn:vmgate:1'><group>web</group></groups></metadata>"));
  CHECK(facts.groups == std::vector<std::string>{"web"});

  facts = parse_domain_xml(domain_with_devices(
      "",
      "<metadata xmlns:vmgate='urn:vmgate:1'><vmgate:groups><vmgate:group>db</vmgate:group>"
      "</vmgate:groups></metadata>"));
  CHECK(facts.groups == std::vector<std::string>{"db"});
}

TEST_CASE("domain XML groups under another namespace are not vmgate's") {
  auto facts = parse_domain_xml(
      domain_with_devices("",
                          "<metadata><vmgate:groups xmlns:vmgate='urn:other:1'><group>web</group>"
                          "</vmgate:groups><groups><group>db</group></groups></metadata>"));
  CHECK(facts.groups.empty());
}

TEST_CASE("domain XML from libvirt gives CID, networks and groups together") {
  // As `virsh dumpxml` prints a domain defined with vmgate metadata.
  auto facts = parse_domain_xml(R"(<domain type='kvm' id='1'>
  <name>web1</name>
  <uuid>6e3c4f5a-1b2c-4d5e-8f90-a1b2c3d4e5f6</uuid>
  <metadata>
    <vmgate:groups xmlns:vmgate="urn:vmgate:1">
      <group>web</group>
    </vmgate:groups>
  </metadata>
  <devices>
    <interface type='network'>
      <mac address='52:54:00:12:34:56'/>
      <source network='default' portid='b0b5a8f0-5f1e-4a55-9a2f-0e8f8f1f1f1f' bridge='virbr0'/>
      <model type='virtio'/>
    </interface>
    <vsock model='virtio'>
      <cid auto='yes' address='3'/>
      <alias name='vsock0'/>
    </vsock>
  </devices>
</domain>)");
  CHECK(facts.uuid == "6e3c4f5a-1b2c-4d5e-8f90-a1b2c3d4e5f6");
  CHECK(facts.cid == 3u);
  CHECK(facts.networks == std::vector<std::string>{"default"});
  CHECK(facts.groups == std::vector<std::string>{"web"});
}

TEST_CASE("domain XML without a uuid element has an empty UUID") {
  CHECK(parse_domain_xml(domain_with_devices("")).uuid.empty());
}

TEST_CASE("domain XML says whether a vsock device is there, CID or not") {
  // What channels on demand ask before attaching: a device without its CID
  // yet must not get a second one.
  CHECK(parse_domain_xml(domain_with_devices("<vsock model='virtio'><cid auto='yes'/></vsock>"))
            .vsock);
  CHECK(parse_domain_xml(
            domain_with_devices("<vsock model='virtio'><cid auto='no' address='5'/></vsock>"))
            .vsock);
  CHECK_FALSE(parse_domain_xml(domain_with_devices("<interface type='user'/>")).vsock);
}
