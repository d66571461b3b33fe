// Logs: one line per event on stderr, `key=value` fields, journald-friendly.
#pragma once

#include <exception>
#include <string>
#include <string_view>

namespace vmgate::log {

enum class Level { debug, info, warn, error };

// Builds one log line; written with a single write(2) so lines from
// concurrent threads never interleave.
class Line {
 public:
  Line(Level level, std::string_view event);
  Line(const Line&) = delete;
  Line& operator=(const Line&) = delete;
  ~Line();

  // Values are quoted and escaped when they hold spaces, quotes or control
  // characters, so nothing a client sent can forge a field or a line.
  Line& kv(std::string_view key, std::string_view value);
  Line& kv(std::string_view key, const char* value) { return kv(key, std::string_view(value)); }
  Line& kv(std::string_view key, const std::string& value) {
    return kv(key, std::string_view(value));
  }
  Line& kv(std::string_view key, long long value);
  Line& kv(std::string_view key, unsigned long long value);
  Line& kv(std::string_view key, long value) { return kv(key, static_cast<long long>(value)); }
  Line& kv(std::string_view key, unsigned long value) {
    return kv(key, static_cast<unsigned long long>(value));
  }
  Line& kv(std::string_view key, int value) { return kv(key, static_cast<long long>(value)); }
  Line& kv(std::string_view key, unsigned value) {
    return kv(key, static_cast<unsigned long long>(value));
  }
  Line& kv(std::string_view key, bool value) { return kv(key, value ? "true" : "false"); }

 private:
  std::string text_;
  bool enabled_;
};

inline Line debug(std::string_view event) {
  return Line(Level::debug, event);
}
inline Line info(std::string_view event) {
  return Line(Level::info, event);
}
inline Line warn(std::string_view event) {
  return Line(Level::warn, event);
}
inline Line error(std::string_view event) {
  return Line(Level::error, event);
}

void set_min_level(Level level);
// What an exception that ended a coroutine says, for its one log line.
std::string describe(const std::exception_ptr& e);
// Escapes a value for a log line (exposed for tests).
std::string escape_value(std::string_view value);

}  // namespace vmgate::log
