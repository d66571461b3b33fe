// The directory: the one place that answers "where is this VM, and which VMs
// does this target name" (docs/architecture.md, "Resolve"). Callers see only
// this interface; the backend behind it is the embedded one fed by this
// host's libvirt inventory (embedded_directory.hpp), and a cluster backend
// fits beside it without touching them.
//
// Every member is safe to call from any thread: request coroutines on every
// I/O thread read it while the libvirt thread writes it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "hostd/route/target.hpp"

namespace vmgate::hostd {

// libvirt's virDomainState, reduced to what routing needs.
enum class VmState { running, paused, shut_off, crashed, suspended, other };
std::string_view state_name(VmState state);

struct VmRecord {
  std::string uuid;  // lower-case, with dashes
  std::string name;
  std::optional<std::uint32_t> cid;  // /domain/devices/vsock/cid/@address
  VmState state = VmState::other;
  std::vector<std::string> networks;  // libvirt networks of its interfaces
  std::vector<std::string> groups;    // <vmgate:groups> metadata
  std::string host;                   // the hostd that runs it (the directory fills it in)

  friend bool operator==(const VmRecord&, const VmRecord&) = default;
};

enum class LookupStatus { found, not_found, ambiguous };

struct Lookup {
  LookupStatus status = LookupStatus::not_found;
  std::optional<VmRecord> vm;           // when found
  std::vector<std::string> candidates;  // when ambiguous: "name (uuid)"
};

// What a target names. A single VM is a Lookup; group, network, range and
// list targets are resolved (target_resolver.hpp); HOST/NAME targets are
// `unsupported` until a cluster directory can answer them.
struct Selection {
  enum class Status { found, not_found, ambiguous, invalid, unsupported };
  Status status = Status::not_found;
  std::vector<VmRecord> vms;            // found: one or more destinations
  std::vector<std::string> candidates;  // ambiguous: "name (uuid)"
  std::string name;                     // the name that was not found or ambiguous
  // Set for targets that name many VMs: why not_found (404), invalid (400:
  // a cycle, too deep, too many) or ambiguous (409).
  std::string reason;
  std::vector<std::string> unknown;  // names the target lists that no VM has
};

// Which rule put a VM into a resolved target, for /v1/resolve and records.
struct Provenance {
  enum class Source { name, range, network, config, libvirt, guest_join };
  Source source = Source::name;
  std::string rule;              // "config group web", "libvirt metadata of web1", ...
  std::vector<std::string> via;  // the groups it came through, outermost first
};
std::string_view source_name(Provenance::Source source);

struct ResolvedVm {
  VmRecord vm;
  Provenance added_by;
};

struct ExcludedVm {
  VmRecord vm;
  std::string excluded_by;  // the `!ITEM` that removed it
  Provenance added_by;      // how the exclusion reached it
};

// A target resolved in full: what a Selection is made from, with the rule
// behind each VM.
struct Resolution {
  Selection::Status status = Selection::Status::not_found;
  std::string reason;
  std::vector<ResolvedVm> vms;  // found: de-duplicated, in the order first added
  std::vector<ExcludedVm> excluded;
  std::vector<std::string> unknown;
  std::vector<std::string> candidates;

  Selection selection() const;
};

// One group, as /v1/groups shows it.
struct GroupReport {
  std::string name;
  bool in_config = false;
  std::vector<std::string> config_members;  // as the config writes them
  std::vector<std::string> may_join;        // [groups.joinable]: empty when not joinable
  Resolution members;                       // group:NAME, resolved
};

// What changed, for observers: some VMs by UUID, or everything at once (a
// full resynchronisation).
struct DirectoryChange {
  bool everything = false;
  std::vector<std::string> uuids;
};

class Directory {
 public:
  using Observer = std::function<void(const DirectoryChange&)>;
  using ObserverId = std::uint64_t;

  virtual ~Directory() = default;

  // By libvirt name or UUID (any case). A name that equals another VM's UUID
  // is ambiguous rather than silently picking one. When nothing matches
  // exactly, a name is matched ignoring case (DNS names arrive case-folded);
  // several such matches are ambiguous too.
  virtual Lookup find(std::string_view name_or_uuid) const = 0;
  // Every VM a target names.
  virtual Selection select(const Target& target) const = 0;
  // The VM that holds a vsock CID, for traffic a guest starts: nothing when
  // no VM or more than one claims it (during a restore, briefly).
  virtual std::optional<VmRecord> by_cid(std::uint32_t cid) const = 0;
  // A target with the rule behind each VM it names; a single VM is found
  // as select() finds it.
  virtual Resolution resolve(const Target& target) const;
  // Every group something names: the config, a VM's metadata, a guest's join.
  virtual std::vector<GroupReport> groups() const { return {}; }
  virtual std::vector<VmRecord> snapshot() const = 0;
  virtual std::size_t size() const = 0;

  // Called after each change, on the thread that made it, outside any lock
  // of the directory's. An observer must be quick and must not call observe().
  virtual ObserverId observe(Observer observer) = 0;
  virtual void unobserve(ObserverId id) = 0;
};

// What the libvirt inventory writes: this host's VMs.
class DirectoryFeed {
 public:
  virtual ~DirectoryFeed() = default;
  // A full resynchronisation (start-up, libvirt reconnect).
  virtual void replace_all(std::vector<VmRecord> vms) = 0;
  virtual void upsert(VmRecord vm) = 0;
  virtual void remove(std::string_view uuid) = 0;
};

}  // namespace vmgate::hostd
