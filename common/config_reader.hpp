// Reading TOML config files with errors that name file, line and key.
//
// Config loading is control plane: a bad file stops the daemon at start-up, so
// errors are thrown as ConfigError carrying "FILE:LINE: KEY: reason".
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace toml {
inline namespace v3 {
class table;
class node;
}  // namespace v3
}  // namespace toml

namespace vmgate::config {

class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A view of one TOML table. Every key read is remembered so that
// reject_unknown_keys() can point at typos instead of silently ignoring them.
class Section {
 public:
  Section(std::shared_ptr<const toml::table> root, const toml::table* table, std::string path,
          std::shared_ptr<const std::string> file);

  std::string get_string(std::string_view key, std::string_view fallback) const;
  std::optional<std::string> optional_string(std::string_view key) const;
  std::int64_t get_int(std::string_view key, std::int64_t fallback, std::int64_t min,
                       std::int64_t max) const;
  bool get_bool(std::string_view key, bool fallback) const;
  // Durations are integers with the unit in the key name (`connect_timeout_ms`).
  std::chrono::milliseconds get_ms(std::string_view key, std::chrono::milliseconds fallback,
                                   std::chrono::milliseconds min,
                                   std::chrono::milliseconds max) const;
  std::vector<std::int64_t> get_int_array(std::string_view key, std::vector<std::int64_t> fallback,
                                          std::int64_t min, std::int64_t max) const;
  std::vector<std::string> get_string_array(std::string_view key,
                                            std::vector<std::string> fallback) const;

  std::optional<Section> section(std::string_view key) const;
  // Whether `key` holds a table, for a key that may be written either way
  // (`monitor = "tcp:..."` or `[host_services.monitor]`).
  bool is_table(std::string_view key) const;
  std::vector<Section> sections(std::string_view key) const;  // [[array.of.tables]]
  // Keys of this table, for tables used as maps ("5986" = "tcp:127.0.0.1:5986").
  std::vector<std::string> keys() const;

  // Throws "FILE:LINE: KEY: message" with the line of `key` (or of this table).
  [[noreturn]] void fail(std::string_view key, std::string_view message) const;
  // "FILE:LINE: KEY", the start of fail()'s message, for an error about `key`
  // found once the file is loaded (a port in use when a listener binds).
  std::string where(std::string_view key) const;
  void reject_unknown_keys() const;

  const std::string& path() const { return path_; }
  const std::string& file() const { return *file_; }

 private:
  const toml::node* find(std::string_view key) const;
  std::string qualified(std::string_view key) const;
  std::uint32_t line_of(std::string_view key) const;

  std::shared_ptr<const toml::table> root_;
  const toml::table* table_;
  std::string path_;
  std::shared_ptr<const std::string> file_;
  mutable std::set<std::string, std::less<>> seen_;
};

// Parses a file; throws ConfigError with file and line on syntax errors.
Section load_file(const std::string& path);
// Parses text (tests); `name` stands in for the file name in errors.
Section load_string(std::string_view text, const std::string& name);

}  // namespace vmgate::config
