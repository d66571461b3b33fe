#include "tools/vmgatectl/name_ranges.hpp"

#include <algorithm>
#include <cstdint>
#include <map>
#include <set>
#include <string_view>

#include <fmt/format.h>

namespace vmgate::ctl {
namespace {

// Longer runs of digits than this are names, not numbers (a UUID's tail).
constexpr std::size_t max_digits = 18;

struct Numbered {
  std::string prefix;
  std::size_t width = 0;  // zero padding kept: the digits' count when padded, else 0
  std::uint64_t number = 0;
};

bool numbered(std::string_view name, Numbered& out) {
  std::size_t digits = 0;
  while (digits < name.size() &&
         std::isdigit(static_cast<unsigned char>(name[name.size() - 1 - digits])))
    ++digits;
  if (digits == 0 || digits > max_digits) return false;
  const std::string_view number = name.substr(name.size() - digits);
  out.prefix = std::string(name.substr(0, name.size() - digits));
  out.width = number.size() > 1 && number.front() == '0' ? number.size() : 0;
  out.number = std::stoull(std::string(number));
  return true;
}

std::string number_text(std::uint64_t n, std::size_t width) {
  return fmt::format("{:0{}}", n, width);
}

}  // namespace

std::string fold_names(std::vector<std::string> names) {
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  // By prefix, then padding: web01 and web10 share a width (2), and web10,
  // unpadded, joins the padded web0N when their widths agree.
  std::map<std::pair<std::string, std::size_t>, std::set<std::uint64_t>> groups;
  std::set<std::string> plain;
  std::vector<Numbered> unpadded;
  for (const auto& name : names) {
    Numbered n;
    if (!numbered(name, n)) {
      plain.insert(name);
      continue;
    }
    if (n.width == 0) {
      unpadded.push_back(n);
      continue;
    }
    groups[{n.prefix, n.width}].insert(n.number);
  }
  for (const Numbered& n : unpadded) {
    const std::size_t digits = std::to_string(n.number).size();
    auto padded = groups.find({n.prefix, digits});
    if (padded != groups.end()) {
      padded->second.insert(n.number);
    } else {
      groups[{n.prefix, 0}].insert(n.number);
    }
  }
  std::vector<std::string> out(plain.begin(), plain.end());
  for (const auto& [key, numbers] : groups) {
    const auto& [prefix, width] = key;
    if (numbers.size() == 1) {
      out.push_back(prefix + number_text(*numbers.begin(), width));
      continue;
    }
    std::string spans;
    for (auto it = numbers.begin(); it != numbers.end();) {
      const std::uint64_t first = *it;
      std::uint64_t last = first;
      for (++it; it != numbers.end() && *it == last + 1; ++it)
        last = *it;
      if (!spans.empty()) spans += ',';
      spans += number_text(first, width);
      if (last != first) spans += "-" + number_text(last, width);
    }
    out.push_back(fmt::format("{}[{}]", prefix, spans));
  }
  std::sort(out.begin(), out.end());
  std::string joined;
  for (const auto& s : out)
    joined += (joined.empty() ? "" : ",") + s;
  return joined;
}

}  // namespace vmgate::ctl
