// Targets: what a client names (docs/architecture.md, "Naming the VM").
//   vm1 | 6f1c...-uuid | host1/vm1 | group:web | net:default | a,b,c
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <boost/system/result.hpp>

namespace vmgate::hostd {

struct Target {
  enum class Kind { vm, host_vm, group, network, list };
  Kind kind = Kind::vm;
  std::string value;            // vm name or UUID; group or network name
  std::string host;             // host_vm
  std::vector<Target> members;  // list

  bool single_vm() const { return kind == Kind::vm; }
  std::string to_string() const;
};

// Validates names before use: printable ASCII without space, '/', ',' or
// quotes, at most 253 bytes. Errors are one-line reasons for a 400.
boost::system::result<Target, std::string> parse_target(std::string_view text);
bool valid_vm_name(std::string_view name);
bool looks_like_uuid(std::string_view text);

// "vm1:5986" (CONNECT authority, absolute-form authority) → name and port.
// (port first: C++20 would otherwise let a std::string construct an Authority,
// making result<Authority, std::string> ambiguous.)
struct Authority {
  std::uint16_t port = 0;  // 0: none given
  std::string host;
};
boost::system::result<Authority, std::string> parse_authority(std::string_view text);

}  // namespace vmgate::hostd
