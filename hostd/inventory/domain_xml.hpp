// What vmgate reads from a libvirt domain's XML description.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace vmgate::hostd {

struct DomainFacts {
  std::string uuid;                   // /domain/uuid, as written
  bool vsock = false;                 // /domain/devices/vsock, with a CID or not
  std::optional<std::uint32_t> cid;   // /domain/devices/vsock/cid/@address
  std::vector<std::string> networks;  // /domain/devices/interface[@type='network']/source/@network
  std::vector<std::string> groups;    // /domain/metadata/vmgate:groups/group (urn:vmgate:1)
};

// Never throws; malformed or missing parts leave the field empty.
DomainFacts parse_domain_xml(std::string_view xml);

}  // namespace vmgate::hostd
