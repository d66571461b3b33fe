#include "hostd/authz/acl_pattern.hpp"

#include <algorithm>
#include <charconv>

#include <fmt/format.h>

#include "hostd/route/target.hpp"

namespace vmgate::hostd {
namespace {

char fold(char c, bool ignore_case) {
  return ignore_case && c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}

std::array<unsigned char, 16> v6_bytes(const boost::asio::ip::address& address) {
  namespace ip = boost::asio::ip;
  if (address.is_v4()) return ip::make_address_v6(ip::v4_mapped, address.to_v4()).to_bytes();
  return address.to_v6().to_bytes();
}

}  // namespace

bool glob_match(std::string_view glob, std::string_view text, bool ignore_case) {
  // The last `*` seen and where in `text` it is tried to end: on a mismatch
  // it swallows one more character. Linear unless globs have many stars.
  std::size_t g = 0, t = 0;
  std::size_t star = std::string_view::npos, resume = 0;
  while (t < text.size()) {
    if (g < glob.size() && glob[g] == '*') {
      star = g++;
      resume = t;
    } else if (g < glob.size() && fold(glob[g], ignore_case) == fold(text[t], ignore_case)) {
      ++g;
      ++t;
    } else if (star != std::string_view::npos) {
      g = star + 1;
      t = ++resume;
    } else {
      return false;
    }
  }
  while (g < glob.size() && glob[g] == '*')
    ++g;
  return g == glob.size();
}

bool Network::contains(const boost::asio::ip::address& address) const {
  const auto a = v6_bytes(address);
  const unsigned whole = prefix / 8;
  if (!std::equal(bytes.begin(), bytes.begin() + whole, a.begin())) return false;
  const unsigned rest = prefix % 8;
  if (rest == 0) return true;
  const auto mask = static_cast<unsigned char>(0xFF << (8 - rest));
  return (a[whole] & mask) == bytes[whole];
}

boost::system::result<Network, std::string> parse_network(std::string_view text) {
  const auto slash = text.find('/');
  if (slash == std::string_view::npos)
    return fmt::format(
        "'{}' has no prefix length: write it as ADDRESS/BITS (10.0.0.0/8, "
        "2001:db8::/32, 10.1.2.3/32 for one host)",
        text);
  boost::system::error_code ec;
  const auto address = boost::asio::ip::make_address(std::string(text.substr(0, slash)), ec);
  if (ec) return fmt::format("'{}' is not an IPv4 or IPv6 address", text.substr(0, slash));
  const std::string_view bits = text.substr(slash + 1);
  const unsigned max_bits = address.is_v4() ? 32 : 128;
  unsigned length = 0;
  auto [end, parse_ec] = std::from_chars(bits.data(), bits.data() + bits.size(), length);
  if (parse_ec != std::errc() || end != bits.data() + bits.size() || bits.empty() ||
      length > max_bits)
    return fmt::format("'{}' is not a prefix length (0..{})", bits, max_bits);

  Network network;
  network.bytes = v6_bytes(address);
  network.prefix = length + (128 - max_bits);
  // Bits past the prefix: 10.1.2.3/8 is 10.0.0.0/8 with a host that means
  // something to whoever wrote it; say so rather than guess.
  Network masked = network;
  for (unsigned bit = network.prefix; bit < 128; ++bit)
    masked.bytes[bit / 8] &= static_cast<unsigned char>(~(0x80u >> (bit % 8)));
  if (masked.bytes != network.bytes)
    return fmt::format("'{}' has bits set past its /{} prefix", text, length);
  return network;
}

bool IdentityPattern::matches(const Identity& identity) const {
  switch (kind) {
    case Kind::certificate:
      if (identity.kind != Identity::Kind::certificate) return false;
      return std::any_of(identity.certificate_names.begin(), identity.certificate_names.end(),
                         [this](const std::string& name) { return glob_match(glob, name, true); });
    case Kind::token:
      return identity.kind == Identity::Kind::token && glob_match(glob, identity.name);
    case Kind::cidr:
      return identity.kind == Identity::Kind::source && identity.address &&
             network.contains(*identity.address);
    case Kind::vm:
      // A VM is named as destinations are: by name glob, or by UUID.
      return identity.kind == Identity::Kind::vm &&
             (glob_match(glob, identity.name) || glob == identity.vm_uuid);
  }
  return false;
}

boost::system::result<IdentityPattern, std::string> parse_identity_pattern(std::string_view text) {
  IdentityPattern pattern;
  const auto colon = text.find(':');
  const std::string_view kind = text.substr(0, colon);
  const std::string_view value =
      colon == std::string_view::npos ? std::string_view{} : text.substr(colon + 1);
  if (colon == std::string_view::npos || value.empty())
    return fmt::format("'{}' is not cert:GLOB, token:GLOB, cidr:NETWORK or vm:GLOB", text);
  if (kind == "cert") {
    pattern.kind = IdentityPattern::Kind::certificate;
    pattern.glob = value;
  } else if (kind == "token") {
    pattern.kind = IdentityPattern::Kind::token;
    pattern.glob = value;
  } else if (kind == "cidr") {
    pattern.kind = IdentityPattern::Kind::cidr;
    auto network = parse_network(value);
    if (!network) return network.error();
    pattern.network = *network;
  } else if (kind == "vm") {
    auto vm = parse_vm_pattern(value);
    if (!vm) return vm.error();
    pattern.kind = IdentityPattern::Kind::vm;
    pattern.glob = vm->text;
  } else if (kind == "trusted") {
    return fmt::format(
        "'{}': a client of a trusted listener may reach every VM whatever the "
        "rules say; ACL rules name cert:, token:, cidr: and vm: identities",
        text);
  } else {
    return fmt::format("'{}' is not cert:GLOB, token:GLOB, cidr:NETWORK or vm:GLOB", text);
  }
  return pattern;
}

bool VmPattern::matches(const VmRecord& vm) const {
  return uuid ? vm.uuid == text : glob_match(text, vm.name);
}

boost::system::result<VmPattern, std::string> parse_vm_pattern(std::string_view text) {
  if (text.starts_with("group:") || text.starts_with("net:"))
    return fmt::format(
        "'{}': groups and networks are not served by this version of hostd; "
        "name VMs by name glob or UUID",
        text);
  if (text.empty()) return std::string("an empty VM pattern matches nothing");
  VmPattern pattern;
  if (looks_like_uuid(text)) {
    pattern.uuid = true;
    for (char c : text)
      pattern.text += fold(c, true);
    return pattern;
  }
  // What a name may hold (route/target.hpp), and `*`.
  std::string name(text);
  std::replace(name.begin(), name.end(), '*', 'x');
  if (!valid_vm_name(name)) return fmt::format("'{}' is not a VM name glob or UUID", text);
  pattern.text = text;
  return pattern;
}

}  // namespace vmgate::hostd
