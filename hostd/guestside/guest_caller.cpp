#include "hostd/guestside/guest_caller.hpp"

#include <cctype>

#include <fmt/format.h>

#include "hostd/channel/channel.hpp"

namespace vmgate::hostd {
namespace {

// Names go into socket paths: only what cannot leave the template's directory.
bool safe_in_path(std::string_view name) {
  if (name.empty() || name == "." || name == "..") return false;
  for (unsigned char c : name) {
    if (!(std::isalnum(c) || c == '-' || c == '_' || c == '.')) return false;
  }
  return true;
}

void replace_all(std::string& s, std::string_view key, std::string_view value) {
  for (auto pos = s.find(key); pos != std::string::npos; pos = s.find(key, pos + value.size()))
    s.replace(pos, key.size(), value);
}

}  // namespace

Caller caller_by_cid(std::uint32_t cid, const InboundConfig& inbound, const Directory& directory) {
  if (auto alias = inbound.peer_cids.find(cid); alias != inbound.peer_cids.end()) {
    auto found = directory.find(alias->second);
    if (found.status != LookupStatus::found)
      return unknown_caller(
          fmt::format("peer cid {} stands for vm {} (inbound.peer_cids), which is not defined", cid,
                      alias->second));
    return *found.vm;
  }
  if (auto vm = directory.by_cid(cid)) return *vm;
  return unknown_caller(fmt::format("no vm holds cid {}", cid));
}

Caller caller_by_uuid(const std::string& uuid, const Directory& directory) {
  auto found = directory.find(uuid);
  if (found.status != LookupStatus::found || found.vm->uuid != uuid)
    return unknown_caller(fmt::format("vm {} is no longer defined", uuid));
  return *found.vm;
}

Identity vm_identity(const VmRecord& vm) {
  Identity identity;
  identity.kind = Identity::Kind::vm;
  identity.name = vm.name;
  identity.vm_uuid = vm.uuid;
  return identity;
}

std::optional<std::string> per_vm_socket_path(const InboundConfig& inbound, const VmRecord& vm) {
  if (inbound.per_vm_template.empty() || !safe_in_path(vm.name)) return std::nullopt;
  std::string uri = inbound.per_vm_template;
  replace_all(uri, "{name}", vm.name);
  replace_all(uri, "{uuid}", vm.uuid);
  auto address = transport::parse(uri);
  if (!address || address->kind != transport::Kind::unix_socket) return std::nullopt;
  return address->path;
}

std::optional<std::string> hybrid_socket_path(const InboundConfig& inbound,
                                              const ChannelConfig& channel, const VmRecord& vm) {
  if (inbound.hybrid_port == 0) return std::nullopt;
  auto address = channel_address(channel, vm);
  if (!address || address->kind != transport::Kind::fcvsock) return std::nullopt;
  // Firecracker's convention (docs/vsock.md, "Guest-initiated connections").
  return fmt::format("{}_{}", address->path, inbound.hybrid_port);
}

}  // namespace vmgate::hostd
