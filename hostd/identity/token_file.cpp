#include "hostd/identity/token_file.hpp"

#include <exception>

namespace vmgate::hostd {

TokenFile::TokenFile(std::string path) : path_(std::move(path)) {
  store_.store(std::make_shared<const TokenStore>(TokenStore::load(path_)));
}

std::string TokenFile::reload() {
  try {
    store_.store(std::make_shared<const TokenStore>(TokenStore::load(path_)));
    return {};
  } catch (const std::exception& e) {
    return e.what();
  }
}

}  // namespace vmgate::hostd
