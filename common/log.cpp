#include "common/log.hpp"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>

#include <fmt/chrono.h>
#include <fmt/format.h>

namespace vmgate::log {
namespace {

std::atomic<Level> g_min_level{Level::info};

// Under systemd the journal stamps each line; elsewhere we do.
bool want_timestamp() {
  static const bool want = std::getenv("JOURNAL_STREAM") == nullptr;
  return want;
}

std::string_view level_name(Level level) {
  switch (level) {
    case Level::debug:
      return "debug";
    case Level::info:
      return "info";
    case Level::warn:
      return "warn";
    case Level::error:
      return "error";
  }
  return "info";
}

bool needs_quotes(std::string_view v) {
  if (v.empty()) return true;
  for (unsigned char c : v) {
    if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c >= 0x7f) return true;
  }
  return false;
}

}  // namespace

void set_min_level(Level level) {
  g_min_level = level;
}

std::string escape_value(std::string_view v) {
  if (!needs_quotes(v)) return std::string(v);
  std::string out;
  out.reserve(v.size() + 2);
  out.push_back('"');
  for (unsigned char c : v) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c < ' ' || c >= 0x7f) {
      out += fmt::format("\\x{:02x}", c);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  out.push_back('"');
  return out;
}

Line::Line(Level level, std::string_view event) : enabled_(level >= g_min_level.load()) {
  if (!enabled_) return;
  text_.reserve(256);
  if (want_timestamp()) {
    auto now = std::chrono::system_clock::now();
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()) % 1000;
    text_ += fmt::format("ts={:%Y-%m-%dT%H:%M:%S}.{:03d}Z ",
                         std::chrono::floor<std::chrono::seconds>(now), ms.count());
  }
  text_ += "level=";
  text_ += level_name(level);
  text_ += " event=";
  text_ += escape_value(event);
}

Line::~Line() {
  if (!enabled_) return;
  text_.push_back('\n');
  // One write per line; a short write to a pipe this small does not happen in practice.
  [[maybe_unused]] auto n = ::write(STDERR_FILENO, text_.data(), text_.size());
}

Line& Line::kv(std::string_view key, std::string_view value) {
  if (!enabled_) return *this;
  text_.push_back(' ');
  text_ += key;
  text_.push_back('=');
  text_ += escape_value(value);
  return *this;
}

Line& Line::kv(std::string_view key, long long value) {
  if (enabled_) text_ += fmt::format(" {}={}", key, value);
  return *this;
}

Line& Line::kv(std::string_view key, unsigned long long value) {
  if (enabled_) text_ += fmt::format(" {}={}", key, value);
  return *this;
}

std::string describe(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    return ex.what();
  } catch (...) {
    return "unknown exception";
  }
}

}  // namespace vmgate::log
