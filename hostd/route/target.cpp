#include "hostd/route/target.hpp"

#include <algorithm>
#include <charconv>
#include <limits>
#include <optional>

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

// One `[...]` of a range: spans of decimal numbers ("01-05,09"), each
// padded to the width its lower bound is written in when that has a
// leading zero.
struct Span {
  std::uint64_t low = 0;
  std::uint64_t high = 0;
  std::size_t width = 0;  // 0: no padding
};
// A range pattern: literal text between bracket groups.
struct RangePattern {
  std::vector<std::string_view> literals;  // one more than groups
  std::vector<std::vector<Span>> groups;
};

constexpr std::size_t max_digits = 18;  // below 2^63: no overflow in a span's size

bool valid_name_char(unsigned char c) {
  return c > ' ' && c < 0x7f && c != '/' && c != ',' && c != '"' && c != '\'' && c != '\\' &&
         c != '[' && c != ']';
}

std::optional<std::uint64_t> decimal(std::string_view digits) {
  if (digits.empty() || digits.size() > max_digits) return std::nullopt;
  std::uint64_t value = 0;
  auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (ec != std::errc() || p != digits.data() + digits.size()) return std::nullopt;
  return value;
}

std::uint64_t saturating_mul(std::uint64_t a, std::uint64_t b) {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a)
    return std::numeric_limits<std::uint64_t>::max();
  return a * b;
}

// Checks `text` as a range and counts its names without expanding it.
boost::system::result<RangePattern, std::string> parse_range(std::string_view text,
                                                             std::uint64_t* count) {
  RangePattern pattern;
  std::uint64_t total = 1;
  std::size_t longest = 0;  // the longest name it can expand to
  auto bad = [text](std::string_view why) {
    return fmt::format("invalid range '{}': {}", text.substr(0, 64), why);
  };
  std::string_view rest = text;
  for (;;) {
    const auto open = rest.find('[');
    std::string_view literal = rest.substr(0, open);
    for (unsigned char c : literal)
      if (c == ']') {
        return bad("']' without '['");
      } else if (!valid_name_char(c))
        return bad("names hold printable characters, no spaces, '/' or quotes");
    pattern.literals.push_back(literal);
    longest += literal.size();
    if (open == std::string_view::npos) break;
    const auto close = rest.find(']', open);
    if (close == std::string_view::npos) return bad("'[' without ']'");
    std::string_view spec = rest.substr(open + 1, close - open - 1);
    if (spec.empty()) return bad("empty '[]'");
    std::vector<Span>& group = pattern.groups.emplace_back();
    std::uint64_t in_group = 0;
    std::size_t widest = 0;
    while (!spec.empty()) {
      const auto comma = spec.find(',');
      std::string_view item = spec.substr(0, comma);
      spec = comma == std::string_view::npos ? std::string_view{} : spec.substr(comma + 1);
      if (comma != std::string_view::npos && spec.empty()) return bad("empty item after ','");
      const auto dash = item.find('-');
      std::string_view low_text = item.substr(0, dash);
      std::string_view high_text =
          dash == std::string_view::npos ? low_text : item.substr(dash + 1);
      auto low = decimal(low_text);
      auto high = decimal(high_text);
      if (!low || !high)
        return bad(fmt::format("'{}' is not N or N-M (decimal, at most {} digits)",
                               item.substr(0, 40), max_digits));
      if (*low > *high) return bad(fmt::format("{} is above {}", low_text, high_text));
      Span span{*low, *high, low_text.size() > 1 && low_text.front() == '0' ? low_text.size() : 0};
      group.push_back(span);
      const std::uint64_t size = *high - *low + 1;
      in_group = size > std::numeric_limits<std::uint64_t>::max() - in_group
                     ? std::numeric_limits<std::uint64_t>::max()
                     : in_group + size;
      widest = std::max({widest, span.width, high_text.size()});
    }
    total = saturating_mul(total, in_group);
    longest += widest;
    rest = rest.substr(close + 1);
  }
  if (longest > max_name)
    return bad(fmt::format("its names would be longer than {} bytes", max_name));
  *count = total;
  return pattern;
}

boost::system::result<Target, std::string> parse_one(std::string_view text) {
  Target t;
  if (text.starts_with('!')) {
    t.exclude = true;
    text.remove_prefix(1);
    if (text.starts_with('!')) return std::string("'!!' in a target: exclude an item once");
  }
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
  } else if (text.find_first_of("[]") != std::string_view::npos) {
    auto pattern = parse_range(text, &t.count);
    if (!pattern) return pattern.error();
    t.kind = Target::Kind::range;
    t.value = std::string(text);
    return t;
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

std::string_view trimmed(std::string_view text) {
  while (!text.empty() && text.front() == ' ')
    text.remove_prefix(1);
  while (!text.empty() && text.back() == ' ')
    text.remove_suffix(1);
  return text;
}

// The next ',' outside a range's brackets: `web[01-05,09]` is one item.
std::size_t next_separator(std::string_view text) {
  int depth = 0;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '[') ++depth;
    if (text[i] == ']') --depth;
    if (text[i] == ',' && depth <= 0) return i;
  }
  return std::string_view::npos;
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
  if (exclude) {
    Target included = *this;
    included.exclude = false;
    return "!" + included.to_string();
  }
  switch (kind) {
    case Kind::vm:
      return value;
    case Kind::host_vm:
      return host + "/" + value;
    case Kind::group:
      return "group:" + value;
    case Kind::network:
      return "net:" + value;
    case Kind::range:
      return value;
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
  text = trimmed(text);
  if (text.empty()) return std::string("empty target");
  // The fast path: one name, as most requests carry, parsed without a list.
  if (text.find(',') == std::string_view::npos) return parse_one(text);
  Target list;
  list.kind = Target::Kind::list;
  while (!text.empty()) {
    auto comma = next_separator(text);
    auto parsed = parse_one(trimmed(text.substr(0, comma)));
    if (!parsed) return parsed.error();
    list.members.push_back(std::move(*parsed));
    if (list.members.size() > max_list)
      return fmt::format("more than {} targets in a list", max_list);
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
    if (trimmed(text).empty()) return std::string("empty item at the end of a target list");
  }
  // A range's own commas ("web[01-05,09]") make no list of one item.
  if (list.members.size() == 1) return std::move(list.members.front());
  return list;
}

boost::system::result<std::vector<std::string>, std::string> expand_range(const Target& target,
                                                                          std::uint64_t limit) {
  if (target.kind != Target::Kind::range) return std::vector<std::string>{target.value};
  // Counted when parsed; refused here before a single name is made.
  if (target.count > limit) {
    return fmt::format("range '{}' names {} VMs, more than fanout.max_targets ({})",
                       target.value.substr(0, 64), target.count, limit);
  }
  std::uint64_t count = 0;
  auto pattern = parse_range(target.value, &count);
  if (!pattern) return pattern.error();
  std::vector<std::string> names{std::string(pattern->literals.front())};
  for (std::size_t g = 0; g < pattern->groups.size(); ++g) {
    std::vector<std::string> next;
    for (const std::string& stem : names) {
      for (const Span& span : pattern->groups[g]) {
        for (std::uint64_t n = span.low; n <= span.high; ++n)
          next.push_back(fmt::format("{}{:0{}}{}", stem, n, span.width, pattern->literals[g + 1]));
      }
    }
    names = std::move(next);
  }
  return names;
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
