// What `vmgatectl send` makes of a fan-out's NDJSON stream: progress while it
// comes, then the results collapsed (VMs that answered alike shown once, their
// names folded into ranges), the summary, and the exit status. Pure, so the
// CLI's output is tested without a hostd.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace vmgate::ctl {

// Exit statuses of `vmgatectl send`, as its --help documents them.
inline constexpr int send_all_answered = 0;  // every VM answered below 400
inline constexpr int send_some_failed = 1;   // at least one VM did not (or hostd refused it all)
inline constexpr int send_usage = 2;         // usage, or hostd could not be reached
inline constexpr int send_none_matched = 3;  // the target names no VM (hostd: 404)

class SendReport {
 public:
  explicit SendReport(std::size_t expected = 0) : expected_(expected) {}

  // One line of the stream: a VM's object, or the summary's.
  void add(const nlohmann::json& line);
  bool has_summary() const { return !summary_.is_null(); }

  // "done 12, failed 2, pending 6 of 20"
  std::string progress() const;
  // VMs with the same class, status and body as one entry, "web[01-17,19] (18): 200 hello";
  // the rest one by one; then the summary by class, naming each class's VMs.
  std::string collapsed() const;
  // What the script-facing --json prints: {"vms": [...], "summary": {...}}.
  nlohmann::json document() const;
  int exit_status() const;

 private:
  std::size_t expected_;
  std::vector<nlohmann::json> vms_;
  nlohmann::json summary_;
  std::size_t failed_ = 0;
};

}  // namespace vmgate::ctl
