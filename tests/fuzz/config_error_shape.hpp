// What a config fuzzer checks of every config::ConfigError: the shape an
// operator reads at start-up and a reload reports, "FILE:LINE: KEY: reason",
// with FILE the name the text was loaded under and LINE one of its lines.
#pragma once

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <string_view>

namespace vmgate::fuzz {

inline void check_config_error(std::string_view message, std::string_view file,
                               std::string_view text) {
  auto fail = [&](const char* what) {
    std::fprintf(stderr, "config error shape violated: %s\n%.*s\n", what,
                 static_cast<int>(message.size()), message.data());
    std::abort();
  };
  if (!message.starts_with(file) || message.substr(file.size()).front() != ':')
    fail("it starts with FILE:");
  std::string_view rest = message.substr(file.size() + 1);
  unsigned line = 0;
  auto [end, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), line);
  if (ec != std::errc() || end == rest.data()) fail("LINE follows FILE:");
  // toml++ counts lines at LF; the line after a last LF still is one.
  const auto lines = static_cast<unsigned>(std::count(text.begin(), text.end(), '\n')) + 1;
  if (line < 1 || line > lines) fail("LINE is a line of the text");
  rest = rest.substr(static_cast<std::size_t>(end - rest.data()));
  if (!rest.starts_with(": ")) fail("': ' follows LINE");
  rest.remove_prefix(2);
  const auto colon = rest.find(": ");
  if (colon == 0 || colon == std::string_view::npos) fail("KEY: follows LINE: ");
  if (colon + 2 >= rest.size()) fail("a reason follows KEY: ");
}

}  // namespace vmgate::fuzz
