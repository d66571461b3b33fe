#include "hostd/directory/group_membership.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/log.hpp"
#include "hostd/authz/acl_pattern.hpp"
#include "hostd/route/target.hpp"

namespace vmgate::hostd {
namespace {

using json = nlohmann::json;

// The state file's mark and version: a file without it is not ours.
constexpr std::string_view format_key = "vmgate_directory_state";
constexpr int format_version = 1;

std::string to_lower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

bool valid_group(std::string_view group) {
  auto parsed = parse_target(group);
  return parsed && parsed->kind == Target::Kind::vm && !parsed->exclude;
}

boost::system::result<std::vector<GuestJoin>, std::string> parse_state(const std::string& text) {
  json doc = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return std::string("not JSON");
  if (!doc.is_object() || !doc.contains(format_key))
    return fmt::format("no \"{}\" key: not a vmgate directory state file", format_key);
  if (doc[format_key] != format_version)
    return fmt::format("\"{}\" is {}, this hostd reads {}", format_key, doc[format_key].dump(),
                       format_version);
  if (!doc.contains("joins") || !doc["joins"].is_array())
    return std::string("\"joins\" is not a list");
  std::vector<GuestJoin> joins;
  for (const json& entry : doc["joins"]) {
    if (!entry.is_object() || !entry.contains("uuid") || !entry["uuid"].is_string() ||
        !entry.contains("group") || !entry["group"].is_string())
      return fmt::format("join {} is not {{\"uuid\": ..., \"group\": ...}}", joins.size());
    GuestJoin join{to_lower(entry["uuid"].get<std::string>()), entry["group"].get<std::string>()};
    if (!looks_like_uuid(join.uuid))
      return fmt::format("join {}: uuid is not a UUID", joins.size());
    if (!valid_group(join.group))
      return fmt::format("join {}: group is not a group name", joins.size());
    if (std::ranges::find(joins, join) == joins.end()) joins.push_back(std::move(join));
  }
  return joins;
}

std::string errno_text(int error) {
  return std::strerror(error);
}

}  // namespace

boost::system::result<std::unique_ptr<GroupMembership>, std::string> GroupMembership::open(
    std::string state_file, std::vector<JoinableGroup> joinable) {
  std::unique_ptr<GroupMembership> store(
      new GroupMembership(std::move(state_file), std::move(joinable)));
  std::ifstream in(store->state_file_, std::ios::binary);
  if (!in) {
    if (errno == ENOENT) return store;
    return fmt::format("{}: cannot read the directory state file: {}", store->state_file_,
                       errno_text(errno));
  }
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) return fmt::format("{}: cannot read the directory state file", store->state_file_);
  auto joins = parse_state(text.str());
  if (!joins)
    return fmt::format(
        "{}: corrupt directory state file: {} (move it aside to start with no "
        "guest joins)",
        store->state_file_, joins.error());
  store->joins_ = std::move(*joins);
  return store;
}

GroupMembership::~GroupMembership() {
  unfollow();
}

void GroupMembership::unfollow() {
  if (followed_) followed_->unobserve(observer_);
  followed_ = nullptr;
}

boost::system::result<bool, MembershipRefusal> GroupMembership::join(const VmRecord& vm,
                                                                     std::string_view group) {
  using Kind = MembershipRefusal::Kind;
  if (!valid_group(group)) return MembershipRefusal{Kind::bad_group, "not a group name"};
  auto rule =
      std::ranges::find_if(joinable_, [group](const JoinableGroup& g) { return g.name == group; });
  if (rule == joinable_.end())
    return MembershipRefusal{
        Kind::not_joinable,
        fmt::format("group '{}' is not joinable ([groups.joinable] does not list it)", group)};
  const bool allowed = std::ranges::any_of(rule->vms, [&vm](const std::string& text) {
    auto pattern = parse_vm_pattern(text);  // checked when the config was read
    return pattern && pattern->matches(vm);
  });
  if (!allowed)
    return MembershipRefusal{
        Kind::not_allowed,
        fmt::format("vm {} may not join group '{}' ([groups.joinable] {} does not match it)",
                    vm.name, group, group)};
  GuestJoin entry{to_lower(vm.uuid), std::string(group)};
  std::lock_guard lock(mutex_);
  if (std::ranges::find(joins_, entry) != joins_.end()) return false;
  std::vector<GuestJoin> next = joins_;
  next.push_back(std::move(entry));
  if (auto saved = save(next); !saved)
    return MembershipRefusal{Kind::not_recorded, std::move(saved.error())};
  joins_ = std::move(next);
  return true;
}

boost::system::result<bool, MembershipRefusal> GroupMembership::leave(std::string_view vm_uuid,
                                                                      std::string_view group) {
  GuestJoin entry{to_lower(vm_uuid), std::string(group)};
  std::lock_guard lock(mutex_);
  std::vector<GuestJoin> next = joins_;
  if (std::erase(next, entry) == 0) return false;
  if (auto saved = save(next); !saved)
    return MembershipRefusal{MembershipRefusal::Kind::not_recorded, std::move(saved.error())};
  joins_ = std::move(next);
  return true;
}

void GroupMembership::forget(std::string_view vm_uuid) {
  const std::string uuid = to_lower(vm_uuid);
  std::lock_guard lock(mutex_);
  std::vector<GuestJoin> next = joins_;
  if (std::erase_if(next, [&uuid](const GuestJoin& j) { return j.uuid == uuid; }) == 0) return;
  // Forgotten in memory even when the file cannot be written: the VM is
  // gone either way, and the next change writes the file again.
  if (auto saved = save(next); !saved)
    log::warn("directory_state_not_saved").kv("file", state_file_).kv("reason", saved.error());
  joins_ = std::move(next);
}

std::vector<GuestJoin> GroupMembership::joins() const {
  std::lock_guard lock(mutex_);
  return joins_;
}

void GroupMembership::follow(Directory& directory) {
  followed_ = &directory;
  observer_ = directory.observe(
      [this, &directory](const DirectoryChange& change) { forget_unknown(directory, change); });
}

void GroupMembership::forget_unknown(const Directory& directory, const DirectoryChange& change) {
  std::vector<std::string> uuids;
  if (change.everything) {
    for (const GuestJoin& join : joins())
      uuids.push_back(join.uuid);
  } else {
    uuids = change.uuids;
  }
  std::ranges::sort(uuids);
  uuids.erase(std::unique(uuids.begin(), uuids.end()), uuids.end());
  for (const std::string& uuid : uuids)
    if (directory.find(uuid).status == LookupStatus::not_found) forget(uuid);
}

boost::system::result<void, std::string> GroupMembership::save(
    const std::vector<GuestJoin>& joins) const {
  json doc = {{format_key, format_version}, {"joins", json::array()}};
  for (const GuestJoin& join : joins)
    doc["joins"].push_back({{"uuid", join.uuid}, {"group", join.group}});
  const std::string text = doc.dump(2) + "\n";
  // Written beside the file and renamed over it (rename(2) is atomic), each
  // fsynced first, so a crash leaves the old file or the new, never half.
  const std::string temp = state_file_ + ".tmp";
  auto fail = [&](std::string_view step) {
    return fmt::format("{}: {}: {}", step == "rename" ? state_file_ : temp, step,
                       errno_text(errno));
  };
  int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return fail("open");
  std::size_t written = 0;
  while (written < text.size()) {
    ssize_t n = ::write(fd, text.data() + written, text.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      auto reason = fail("write");
      ::close(fd);
      ::unlink(temp.c_str());
      return reason;
    }
    written += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) {
    auto reason = fail("fsync");
    ::close(fd);
    ::unlink(temp.c_str());
    return reason;
  }
  ::close(fd);
  if (::rename(temp.c_str(), state_file_.c_str()) != 0) {
    auto reason = fail("rename");
    ::unlink(temp.c_str());
    return reason;
  }
  // The rename itself is durable once the directory is.
  const auto slash = state_file_.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : state_file_.substr(0, slash + 1);
  if (int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
  return {};
}

}  // namespace vmgate::hostd
