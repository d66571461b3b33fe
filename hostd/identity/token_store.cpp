#include "hostd/identity/token_store.hpp"

#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>
#include <openssl/crypto.h>

#include "common/config_reader.hpp"

namespace vmgate::hostd {

namespace {

using config::ConfigError;

// "sha256:" and exactly 64 lowercase hex digits; uppercase is refused so that
// one token has one spelling, and a duplicate is found by comparing text.
std::optional<TokenDigest> parse_hash(std::string_view text) {
  if (!text.starts_with(token_hash_prefix)) return std::nullopt;
  text.remove_prefix(token_hash_prefix.size());
  TokenDigest digest{};
  if (text.size() != digest.size() * 2) return std::nullopt;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  for (std::size_t i = 0; i < digest.size(); ++i) {
    const int high = nibble(text[2 * i]);
    const int low = nibble(text[2 * i + 1]);
    if (high < 0 || low < 0) return std::nullopt;
    digest[i] = static_cast<unsigned char>(high << 4 | low);
  }
  return digest;
}

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\r';
}

std::vector<std::string_view> fields_of(std::string_view line) {
  std::vector<std::string_view> fields;
  std::size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && is_space(line[i]))
      ++i;
    const std::size_t start = i;
    while (i < line.size() && !is_space(line[i]))
      ++i;
    if (i > start) fields.push_back(line.substr(start, i - start));
  }
  return fields;
}

std::string user_name(uid_t uid) {
  if (const passwd* pw = getpwuid(uid)) return pw->pw_name;
  return std::to_string(uid);
}

// What a token is compared with when its name is unknown, so that the answer
// takes as long as for a wrong secret.
const TokenDigest unknown_name_digest{};

}  // namespace

TokenStore TokenStore::parse(std::string_view text, const std::string& file_name) {
  TokenStore store;
  std::vector<std::size_t> line_of;  // per entry, for "already on line N"
  std::size_t line_number = 0;
  while (!text.empty()) {
    ++line_number;
    const std::size_t end = text.find('\n');
    std::string_view line = text.substr(0, end);
    text.remove_prefix(end == std::string_view::npos ? text.size() : end + 1);
    // Neither a name nor a hash can hold '#': everything after one is a comment.
    line = line.substr(0, line.find('#'));
    auto fail = [&](const std::string& reason) -> ConfigError {
      return ConfigError(fmt::format("{}:{}: {}", file_name, line_number, reason));
    };

    const auto fields = fields_of(line);
    if (fields.empty()) continue;
    if (fields.size() != 2)
      throw fail("expected NAME sha256:HEX (vmgatectl token new NAME prints the line to add)");
    const std::string_view name = fields[0];
    if (!valid_token_name(name))
      throw fail(fmt::format("token name '{}' is not 1 to 64 of A-Z a-z 0-9 . _ -",
                             name.substr(0, max_token_name_length + 1)));
    const auto digest = parse_hash(fields[1]);
    if (!digest)
      throw fail(fmt::format(
          "token '{}': the hash is not sha256: and 64 lowercase hex digits (vmgatectl token "
          "hash prints it for a token)",
          name));
    if (auto same = store.by_name_.find(name); same != store.by_name_.end())
      throw fail(
          fmt::format("token '{}' is already defined on line {}", name, line_of[same->second]));
    for (std::size_t i = 0; i < store.entries_.size(); ++i) {
      if (store.entries_[i].digest == *digest)
        throw fail(fmt::format("token '{}' has the same secret as '{}' on line {}", name,
                               store.entries_[i].name, line_of[i]));
    }
    store.by_name_.emplace(std::string(name), store.entries_.size());
    store.entries_.push_back(Entry{std::string(name), *digest});
    line_of.push_back(line_number);
  }
  return store;
}

TokenStore TokenStore::load(const std::string& path) {
  // The checks are made on the file opened, not on the path, so that the file
  // read is the file checked. O_NONBLOCK: a FIFO is refused, not waited on.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0)
    throw ConfigError(fmt::format("{}: cannot read tokens file ([auth] tokens_file): {}", path,
                                  std::strerror(errno)));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};

  struct stat st {};
  if (::fstat(fd, &st) != 0)
    throw ConfigError(fmt::format("{}: cannot stat tokens file: {}", path, std::strerror(errno)));
  if (!S_ISREG(st.st_mode))
    throw ConfigError(fmt::format("{}: the tokens file is not a regular file", path));
  const uid_t euid = ::geteuid();
  if (st.st_uid != euid)
    throw ConfigError(fmt::format(
        "{}: the tokens file is owned by {}, not by the user hostd runs as ({}): chown {} {}", path,
        user_name(st.st_uid), user_name(euid), user_name(euid), path));
  if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0)
    throw ConfigError(fmt::format(
        "{}: the tokens file may be read or written by others than its owner (mode {:04o}): "
        "chmod 600 {}",
        path, st.st_mode & 07777, path));

  std::string text;
  char buffer[16 * 1024];
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      throw ConfigError(fmt::format("{}: cannot read tokens file: {}", path, std::strerror(errno)));
    }
    text.append(buffer, static_cast<std::size_t>(n));
  }
  return parse(text, path);
}

bool TokenStore::verify(std::string_view name, std::string_view token) const {
  const auto digest = token_digest(token);
  if (!digest) return false;
  const auto found = by_name_.find(name);
  const TokenDigest& expected =
      found == by_name_.end() ? unknown_name_digest : entries_[found->second].digest;
  const bool same = CRYPTO_memcmp(digest->data(), expected.data(), expected.size()) == 0;
  return same && found != by_name_.end();
}

std::optional<std::string> TokenStore::name_of(std::string_view token) const {
  const auto digest = token_digest(token);
  if (!digest) return std::nullopt;
  const Entry* match = nullptr;
  for (const auto& entry : entries_) {
    if (CRYPTO_memcmp(digest->data(), entry.digest.data(), entry.digest.size()) == 0)
      match = &entry;
  }
  if (!match) return std::nullopt;
  return match->name;
}

}  // namespace vmgate::hostd
