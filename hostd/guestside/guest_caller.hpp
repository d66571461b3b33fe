// Who is calling: the VM a guest-started connection comes from, known only
// from where it arrived (docs/architecture.md, "Guest-originated traffic").
// On the vsock listener that is the kernel's peer CID, looked up in the
// directory's CID index (which follows a CID that changes on restart or
// restore); on a per-VM unix socket it is the VM the socket was made for.
// Nothing the guest sends over the connection enters into it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <boost/system/result.hpp>

#include "hostd/config/hostd_config.hpp"
#include "hostd/directory/directory.hpp"
#include "hostd/identity/identity.hpp"

namespace vmgate::hostd {

// The calling VM, or why there is none. (Built with unknown_caller(): a
// VmRecord, an aggregate, would take a bare string too.)
using Caller = boost::system::result<VmRecord, std::string>;
inline Caller unknown_caller(std::string reason) {
  return Caller(boost::system::in_place_error, std::move(reason));
}

// The VM behind a vsock peer CID: a `peer_cids` entry of the config first
// (the loopback lab, where every peer is CID 1), else the directory's CID
// index. The reason, for the refusal and the log, names the CID.
Caller caller_by_cid(std::uint32_t cid, const InboundConfig& inbound, const Directory& directory);

// The VM a per-VM socket was made for, as the directory has it now (a VM
// undefined since is gone, one renamed has its new name).
Caller caller_by_uuid(const std::string& uuid, const Directory& directory);

// The identity ACL rules see for a calling VM: vm:NAME, with its UUID.
Identity vm_identity(const VmRecord& vm);

// The unix socket a VM's guest-started connections arrive on, from
// `per_vm_template` ({name}, {uuid}); nothing when the template is unset or
// the VM's name cannot be part of a path.
std::optional<std::string> per_vm_socket_path(const InboundConfig& inbound, const VmRecord& vm);

// Hybrid vsock: UDS_PATH_PORT for a VM whose channel transport is
// fcvsock:UDS_PATH:...; nothing when hybrid_port is 0 or the VM's channel is
// another kind.
std::optional<std::string> hybrid_socket_path(const InboundConfig& inbound,
                                              const ChannelConfig& channel, const VmRecord& vm);

}  // namespace vmgate::hostd
