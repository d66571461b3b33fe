// The tokens file ([auth] tokens_file): which proxy-credential tokens exist.
//
// One token a line, `NAME sha256:HEX`, where HEX is the SHA-256 of the token
// in 64 lowercase hex digits (`vmgatectl token new NAME` prints the line);
// `#` starts a comment; blank lines are ignored. NAME is what ACL rules match
// as token:NAME, 1 to 64 of [A-Za-z0-9._-]. A name told twice, or a token
// given two names, is an error: the file is either wholly right or refused.
//
// Only hashes are held, in the file and in memory; why a plain SHA-256 is
// enough is in token_secret.hpp. Whoever can read the file can still list
// the names, and whoever can write it can add a token, so load() refuses a
// file that its owner does not alone control.
#pragma once

#include <cstddef>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "hostd/identity/token_secret.hpp"

namespace vmgate::hostd {

class TokenStore {
 public:
  TokenStore() = default;  // no tokens: nothing authenticates

  // Reads `path`. Throws config::ConfigError, naming the path and what to do
  // about it, when the file cannot be read, is not a regular file, is not
  // owned by the effective uid, or has any group or other permission bit
  // ("chmod 600 PATH"); and "PATH:LINE: reason" for a line that is wrong.
  static TokenStore load(const std::string& path);
  // The same from text (tests); `file_name` stands in for the path in errors.
  static TokenStore parse(std::string_view text, const std::string& file_name);

  // Basic credentials: is `token` the secret of the token named `name`?
  // The hashes are compared in constant time (CRYPTO_memcmp), and an
  // unknown name costs the same hash and compare as a wrong secret, so that
  // how long the answer takes does not tell a client which names exist
  // (beyond the name's own lookup in a map, a few comparisons of strings
  // the client chose, far below what a network lets anyone measure).
  bool verify(std::string_view name, std::string_view token) const;
  // Bearer credentials: the name of the token `token` is, if any. Every
  // entry is compared, in constant time, whichever matches.
  std::optional<std::string> name_of(std::string_view token) const;

  std::size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    std::string name;
    TokenDigest digest;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::size_t, std::less<>> by_name_;  // index into entries_
};

}  // namespace vmgate::hostd
