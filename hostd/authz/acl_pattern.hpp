// The patterns of one ACL rule (docs/architecture.md, "Authorize"), parsed
// once when the config is read so that matching a request costs a few
// string compares and no allocation:
//
//   identities  cert:GLOB      any of a client certificate's SANs or its CN
//               token:GLOB     the name of the token a client presented
//               cidr:NETWORK   the address of a client known by its source
//               vm:GLOB        a guest calling from that VM (its name, or its UUID)
//   vms         GLOB           a VM's libvirt name ("web*", "*")
//               UUID           one VM, whatever its name
//
// A glob's only wildcard is `*`, any run of characters. Certificate names
// are DNS names and URIs, whose case does not matter (RFC 4343), so cert:
// globs ignore ASCII case; token names and VM names are matched as written.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include <boost/system/result.hpp>

#include "hostd/directory/directory.hpp"
#include "hostd/identity/identity.hpp"

namespace vmgate::hostd {

// Whether `text` matches `glob`, whose `*` matches any run of characters.
bool glob_match(std::string_view glob, std::string_view text, bool ignore_case = false);

// An address block: v4 addresses are kept v4-mapped, so that one compare
// serves both families and a v4 client on a dual-stack socket
// (::ffff:10.1.2.3) matches cidr:10.0.0.0/8.
struct Network {
  std::array<unsigned char, 16> bytes{};
  unsigned prefix = 0;  // of the 128 bits

  bool contains(const boost::asio::ip::address& address) const;
};

// "10.0.0.0/8", "2001:db8::/32": a reason when it is not one, or when it
// has bits set past its prefix (a typo more often than not).
boost::system::result<Network, std::string> parse_network(std::string_view text);

struct IdentityPattern {
  enum class Kind { certificate, token, cidr, vm };
  Kind kind = Kind::token;
  std::string glob;  // certificate, token, vm
  Network network;   // cidr

  bool matches(const Identity& identity) const;
};

// One entry of a rule's `identities`; the reason names what is accepted.
boost::system::result<IdentityPattern, std::string> parse_identity_pattern(std::string_view text);

struct VmPattern {
  bool uuid = false;  // `text` is a lower-case UUID, else a name glob
  std::string text;

  bool matches(const VmRecord& vm) const;
};

// One entry of a rule's `vms`.
boost::system::result<VmPattern, std::string> parse_vm_pattern(std::string_view text);

}  // namespace vmgate::hostd
