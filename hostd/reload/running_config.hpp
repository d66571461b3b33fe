// The configuration hostd runs with, as one immutable snapshot
// (docs/architecture.md, "Stop and reload"). SIGHUP reads the file into a
// new snapshot and puts it in place of the old: a connection takes the
// snapshot current when it is accepted and keeps it to its end, so a
// reload changes what new connections get and never what an open one has.
// An old snapshot lives on while a connection still holds it.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "hostd/authz/access_policy.hpp"
#include "hostd/authz/service_access.hpp"
#include "hostd/config/hostd_config.hpp"

namespace vmgate::hostd {

// A config and the access policy compiled from its rules, which must change
// together: a connection never sees the rules of one file and the limits of
// another.
struct RunningConfig {
  // Throws std::invalid_argument for a rule AccessPolicy or ServiceAccess refuses.
  explicit RunningConfig(HostdConfig loaded)
      : config(std::move(loaded)), policy(config.acl), services(config.host_services) {}

  const HostdConfig config;
  const AccessPolicy policy;
  const ServiceAccess services;  // which VMs may reach each of [host_services]
};

// The snapshot that new connections and admin requests take. Replaced by
// the reload on the first I/O thread while the others read it.
class CurrentConfig {
 public:
  explicit CurrentConfig(std::shared_ptr<const RunningConfig> first) : current_(std::move(first)) {}

  std::shared_ptr<const RunningConfig> get() const { return current_.load(); }
  void set(std::shared_ptr<const RunningConfig> next) { current_.store(std::move(next)); }

 private:
  std::atomic<std::shared_ptr<const RunningConfig>> current_;
};

// What hostd cannot change while it runs: the libvirt connection, the
// number of I/O threads, the channel budget and pool (sized once, shared by
// every connection), the admin listener and the guests' listeners
// ([inbound]). (Listeners and the tokens file,
// path and contents, do change: Server::prepare_listeners, TokenFile.)
// `next`'s values for those are set back to `running`'s, and the keys that
// differed are returned ("libvirt.uri"), for the log to say they need a
// restart.
std::vector<std::string> keep_restart_only(const HostdConfig& running, HostdConfig& next);

}  // namespace vmgate::hostd
