// The tokens file as hostd holds it ([auth] tokens_file): read at start,
// where a file that is wrong stops hostd, and again on SIGHUP, where one
// that is wrong is logged and the tokens in use stay. A request checks its
// credentials against the tokens of the moment it arrives.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "hostd/identity/token_store.hpp"

namespace vmgate::hostd {

class TokenFile {
 public:
  // No file ([auth] tokens_file unset): no tokens, until a reload names one.
  TokenFile();
  // Throws config::ConfigError (TokenStore::load).
  explicit TokenFile(std::string path);

  std::shared_ptr<const TokenStore> current() const { return store_.load(); }
  // Empty on success, else why the file was refused (the old tokens stay).
  // Without a file there is nothing to read: empty.
  std::string reload();
  // Takes the tokens of another file ([auth] tokens_file changed on SIGHUP),
  // `store` read from `path` by the caller beforehand, so that a file that
  // does not load refuses the reload before anything has changed. An empty
  // path: no tokens. Requests from now on are checked against them.
  void replace(std::string path, TokenStore store);
  // path() and replace() are for the one thread that reloads; current() is
  // for any.
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::atomic<std::shared_ptr<const TokenStore>> store_;
};

}  // namespace vmgate::hostd
