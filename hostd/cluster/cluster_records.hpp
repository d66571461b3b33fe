// What a hostd keeps in etcd in cluster mode, and how it is spelt
// (docs/architecture.md, "Cluster"). Pure: no I/O, so the layout and the
// claim rule are tested on their own.
//
//   /vmgate/v1/hosts/NAME   {"name","peer_address","version",
//                            "client_addresses"}                       host's lease
//   /vmgate/v1/vms/UUID     {"uuid","name","state","groups","networks",
//                            "host","event":{"time_ns","sequence"}}     claiming host's lease
//
// Both kinds are written with the writing host's lease, so when a host dies
// its records go with the lease's expiry. A VM's key has one holder; during
// a migration two hosts may both hold the VM in libvirt, and claim_wins()
// decides which of them the key names.
#pragma once

#include <compare>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <boost/system/result.hpp>

#include "hostd/directory/directory.hpp"

namespace vmgate::hostd {

inline constexpr std::string_view cluster_prefix = "/vmgate/v1/";
inline constexpr std::string_view cluster_hosts_prefix = "/vmgate/v1/hosts/";
inline constexpr std::string_view cluster_vms_prefix = "/vmgate/v1/vms/";

std::string cluster_host_key(std::string_view host);
std::string cluster_vm_key(std::string_view uuid);
// The end of etcd's range for every key that starts with `prefix`: the
// prefix with its last byte incremented (etcd's clientv3.GetPrefixRangeEnd).
std::string prefix_range_end(std::string_view prefix);

// What a key under cluster_prefix names.
struct ClusterKey {
  enum class Kind { host, vm, other };
  Kind kind = Kind::other;
  std::string id;  // the host name or the VM's UUID
};
ClusterKey parse_cluster_key(std::string_view key);

// Host names go into keys and certificates: letters, digits, '.', '-', '_',
// 1 to 253 bytes.
bool valid_host_name(std::string_view name);

// Why a value read from etcd is not a record hostd wrote.
struct RecordError {
  std::string reason;
};

struct HostRecord {
  std::string name;
  std::string peer_address;  // tcp:HOST:PORT of its peer listener
  std::string version;
  // The IPv4/IPv6 addresses clients reach this host's listeners on
  // (cluster.client_addresses): what other hosts' DNS answers for its VMs.
  // Empty from a host that publishes none (one older than the field).
  std::vector<std::string> client_addresses;
  friend bool operator==(const HostRecord&, const HostRecord&) = default;
};

// When the claiming host heard libvirt's last event for the VM: its wall
// clock (hosts compare claims, so a monotonic clock would not do) and a
// sequence that orders two events within one clock tick on that host.
struct EventStamp {
  std::int64_t time_ns = 0;
  std::uint64_t sequence = 0;
  friend auto operator<=>(const EventStamp&, const EventStamp&) = default;
};

// A host's claim on a VM: the VM as that host's libvirt has it (vm.host
// names the host) and when it last changed there.
struct VmClaim {
  VmRecord vm;
  EventStamp event;
  friend bool operator==(const VmClaim&, const VmClaim&) = default;
};

std::string encode_host_record(const HostRecord& host);
boost::system::result<HostRecord, RecordError> decode_host_record(std::string_view json);
// The CID stays out: it means nothing on another host.
std::string encode_vm_claim(const VmClaim& claim);
boost::system::result<VmClaim, RecordError> decode_vm_claim(std::string_view json);

// Whether `candidate` should replace `holder` as the VM's claim. A host
// always replaces its own claim. Between two hosts, a running VM beats one
// that is not (a migration's source, paused or shut off, never takes the key
// back from its destination, and a VM merely defined on a second host never
// takes it from the host that runs it); between two equally running ones,
// the newer libvirt event wins, and equal stamps go to the smaller host
// name, so that every host reaches the same answer.
bool claim_wins(const VmClaim& candidate, const VmClaim& holder);

std::optional<VmState> state_from_name(std::string_view name);

}  // namespace vmgate::hostd
