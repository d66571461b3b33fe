#include "hostd/identity/token_file.hpp"

#include <exception>

namespace vmgate::hostd {

TokenFile::TokenFile() {
  store_.store(std::make_shared<const TokenStore>());
}

TokenFile::TokenFile(std::string path) : path_(std::move(path)) {
  store_.store(std::make_shared<const TokenStore>(TokenStore::load(path_)));
}

std::string TokenFile::reload() {
  if (path_.empty()) return {};
  try {
    store_.store(std::make_shared<const TokenStore>(TokenStore::load(path_)));
    return {};
  } catch (const std::exception& e) {
    return e.what();
  }
}

void TokenFile::replace(std::string path, TokenStore store) {
  path_ = std::move(path);
  store_.store(std::make_shared<const TokenStore>(std::move(store)));
}

}  // namespace vmgate::hostd
