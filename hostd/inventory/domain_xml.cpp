#include "hostd/inventory/domain_xml.hpp"

#include <algorithm>
#include <charconv>
#include <cstring>

#include <pugixml.hpp>

namespace vmgate::hostd {
namespace {

constexpr const char* kVmgateNamespace = "urn:vmgate:1";

std::string_view local_name(const pugi::xml_node& node) {
  std::string_view name = node.name();
  auto colon = name.find(':');
  return colon == std::string_view::npos ? name : name.substr(colon + 1);
}

// pugixml does not resolve namespaces: find the xmlns declaration in scope
// for the element's prefix, walking up from the element itself.
std::string_view namespace_uri(const pugi::xml_node& node) {
  std::string_view name = node.name();
  auto colon = name.find(':');
  std::string attribute = colon == std::string_view::npos
                              ? std::string("xmlns")
                              : "xmlns:" + std::string(name.substr(0, colon));
  for (auto scope = node; scope; scope = scope.parent()) {
    if (auto declared = scope.attribute(attribute.c_str())) return declared.value();
  }
  return {};
}

// /domain/devices/vsock/cid/@address. With auto='yes' libvirt only writes an
// address once one is assigned (QEMU at start), so no address means no CID.
std::optional<std::uint32_t> extract_cid(const pugi::xml_node& devices) {
  std::string_view address = devices.child("vsock").child("cid").attribute("address").value();
  std::uint32_t cid = 0;
  auto [end, ec] = std::from_chars(address.data(), address.data() + address.size(), cid);
  if (address.empty() || ec != std::errc() || end != address.data() + address.size()) {
    return std::nullopt;
  }
  return cid;
}

// /domain/devices/interface[@type='network']/source/@network
std::vector<std::string> extract_networks(const pugi::xml_node& devices) {
  std::vector<std::string> networks;
  for (auto interface : devices.children("interface")) {
    if (std::strcmp(interface.attribute("type").value(), "network") != 0) continue;
    std::string network = interface.child("source").attribute("network").value();
    if (network.empty()) continue;
    if (std::find(networks.begin(), networks.end(), network) == networks.end()) {
      networks.push_back(std::move(network));
    }
  }
  return networks;
}

// /domain/metadata/*[namespace-uri()='urn:vmgate:1' and local-name()='groups']/group,
// under whatever prefix the writer chose.
std::vector<std::string> extract_groups(const pugi::xml_node& metadata) {
  std::vector<std::string> groups;
  for (auto element : metadata.children()) {
    if (element.type() != pugi::node_element || local_name(element) != "groups" ||
        namespace_uri(element) != kVmgateNamespace) {
      continue;
    }
    for (auto group : element.children()) {
      if (group.type() != pugi::node_element || local_name(group) != "group") continue;
      std::string name = group.text().get();
      if (name.empty()) continue;
      if (std::find(groups.begin(), groups.end(), name) == groups.end()) {
        groups.push_back(std::move(name));
      }
    }
  }
  return groups;
}

}  // namespace

DomainFacts parse_domain_xml(std::string_view xml) {
  DomainFacts facts;
  try {
    pugi::xml_document document;
    if (!document.load_buffer(xml.data(), xml.size())) return facts;
    pugi::xml_node domain = document.child("domain");
    facts.uuid = domain.child("uuid").text().get();
    pugi::xml_node devices = domain.child("devices");
    facts.vsock = bool(devices.child("vsock"));
    facts.cid = extract_cid(devices);
    facts.networks = extract_networks(devices);
    facts.groups = extract_groups(domain.child("metadata"));
  } catch (...) {
    // Only allocation can fail here; an unreadable domain has no facts.
    return DomainFacts{};
  }
  return facts;
}

}  // namespace vmgate::hostd
