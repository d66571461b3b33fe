#include "hostd/route/target.hpp"

#include <charconv>

#include <fmt/format.h>

namespace vmgate::hostd {
namespace {

constexpr std::size_t max_name = 253;
constexpr std::size_t max_list = 256;

bool valid_simple_name(std::string_view name) {
  if (name.empty() || name.size() > max_name) return false;
  for (unsigned char c : name) {
    if (c <= ' ' || c >= 0x7f || c == '/' || c == ',' || c == '"' || c == '\'' || c == '\\')
      return false;
  }
  return true;
}

boost::system::result<Target, std::string> parse_one(std::string_view text) {
  Target t;
  if (text.starts_with("group:")) {
    t.kind = Target::Kind::group;
    t.value = std::string(text.substr(6));
  } else if (text.starts_with("net:")) {
    t.kind = Target::Kind::network;
    t.value = std::string(text.substr(4));
  } else if (auto slash = text.find('/'); slash != std::string_view::npos) {
    t.kind = Target::Kind::host_vm;
    t.host = std::string(text.substr(0, slash));
    t.value = std::string(text.substr(slash + 1));
    if (!valid_simple_name(t.host)) return fmt::format("invalid host name in target '{}'", text);
  } else {
    t.value = std::string(text);
  }
  if (!valid_simple_name(t.value)) {
    return t.value.empty() ? std::string("empty target")
                           : fmt::format(
                                 "invalid name in target (printable, no spaces, '/', ',' or "
                                 "quotes, at most {} bytes)",
                                 max_name);
  }
  return t;
}

}  // namespace

bool valid_vm_name(std::string_view name) {
  return valid_simple_name(name);
}

bool looks_like_uuid(std::string_view s) {
  if (s.size() != 36) return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (s[i] != '-') return false;
    } else if (!std::isxdigit(static_cast<unsigned char>(s[i]))) {
      return false;
    }
  }
  return true;
}

std::string Target::to_string() const {
  switch (kind) {
    case Kind::vm:
      return value;
    case Kind::host_vm:
      return host + "/" + value;
    case Kind::group:
      return "group:" + value;
    case Kind::network:
      return "net:" + value;
    case Kind::list: {
      std::string out;
      for (const auto& m : members) {
        if (!out.empty()) out += ',';
        out += m.to_string();
      }
      return out;
    }
  }
  return value;
}

boost::system::result<Target, std::string> parse_target(std::string_view text) {
  while (!text.empty() && text.front() == ' ')
    text.remove_prefix(1);
  while (!text.empty() && text.back() == ' ')
    text.remove_suffix(1);
  if (text.empty()) return std::string("empty target");
  if (text.find(',') == std::string_view::npos) return parse_one(text);
  Target list;
  list.kind = Target::Kind::list;
  while (!text.empty()) {
    auto comma = text.find(',');
    auto item = text.substr(0, comma);
    while (!item.empty() && item.front() == ' ')
      item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ')
      item.remove_suffix(1);
    auto parsed = parse_one(item);
    if (!parsed) return parsed.error();
    list.members.push_back(std::move(*parsed));
    if (list.members.size() > max_list)
      return fmt::format("more than {} targets in a list", max_list);
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
    if (text.empty()) return std::string("empty item at the end of a target list");
  }
  return list;
}

boost::system::result<Authority, std::string> parse_authority(std::string_view text) {
  Authority a;
  if (text.empty()) return std::string("empty authority");
  // Userinfo is deprecated in http URIs (RFC 9110 §4.2.4) and never meaningful here.
  if (text.find('@') != std::string_view::npos)
    return std::string("userinfo is not allowed in the target");
  auto colon = text.rfind(':');
  std::string_view host = text;
  if (colon != std::string_view::npos) {
    auto port_text = text.substr(colon + 1);
    host = text.substr(0, colon);
    unsigned port = 0;
    auto [p, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (port_text.empty() || ec != std::errc() || p != port_text.data() + port_text.size() ||
        port == 0 || port > 65535)
      return fmt::format("invalid port in '{}'", text);
    a.port = static_cast<std::uint16_t>(port);
  }
  if (host.empty()) return fmt::format("no VM name in '{}'", text);
  a.host = std::string(host);
  return a;
}

}  // namespace vmgate::hostd
