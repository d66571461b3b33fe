// The cluster directory: every host's VMs, as etcd has them, with this
// host's own from its libvirt inventory (docs/architecture.md, "Cluster").
//
// Requests read only the cache held here, never etcd: a lookup costs what
// the embedded directory's does. Two writers feed it:
//   - this host's libvirt inventory, through DirectoryFeed, as for the
//     embedded directory; each change is stamped (EventStamp) and handed to
//     the publisher (ClusterSync), which claims the VM in etcd;
//   - ClusterSync, with what etcd holds: host records and other hosts'
//     claims, read whole (replace_remote) and then as the watch reports them.
// A UUID both here and claimed by another host (a migration in progress) is
// the winner of claim_wins() between the two claims.
//
// Safe to call from any thread, like every Directory.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "hostd/cluster/cluster_records.hpp"
#include "hostd/config/hostd_config.hpp"
#include "hostd/directory/directory.hpp"
#include "hostd/directory/target_resolver.hpp"
#include "hostd/directory/vm_index.hpp"

namespace vmgate::hostd {

class GroupMembership;

class ClusterDirectory final : public Directory, public DirectoryFeed {
 public:
  using Clock = std::function<std::int64_t()>;  // wall-clock nanoseconds
  explicit ClusterDirectory(std::string host, Clock clock = {});

  const std::string& host() const { return host_; }
  // Groups, ranges, networks and lists resolve as the embedded directory's
  // do (target_resolver.hpp), over every host's VMs. Set once, before any
  // request; unset, a group names nothing but VM metadata.
  void use_groups(const GroupsConfig& groups, const FanoutConfig& limits,
                  const GroupMembership* joins);

  // DirectoryFeed: this host's VMs.
  void replace_all(std::vector<VmRecord> vms) override;
  void upsert(VmRecord vm) override;
  void remove(std::string_view uuid) override;

  // Directory.
  Lookup find(std::string_view name_or_uuid) const override;
  Selection select(const Target& target) const override;
  Resolution resolve(const Target& target) const override;
  std::vector<GroupReport> groups() const override;
  std::optional<VmRecord> by_cid(std::uint32_t cid) const override;
  std::vector<VmRecord> snapshot() const override;
  std::size_t size() const override;
  ObserverId observe(Observer observer) override;
  void unobserve(ObserverId id) override;

  // What etcd holds. Claims and records of this host are ignored: its own
  // VMs come from libvirt.
  void replace_remote(std::vector<HostRecord> hosts, std::vector<VmClaim> claims);
  void put_remote_host(HostRecord host);
  void remove_remote_host(std::string_view name);
  void put_remote_claim(VmClaim claim);
  void remove_remote_claim(std::string_view uuid);

  std::optional<HostRecord> host_record(std::string_view name) const;
  // This host's claim on a VM it runs (nothing: libvirt no longer has it).
  std::optional<VmClaim> local_claim(std::string_view uuid) const;
  std::vector<std::string> local_uuids() const;
  // The other host's claim on a UUID, as last read from etcd.
  std::optional<VmClaim> remote_claim(std::string_view uuid) const;

  // Called (on the thread that changed it) with each local UUID that changed
  // or went, for the publisher; set once, before the inventory starts.
  void on_local_change(std::function<void(const std::string& uuid)> callback);

 private:
  EventStamp stamp();
  // Recomputes the routed record of `uuid` from the local and remote
  // claims; the lock is held.
  void refresh(const std::string& uuid);
  void rebuild();
  Selection select_on_host(const Target& target) const;
  std::vector<VmRecord> snapshot_by_name() const;
  GroupSources group_sources(const std::vector<GuestJoin>& joins) const;
  void local_changed(const std::vector<std::string>& uuids);

  const std::string host_;
  Clock clock_;
  const GroupsConfig* groups_ = nullptr;
  const FanoutConfig* limits_ = nullptr;
  const GroupMembership* joins_ = nullptr;
  mutable std::mutex mutex_;
  std::uint64_t sequence_ = 0;
  std::map<std::string, VmClaim, std::less<>> local_;   // by UUID
  std::map<std::string, VmClaim, std::less<>> remote_;  // by UUID, other hosts only
  std::map<std::string, HostRecord, std::less<>> hosts_;
  VmIndex index_;  // the routed record of each UUID

  std::function<void(const std::string&)> local_callback_;
  DirectoryObservers observers_;
};

}  // namespace vmgate::hostd
