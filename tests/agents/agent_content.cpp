// The agent's content and request-text helpers, free of connection handling,
// which stays in test_agent.cpp.
#include "tests/agents/agent_content.hpp"

#include <algorithm>
#include <charconv>
#include <iterator>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>
#include <openssl/evp.h>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/field.hpp>

namespace vmgate::test_agent {
namespace {

namespace beast = boost::beast;

// The SHA-256 of the first N pattern bytes. Hashing a large N costs a pass
// over it, so digests are remembered: benchmarks ask for the same N again
// and again.
class PatternDigests {
 public:
  std::string get(std::uint64_t length) {
    {
      std::lock_guard lock(mutex_);
      if (auto it = digests_.find(length); it != digests_.end()) return it->second;
    }
    Sha256 sha;
    auto piece = pattern_piece();
    for (std::uint64_t left = length; left > 0;) {
      auto n = static_cast<std::size_t>(std::min<std::uint64_t>(left, piece.size()));
      sha.update(piece.data(), n);
      left -= n;
    }
    std::string hex = sha.hex();
    std::lock_guard lock(mutex_);
    if (digests_.size() >= max_entries) digests_.clear();
    digests_.emplace(length, hex);
    return hex;
  }

 private:
  static constexpr std::size_t max_entries = 1024;
  std::mutex mutex_;
  std::unordered_map<std::uint64_t, std::string> digests_;
};

PatternDigests g_pattern_digests;

}  // namespace

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  if (!ctx_ || EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) != 1)
    throw std::runtime_error("OpenSSL: cannot initialise SHA-256");
}

void Sha256::update(const void* data, std::size_t size) {
  EVP_DigestUpdate(ctx_.get(), data, size);
}

std::string Sha256::hex() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_DigestFinal_ex(ctx_.get(), digest, &length);
  std::string out;
  out.reserve(2 * length);
  for (unsigned int i = 0; i < length; ++i)
    fmt::format_to(std::back_inserter(out), "{:02x}", digest[i]);
  return out;
}

void Sha256::Free::operator()(EVP_MD_CTX* ctx) const {
  EVP_MD_CTX_free(ctx);
}

std::span<const char> pattern_piece() {
  static const std::vector<char> piece = [] {
    std::vector<char> v(piece_size);
    for (std::size_t k = 0; k < piece_size; ++k) {
      std::size_t i = k % pattern_block;
      v[k] = static_cast<char>((i * 131 + (i >> 8) * 7) & 0xFF);
    }
    return v;
  }();
  return piece;
}

std::string pattern_digest(std::uint64_t length) {
  return g_pattern_digests.get(length);
}

std::string wsman_envelope(const std::string& name) {
  std::string body = R"(<?xml version="1.0" encoding="UTF-8"?>
<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"
  xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing"
  xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
  xmlns:n="http://schemas.xmlsoap.org/ws/2004/09/enumeration">
<s:Header>
<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>
<a:Action>http://schemas.xmlsoap.org/ws/2004/09/enumeration/PullResponse</a:Action>
<a:MessageID>uuid:00000000-0000-0000-0000-000000000001</a:MessageID>
<a:RelatesTo>uuid:00000000-0000-0000-0000-000000000000</a:RelatesTo>
</s:Header>
<s:Body>
<n:PullResponse>
<n:Items>
)";
  const std::string footer =
      "</n:Items>\n<n:EndOfSequence/>\n</n:PullResponse>\n</s:Body>\n</s:Envelope>\n";
  constexpr std::size_t target_size = 8 * 1024;
  for (int i = 0;; ++i) {
    std::string item = fmt::format(
        "<p:Win32_Service xmlns:p=\"http://schemas.microsoft.com/wbem/wsman/1/wmi/root/cimv2/"
        "Win32_Service\"><p:Name>svc{:03}</p:Name><p:SystemName>{}</p:SystemName>"
        "<p:State>Running</p:State></p:Win32_Service>\n",
        i, name);
    if (body.size() + item.size() + footer.size() > target_size) break;
    body += item;
  }
  // Pad to exactly target_size with a comment, so every reply is the same size.
  std::size_t pad = target_size - body.size() - footer.size();
  if (pad >= 8)
    body += "<!--" + std::string(pad - 8, ' ') + "-->\n";
  else
    body.append(pad, '\n');
  return body + footer;
}

std::optional<std::uint64_t> parse_u64(std::string_view s) {
  std::uint64_t v = 0;
  if (s.empty()) return std::nullopt;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

std::optional<std::string_view> query_value(std::string_view query, std::string_view key) {
  while (!query.empty()) {
    auto amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    auto eq = pair.find('=');
    if (pair.substr(0, eq) == key)
      return eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1);
  }
  return std::nullopt;
}

std::optional<std::string> percent_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out.push_back(s[i]);
      continue;
    }
    unsigned value = 0;
    if (i + 2 >= s.size()) return std::nullopt;
    auto [p, ec] = std::from_chars(s.data() + i + 1, s.data() + i + 3, value, 16);
    if (ec != std::errc() || p != s.data() + i + 3) return std::nullopt;
    out.push_back(static_cast<char>(value));
    i += 2;
  }
  return out;
}

RequestInfo describe(const http::request<http::empty_body>& req) {
  RequestInfo info;
  info.method = req.method();
  info.method_name = std::string(req.method_string());
  info.target = std::string(req.target());
  info.version = req.version();
  info.keep_alive = req.keep_alive();
  info.expect_continue =
      req.version() >= 11 && beast::iequals(req[http::field::expect], "100-continue");
  std::string_view target = info.target;
  // Absolute form (RFC 9112 §3.2.2), in case a proxy passes it through.
  if (auto scheme = target.find("://");
      scheme != std::string_view::npos && target.substr(0, 1) != "/") {
    auto slash = target.find('/', scheme + 3);
    target = slash == std::string_view::npos ? std::string_view("/") : target.substr(slash);
  }
  auto q = target.find('?');
  info.path = std::string(target.substr(0, q));
  info.query = q == std::string_view::npos ? std::string() : std::string(target.substr(q + 1));
  return info;
}

std::string echo_text(const RequestInfo& info, const http::request<http::empty_body>& req) {
  std::string text = fmt::format("{} {} HTTP/{}.{}\n", info.method_name, info.target,
                                 info.version / 10, info.version % 10);
  for (const auto& field : req.base())
    fmt::format_to(std::back_inserter(text), "{}: {}\n", field.name_string(), field.value());
  return text;
}

}  // namespace vmgate::test_agent
