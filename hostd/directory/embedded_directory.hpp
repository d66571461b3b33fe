// The embedded directory: one host on its own, in process, fed by this
// host's libvirt inventory. Every VM it holds runs on `host`.
#pragma once

#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "hostd/config/hostd_config.hpp"
#include "hostd/directory/directory.hpp"
#include "hostd/directory/vm_index.hpp"

namespace vmgate::hostd {

class GroupMembership;

class EmbeddedDirectory final : public Directory, public DirectoryFeed {
 public:
  explicit EmbeddedDirectory(std::string host = "local") : host_(std::move(host)) {}

  void replace_all(std::vector<VmRecord> vms) override;
  void upsert(VmRecord vm) override;
  void remove(std::string_view uuid) override;

  // What groups are made of besides VM metadata: the config's static groups
  // and, when given, the guests' joins. Set once, before any request; both
  // outlive the directory's use. Unset, there are no config groups.
  void use_groups(const GroupsConfig& groups, const FanoutConfig& limits,
                  const hostd::GroupMembership* joins);

  Lookup find(std::string_view name_or_uuid) const override;
  Selection select(const Target& target) const override;
  Resolution resolve(const Target& target) const override;
  std::vector<GroupReport> groups() const override;
  std::optional<VmRecord> by_cid(std::uint32_t cid) const override;
  std::vector<VmRecord> snapshot() const override;
  std::size_t size() const override;

  ObserverId observe(Observer observer) override;
  void unobserve(ObserverId id) override;

 private:
  std::vector<VmRecord> snapshot_by_name() const;

  const std::string host_;
  const GroupsConfig no_groups_;
  const FanoutConfig default_limits_;
  const GroupsConfig* groups_ = &no_groups_;
  const FanoutConfig* limits_ = &default_limits_;
  const hostd::GroupMembership* joins_ = nullptr;
  mutable std::mutex mutex_;
  VmIndex index_;
  DirectoryObservers observers_;
};

}  // namespace vmgate::hostd
