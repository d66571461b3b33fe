#include "common/config_reader.hpp"

#include <algorithm>

#include <fmt/format.h>

#include <toml++/toml.h>

namespace vmgate::config {

Section::Section(std::shared_ptr<const toml::table> root, const toml::table* table,
                 std::string path, std::shared_ptr<const std::string> file)
    : root_(std::move(root)), table_(table), path_(std::move(path)), file_(std::move(file)) {}

const toml::node* Section::find(std::string_view key) const {
  seen_.emplace(key);
  return table_->get(key);
}

std::string Section::qualified(std::string_view key) const {
  if (path_.empty()) return std::string(key);
  if (key.empty()) return path_;
  return fmt::format("{}.{}", path_, key);
}

std::uint32_t Section::line_of(std::string_view key) const {
  if (const auto* node = table_->get(key)) return node->source().begin.line;
  return table_->source().begin.line;
}

std::string Section::where(std::string_view key) const {
  return fmt::format("{}:{}: {}", *file_, line_of(key), qualified(key));
}

void Section::fail(std::string_view key, std::string_view message) const {
  throw ConfigError(fmt::format("{}: {}", where(key), message));
}

std::string Section::get_string(std::string_view key, std::string_view fallback) const {
  auto v = optional_string(key);
  return v ? *v : std::string(fallback);
}

std::optional<std::string> Section::optional_string(std::string_view key) const {
  const auto* node = find(key);
  if (!node) return std::nullopt;
  const auto* s = node->as_string();
  if (!s) fail(key, "must be a string");
  return s->get();
}

std::int64_t Section::get_int(std::string_view key, std::int64_t fallback, std::int64_t min,
                              std::int64_t max) const {
  const auto* node = find(key);
  if (!node) return fallback;
  const auto* i = node->as_integer();
  if (!i) fail(key, "must be an integer");
  if (i->get() < min || i->get() > max)
    fail(key, fmt::format("{} is out of range ({}..{})", i->get(), min, max));
  return i->get();
}

bool Section::get_bool(std::string_view key, bool fallback) const {
  const auto* node = find(key);
  if (!node) return fallback;
  const auto* b = node->as_boolean();
  if (!b) fail(key, "must be true or false");
  return b->get();
}

std::chrono::milliseconds Section::get_ms(std::string_view key, std::chrono::milliseconds fallback,
                                          std::chrono::milliseconds min,
                                          std::chrono::milliseconds max) const {
  return std::chrono::milliseconds(get_int(key, fallback.count(), min.count(), max.count()));
}

std::vector<std::int64_t> Section::get_int_array(std::string_view key,
                                                 std::vector<std::int64_t> fallback,
                                                 std::int64_t min, std::int64_t max) const {
  const auto* node = find(key);
  if (!node) return fallback;
  const auto* arr = node->as_array();
  if (!arr) fail(key, "must be an array of integers");
  std::vector<std::int64_t> out;
  for (const auto& element : *arr) {
    const auto* i = element.as_integer();
    if (!i) fail(key, "must be an array of integers");
    if (i->get() < min || i->get() > max)
      fail(key, fmt::format("{} is out of range ({}..{})", i->get(), min, max));
    out.push_back(i->get());
  }
  return out;
}

std::vector<std::string> Section::get_string_array(std::string_view key,
                                                   std::vector<std::string> fallback) const {
  const auto* node = find(key);
  if (!node) return fallback;
  const auto* arr = node->as_array();
  if (!arr) fail(key, "must be an array of strings");
  std::vector<std::string> out;
  for (const auto& element : *arr) {
    const auto* s = element.as_string();
    if (!s) fail(key, "must be an array of strings");
    out.push_back(s->get());
  }
  return out;
}

std::optional<Section> Section::section(std::string_view key) const {
  const auto* node = find(key);
  if (!node) return std::nullopt;
  const auto* t = node->as_table();
  if (!t) fail(key, "must be a table");
  return Section(root_, t, qualified(key), file_);
}

bool Section::is_table(std::string_view key) const {
  const auto* node = find(key);
  return node && node->is_table();
}

std::vector<Section> Section::sections(std::string_view key) const {
  const auto* node = find(key);
  if (!node) return {};
  const auto* arr = node->as_array();
  if (!arr) fail(key, fmt::format("must be an array of tables ([[{}]])", qualified(key)));
  std::vector<Section> out;
  std::size_t index = 0;
  for (const auto& element : *arr) {
    const auto* t = element.as_table();
    if (!t) fail(key, fmt::format("must be an array of tables ([[{}]])", qualified(key)));
    out.emplace_back(root_, t, fmt::format("{}[{}]", qualified(key), index++), file_);
  }
  return out;
}

std::vector<std::string> Section::keys() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : *table_)
    out.emplace_back(k.str());
  return out;
}

namespace {

// A key as TOML would have it written: bare when it can be, else quoted
// (TOML 1.0, "Keys"), so that `"" = 1` or a key holding ": " or a newline
// is shown as what it is and the error keeps its FILE:LINE: KEY: shape.
std::string written_key(std::string_view key) {
  const bool bare = !key.empty() && std::all_of(key.begin(), key.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
  if (bare) return std::string(key);
  std::string out = "\"";
  for (unsigned char c : key) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7f) {
      out += fmt::format("\\u{:04X}", c);
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

}  // namespace

void Section::reject_unknown_keys() const {
  for (const auto& [k, v] : *table_) {
    if (!seen_.contains(k.str())) {
      throw ConfigError(fmt::format("{}:{}: {}: unknown key (misspelt, or not valid here)", *file_,
                                    v.source().begin.line, qualified(written_key(k.str()))));
    }
  }
}

namespace {

Section make_root(toml::table&& parsed, const std::string& name) {
  auto root = std::make_shared<const toml::table>(std::move(parsed));
  const toml::table* table = root.get();
  return Section(std::move(root), table, "", std::make_shared<const std::string>(name));
}

[[noreturn]] void throw_parse_error(const toml::parse_error& e, const std::string& name) {
  throw ConfigError(
      fmt::format("{}:{}: syntax error: {}", name, e.source().begin.line, e.description()));
}

}  // namespace

Section load_file(const std::string& path) {
  try {
    return make_root(toml::parse_file(path), path);
  } catch (const toml::parse_error& e) {
    if (e.source().begin.line == 0) {
      throw ConfigError(fmt::format("{}: cannot read: {}", path, e.description()));
    }
    throw_parse_error(e, path);
  }
}

Section load_string(std::string_view text, const std::string& name) {
  try {
    return make_root(toml::parse(text, name), name);
  } catch (const toml::parse_error& e) {
    throw_parse_error(e, name);
  }
}

}  // namespace vmgate::config
