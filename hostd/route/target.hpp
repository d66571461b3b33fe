// Targets: what a client names (docs/architecture.md, "Targets and groups").
//   vm1 | 6f1c...-uuid | host1/vm1 | group:web | net:default | web[01-05,09]
//   | a, b, !c  (a list; `!ITEM` excludes, and exclusion always wins)
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <boost/system/result.hpp>

namespace vmgate::hostd {

struct Target {
  // range: `value` is the pattern as written ("web[01-05,09]"), expanded
  // only once its `count` is known to be within the limit (expand_range).
  enum class Kind { vm, host_vm, group, network, range, list };
  Kind kind = Kind::vm;
  bool exclude = false;         // written `!ITEM`, in a list or alone
  std::uint64_t count = 1;      // range: how many names it expands to (saturating)
  std::string value;            // vm name or UUID; group or network name; range pattern
  std::string host;             // host_vm
  std::vector<Target> members;  // list

  bool single_vm() const { return kind == Kind::vm && !exclude; }
  std::string to_string() const;
};

// Validates names before use: printable ASCII without space, '/', ',' or
// quotes, at most 253 bytes. Errors are one-line reasons for a 400. A range
// is checked and counted, not expanded: its size is compared with
// fanout.max_targets by whoever expands it (directory/target_resolver.hpp).
boost::system::result<Target, std::string> parse_target(std::string_view text);
bool valid_vm_name(std::string_view name);
bool looks_like_uuid(std::string_view text);

// The names a range target stands for, in order, zero padding kept as the
// lower bound of each span writes it (ClusterShell: `[08-10]` is 08 09 10).
// Refused, without expanding, when `target.count` exceeds `limit`.
boost::system::result<std::vector<std::string>, std::string> expand_range(const Target& target,
                                                                          std::uint64_t limit);

// "vm1:5986" (CONNECT authority, absolute-form authority) → name and port.
// (port first: C++20 would otherwise let a std::string construct an Authority,
// making result<Authority, std::string> ambiguous.)
struct Authority {
  std::uint16_t port = 0;  // 0: none given
  std::string host;
};
boost::system::result<Authority, std::string> parse_authority(std::string_view text);

}  // namespace vmgate::hostd
