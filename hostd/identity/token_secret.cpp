#include "hostd/identity/token_secret.hpp"

#include <array>
#include <stdexcept>

#include <openssl/evp.h>
#include <openssl/rand.h>

namespace vmgate::hostd {

std::string lower_hex(const unsigned char* data, std::size_t size) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(size * 2);
  for (std::size_t i = 0; i < size; ++i) {
    out += digits[data[i] >> 4];
    out += digits[data[i] & 0x0f];
  }
  return out;
}

bool valid_token_name(std::string_view name) {
  if (name.empty() || name.size() > max_token_name_length) return false;
  for (char c : name) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string new_token() {
  std::array<unsigned char, token_random_bytes> bytes{};
  if (RAND_bytes(bytes.data(), static_cast<int>(bytes.size())) != 1)
    throw std::runtime_error("cannot generate a token: OpenSSL's random generator failed");
  return lower_hex(bytes.data(), bytes.size());
}

std::optional<TokenDigest> token_digest(std::string_view token) noexcept {
  TokenDigest digest{};
  unsigned int size = 0;
  if (EVP_Digest(token.data(), token.size(), digest.data(), &size, EVP_sha256(), nullptr) != 1 ||
      size != digest.size())
    return std::nullopt;
  return digest;
}

std::string token_hash(std::string_view token) {
  auto digest = token_digest(token);
  if (!digest) throw std::runtime_error("SHA-256 failed (OpenSSL EVP_Digest)");
  return std::string(token_hash_prefix) + lower_hex(digest->data(), digest->size());
}

}  // namespace vmgate::hostd
