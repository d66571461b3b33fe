#include "hostd/directory/target_resolver.hpp"

#include <algorithm>
#include <cctype>
#include <map>
#include <optional>
#include <set>
#include <string_view>
#include <unordered_set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "hostd/directory/name_index.hpp"

namespace vmgate::hostd {
namespace {

// VMs collected for one side of a target (included, or excluded), each once.
struct Collected {
  std::vector<std::pair<std::size_t, Provenance>> entries;  // index into the snapshot
  std::unordered_set<std::size_t> seen;

  void add(std::size_t index, Provenance provenance) {
    if (seen.insert(index).second) entries.emplace_back(index, std::move(provenance));
  }
};

// A refusal of the whole target.
struct Failure {
  Selection::Status status = Selection::Status::invalid;
  std::string reason;
  std::vector<std::string> candidates;
};

class Resolver {
 public:
  Resolver(const std::vector<VmRecord>& vms, const GroupSources& sources)
      : vms_(vms), sources_(sources) {
    for (std::size_t i = 0; i < vms_.size(); ++i) {
      by_name_.emplace(vms_[i].name, i);
      by_uuid_.emplace(to_lower(vms_[i].uuid), i);
    }
    for (const GroupDefinition& group : sources_.config.groups)
      definitions_.emplace(group.name, &group);
  }

  Resolution resolve(const Target& target) {
    std::vector<const Target*> included;
    std::vector<const Target*> excluded;
    auto sort_item = [&](const Target& item) {
      (item.exclude ? excluded : included).push_back(&item);
    };
    if (target.kind == Target::Kind::list) {
      for (const Target& member : target.members)
        sort_item(member);
    } else {
      sort_item(target);
    }
    // Ranges are counted before any is expanded: a client cannot make hostd
    // build a million names to refuse them afterwards.
    std::uint64_t named = 0;
    for (const Target* item : included)
      if (item->kind == Target::Kind::range) named += item->count;
    if (named > sources_.limits.max_targets)
      return refused({Selection::Status::invalid,
                      fmt::format("'{}' names more than fanout.max_targets ({}) VMs",
                                  target.to_string().substr(0, 128), sources_.limits.max_targets)});

    Collected in;
    std::vector<std::string> why_empty;
    for (const Target* item : included) {
      const std::size_t before = in.entries.size();
      std::string why;
      collect(*item, in, /*excluding=*/false, &why);
      if (failure_) return refused(std::move(*failure_));
      if (in.entries.size() == before && !why.empty()) why_empty.push_back(std::move(why));
    }
    Resolution out;
    // Exclusions name VMs that exist; an unknown one excludes nothing.
    std::map<std::size_t, std::pair<std::string, Provenance>> removed;
    for (const Target* item : excluded) {
      Collected ex;
      std::string ignored;
      collect(*item, ex, /*excluding=*/true, &ignored);
      if (failure_) return refused(std::move(*failure_));
      for (auto& [index, provenance] : ex.entries)
        removed.try_emplace(index, item->to_string(), std::move(provenance));
    }
    out.unknown = std::move(unknown_);
    for (auto& [index, provenance] : in.entries) {
      if (auto it = removed.find(index); it != removed.end()) {
        out.excluded.push_back({vms_[index], it->second.first, it->second.second});
      } else {
        out.vms.push_back({vms_[index], std::move(provenance)});
      }
    }
    if (out.vms.size() > sources_.limits.max_targets)
      return refused({Selection::Status::invalid,
                      fmt::format("'{}' resolves to {} VMs, more than fanout.max_targets ({})",
                                  target.to_string().substr(0, 128), out.vms.size(),
                                  sources_.limits.max_targets)});
    if (!out.vms.empty()) {
      out.status = Selection::Status::found;
      return out;
    }
    out.status = Selection::Status::not_found;
    if (included.empty()) {
      out.reason = "the target only excludes: name what to include as well";
    } else if (!out.excluded.empty()) {
      std::set<std::string> by;
      for (const ExcludedVm& vm : out.excluded)
        by.insert(vm.excluded_by);
      out.reason =
          fmt::format("every VM the target names is excluded (by {})", fmt::join(by, ", "));
    } else {
      out.reason = fmt::format("'{}' names no VM: {}", target.to_string().substr(0, 128),
                               fmt::join(why_empty, "; "));
    }
    return out;
  }

  // The groups anything names, with their members.
  std::vector<GroupReport> groups() {
    std::map<std::string, GroupReport> reports;
    auto report = [&reports](const std::string& name) -> GroupReport& {
      GroupReport& r = reports[name];
      r.name = name;
      return r;
    };
    for (const GroupDefinition& group : sources_.config.groups) {
      GroupReport& r = report(group.name);
      r.in_config = true;
      r.config_members = group.members;
    }
    for (const JoinableGroup& group : sources_.config.joinable)
      report(group.name).may_join = group.vms;
    for (const VmRecord& vm : vms_)
      for (const std::string& group : vm.groups)
        report(group);
    for (const GuestJoin& join : sources_.joins)
      report(join.group);
    std::vector<GroupReport> out;
    for (auto& [name, r] : reports) {
      Target target;
      target.kind = Target::Kind::group;
      target.value = name;
      Resolver fresh(vms_, sources_);
      r.members = fresh.resolve(target);
      out.push_back(std::move(r));
    }
    return out;
  }

 private:
  Resolution refused(Failure failure) {
    Resolution out;
    out.status = failure.status;
    out.reason = std::move(failure.reason);
    out.candidates = std::move(failure.candidates);
    return out;
  }

  // The VMs of one name: exactly, by UUID, then ignoring case (as
  // EmbeddedDirectory::find does).
  std::vector<std::size_t> lookup(const std::string& name) const {
    std::vector<std::size_t> found;
    auto [first, last] = by_name_.equal_range(name);
    for (auto it = first; it != last; ++it)
      found.push_back(it->second);
    if (auto it = by_uuid_.find(to_lower(name)); it != by_uuid_.end())
      if (std::ranges::find(found, it->second) == found.end()) found.push_back(it->second);
    if (found.empty()) {
      for (const auto& [vm_name, index] : by_name_)
        if (equal_ignoring_case(vm_name, name)) found.push_back(index);
    }
    return found;
  }

  void add_named(const std::string& name, Collected& out, bool excluding, Provenance provenance) {
    std::vector<std::size_t> found = lookup(name);
    if (found.empty()) {
      if (!excluding) unknown_.push_back(name);
      return;
    }
    // Excluding an ambiguous name excludes every VM it might mean.
    if (found.size() > 1 && !excluding) {
      Failure failure{Selection::Status::ambiguous, "", {}};
      std::ranges::sort(found,
                        [&](std::size_t a, std::size_t b) { return vms_[a].uuid < vms_[b].uuid; });
      for (std::size_t index : found)
        failure.candidates.push_back(vms_[index].name + " (" + vms_[index].uuid + ")");
      failure.reason = fmt::format("'{}' matches more than one VM: {}", name,
                                   fmt::join(failure.candidates, ", "));
      failure_ = std::move(failure);
      return;
    }
    for (std::size_t index : found)
      out.add(index, provenance);
  }

  std::string path_text(std::string_view last) const {
    std::string text;
    for (const std::string& group : path_)
      text += "group:" + group + " → ";
    return text + "group:" + std::string(last);
  }

  // Adds what `item` names to `out`; `why` says why it added nothing.
  void collect(const Target& item, Collected& out, bool excluding, std::string* why) {
    switch (item.kind) {
      case Target::Kind::vm:
        add_named(item.value, out, excluding,
                  Provenance{.source = Provenance::Source::name,
                             .rule = path_.empty() ? "named " + item.value
                                                   : "config group " + path_.back(),
                             .via = path_});
        if (why && !failure_) *why = fmt::format("no VM is named '{}'", item.value);
        return;
      case Target::Kind::range: {
        auto names = expand_range(item, sources_.limits.max_targets);
        if (!names) {
          failure_ = Failure{Selection::Status::invalid, names.error(), {}};
          return;
        }
        const std::string rule =
            path_.empty() ? "range " + item.value
                          : fmt::format("range {} of config group {}", item.value, path_.back());
        for (const std::string& name : *names) {
          // A range names VMs by name: exact, as a shell glob would.
          auto [first, last] = by_name_.equal_range(name);
          if (first == last && !excluding) unknown_.push_back(name);
          for (auto it = first; it != last; ++it)
            out.add(it->second,
                    Provenance{.source = Provenance::Source::range, .rule = rule, .via = path_});
        }
        if (why) *why = fmt::format("no VM has a name of the range {}", item.value);
        return;
      }
      case Target::Kind::network: {
        for (std::size_t i = 0; i < vms_.size(); ++i) {
          if (std::ranges::find(vms_[i].networks, item.value) != vms_[i].networks.end())
            out.add(i, Provenance{.source = Provenance::Source::network,
                                  .rule = "network " + item.value,
                                  .via = path_});
        }
        if (why)
          *why = fmt::format(
              "no VM is attached to network '{}' (unknown network, or none of its "
              "VMs is defined here)",
              item.value);
        return;
      }
      case Target::Kind::group:
        collect_group(item.value, out, excluding, why);
        return;
      case Target::Kind::host_vm:
        failure_ = Failure{Selection::Status::unsupported,
                           fmt::format("HOST/NAME targets ('{}') are not served by this hostd yet",
                                       item.to_string()),
                           {}};
        return;
      case Target::Kind::list:
        // parse_target makes no list of lists; config members are one item each.
        failure_ = Failure{Selection::Status::invalid, "a list inside a list", {}};
        return;
    }
  }

  void collect_group(const std::string& name, Collected& out, bool excluding, std::string* why) {
    if (std::ranges::find(path_, name) != path_.end()) {
      failure_ = Failure{Selection::Status::invalid,
                         "group cycle, refused rather than expanded in part: " + path_text(name),
                         {}};
      return;
    }
    if (path_.size() >= sources_.limits.max_group_depth) {
      failure_ = Failure{Selection::Status::invalid,
                         fmt::format("groups nest deeper than fanout.max_group_depth ({}): {}",
                                     sources_.limits.max_group_depth, path_text(name)),
                         {}};
      return;
    }
    auto definition = definitions_.find(name);
    bool known = definition != definitions_.end();
    const std::size_t before = out.entries.size();
    path_.push_back(name);
    if (known) {
      for (const std::string& member : definition->second->members) {
        auto parsed = parse_target(member);  // checked when the config was read
        if (!parsed) continue;
        collect(*parsed, out, excluding, nullptr);
        if (failure_) return;
      }
    }
    for (std::size_t i = 0; i < vms_.size(); ++i) {
      if (std::ranges::find(vms_[i].groups, name) == vms_[i].groups.end()) continue;
      known = true;
      out.add(i, Provenance{.source = Provenance::Source::libvirt,
                            .rule = "libvirt metadata of " + vms_[i].name,
                            .via = path_});
    }
    for (const GuestJoin& join : sources_.joins) {
      if (join.group != name) continue;
      known = true;
      if (auto it = by_uuid_.find(join.uuid); it != by_uuid_.end())
        out.add(it->second, Provenance{.source = Provenance::Source::guest_join,
                                       .rule = "guest join of " + vms_[it->second].name,
                                       .via = path_});
    }
    path_.pop_back();
    if (!why) return;
    if (!known) {
      *why = fmt::format(
          "group '{}' is not known (no [groups] entry, no VM's metadata and no guest join names "
          "it)",
          name);
    } else if (out.entries.size() == before) {
      *why = fmt::format("group '{}' is empty", name);
    }
  }

  const std::vector<VmRecord>& vms_;
  const GroupSources& sources_;
  std::multimap<std::string, std::size_t, std::less<>> by_name_;
  std::map<std::string, std::size_t, std::less<>> by_uuid_;
  std::map<std::string, const GroupDefinition*, std::less<>> definitions_;
  std::vector<std::string> path_;  // the groups being expanded, outermost first
  std::vector<std::string> unknown_;
  std::optional<Failure> failure_;
};

}  // namespace

Resolution resolve_target(const Target& target, const std::vector<VmRecord>& vms,
                          const GroupSources& sources) {
  return Resolver(vms, sources).resolve(target);
}

std::vector<GroupReport> report_groups(const std::vector<VmRecord>& vms,
                                       const GroupSources& sources) {
  return Resolver(vms, sources).groups();
}

}  // namespace vmgate::hostd
