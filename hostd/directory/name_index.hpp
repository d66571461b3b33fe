// What every directory backend needs to index VMs by name and CID: names
// compared without regard to ASCII case (DNS names arrive case-folded), and
// multimap entries removed one VM at a time.
#pragma once

#include <algorithm>
#include <cctype>
#include <string>
#include <string_view>

namespace vmgate::hostd {

inline std::string to_lower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

inline bool equal_ignoring_case(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

// Removes the one entry of `key` that points at `uuid`.
template <class Map, class Key>
void erase_entry(Map& map, const Key& key, const std::string& uuid) {
  auto [first, last] = map.equal_range(key);
  for (auto it = first; it != last; ++it) {
    if (it->second == uuid) {
      map.erase(it);
      return;
    }
  }
}

}  // namespace vmgate::hostd
