// Proxy-credential tokens: how one is made and how it is remembered.
//
// A token is 32 random bytes (RAND_bytes) written as 64 lowercase hex
// digits, which a shell, a URL's userinfo (RFC 3986 §3.2.1) and the token68
// of Basic and Bearer (RFC 9110 §11.2, RFC 6750 §2.1) all carry without
// escaping. hostd never stores a token, only its SHA-256, in the form the
// tokens file uses: "sha256:" and 64 lowercase hex digits.
//
// Plain SHA-256, not a slow password hash (argon2, scrypt): a slow hash
// protects low-entropy secrets that a person chose from guessing once the
// file leaks. These tokens are generated with 256 bits of entropy, so no
// guessing gets anywhere near one, and a fast hash keeps checking
// credentials on every request cheap.
//
// This file is compiled into vmgatectl as well (`vmgatectl token new`,
// `vmgatectl token hash`), so it needs nothing but OpenSSL.
#pragma once

#include <array>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace vmgate::hostd {

inline constexpr std::size_t token_random_bytes = 32;
inline constexpr std::size_t max_token_name_length = 64;
inline constexpr std::string_view token_hash_prefix = "sha256:";

// A token's name, which ACL rules match as token:NAME and records show:
// 1 to 64 of A-Z a-z 0-9 . _ -.
bool valid_token_name(std::string_view name);

// A new token, from OpenSSL's CSPRNG. Throws std::runtime_error if the
// CSPRNG has no entropy (never silently weaker).
std::string new_token();

// The SHA-256 of a token, raw; nullopt only if OpenSSL fails (which it does
// not for SHA-256 short of memory exhaustion): what hostd compares.
using TokenDigest = std::array<unsigned char, 32>;
std::optional<TokenDigest> token_digest(std::string_view token) noexcept;

// "sha256:<64 lowercase hex digits>" of `token`, as the tokens file holds it.
std::string token_hash(std::string_view token);

// Bytes as lowercase hex without separators: how tokens, their hashes and
// pinned certificate fingerprints (tls.pinned_sha256) are written.
std::string lower_hex(const unsigned char* data, std::size_t size);

}  // namespace vmgate::hostd
