// What vmgate-test-agent serves and how it reads a request's target, kept apart
// from the HTTP connection handling in test_agent.cpp: they change for different reasons.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/verb.hpp>

// OpenSSL's EVP_MD_CTX, declared here so that this header needs no OpenSSL headers.
struct evp_md_ctx_st;

namespace vmgate::test_agent {

namespace http = boost::beast::http;

constexpr std::size_t pattern_block = 64 * 1024;
// Bodies move in pieces of this size: one read or write per piece. A multiple
// of pattern_block, so every piece of a /bytes body starts at offset 0 of the
// pattern.
constexpr std::size_t piece_size = 256 * 1024;
static_assert(piece_size % pattern_block == 0);

class Sha256 {
 public:
  Sha256();
  void update(const void* data, std::size_t size);
  std::string hex();

 private:
  struct Free {
    void operator()(evp_md_ctx_st* ctx) const;
  };
  std::unique_ptr<evp_md_ctx_st, Free> ctx_;
};

// One piece of the /bytes pattern: pattern_block bytes repeated.
std::span<const char> pattern_piece();

// The SHA-256 (hex) of the first `length` pattern bytes, remembered once computed.
std::string pattern_digest(std::uint64_t length);

std::string wsman_envelope(const std::string& name);

std::optional<std::uint64_t> parse_u64(std::string_view s);

// The value of `key` in a query string, if present.
std::optional<std::string_view> query_value(std::string_view query, std::string_view key);

std::optional<std::string> percent_decode(std::string_view s);

// What the handlers need from the request head; copied out because reading
// the body moves the head into another parser.
struct RequestInfo {
  http::verb method;
  std::string method_name;
  std::string target;
  std::string path;  // without the query
  std::string query;
  unsigned version = 11;
  bool keep_alive = true;
  bool expect_continue = false;
};

RequestInfo describe(const http::request<http::empty_body>& req);

// The request line, then every header as it reached the agent.
std::string echo_text(const RequestInfo& info, const http::request<http::empty_body>& req);

}  // namespace vmgate::test_agent
