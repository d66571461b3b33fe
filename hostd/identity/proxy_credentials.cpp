#include "hostd/identity/proxy_credentials.hpp"

#include <optional>

#include <fmt/format.h>
#include <openssl/evp.h>

namespace vmgate::hostd {

namespace {

using Refusal = std::string;

Refusal malformed(std::string_view why) {
  return fmt::format("malformed Proxy-Authorization: {}", why);
}

bool is_ows(char c) {
  return c == ' ' || c == '\t';
}

// tchar (RFC 9110 §5.6.2): what an auth-scheme is made of.
bool is_tchar(char c) {
  if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) return true;
  return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool is_alnum(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

bool equals_ignoring_case(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; };
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

// b64token (RFC 6750 §2.1): 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
bool is_b64token(std::string_view text) {
  const std::size_t end = text.find_last_not_of('=');
  if (end == std::string_view::npos) return false;
  for (char c : text.substr(0, end + 1)) {
    if (!is_alnum(c) && std::string_view("-._~+/").find(c) == std::string_view::npos) return false;
  }
  return true;
}

bool has_control_character(std::string_view text) {
  for (unsigned char c : text) {
    if (c < 0x20 || c == 0x7f) return true;
  }
  return false;
}

// Base64 (RFC 4648 §4), with or without its padding: clients pad, but RFC
// 4648 §3.2 lets a protocol drop it and no harm comes from accepting both.
// OpenSSL's EVP_DecodeBlock is lenient where this must be strict (it skips
// surrounding white space, takes '=' anywhere as zero bits, and counts
// padding as decoded bytes), so the text is checked here first, padded, and
// the padding's bytes taken off the result.
std::optional<std::string> decode_base64(std::string_view text) {
  const std::size_t data_end = text.find_last_not_of('=');
  const std::size_t data = data_end == std::string_view::npos ? 0 : data_end + 1;
  const std::size_t given_padding = text.size() - data;
  for (char c : text.substr(0, data)) {
    if (!is_alnum(c) && c != '+' && c != '/') return std::nullopt;
  }
  // 4 characters carry 3 bytes; a last group of 2 or 3 carries 1 or 2.
  const std::size_t needed_padding = (4 - data % 4) % 4;
  if (data == 0 || needed_padding == 3 || (given_padding != 0 && given_padding != needed_padding))
    return std::nullopt;

  std::string padded(text.substr(0, data));
  padded.append(needed_padding, '=');
  std::string out(padded.size() / 4 * 3, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(padded.data()),
                                static_cast<int>(padded.size()));
  if (n < 0 || static_cast<std::size_t>(n) != out.size()) return std::nullopt;
  out.resize(out.size() - needed_padding);
  return out;
}

}  // namespace

boost::system::result<ProxyCredentials, std::string> parse_proxy_authorization(
    std::string_view value) {
  if (value.size() > max_proxy_authorization_bytes)
    return malformed(fmt::format("longer than {} bytes", max_proxy_authorization_bytes));
  while (!value.empty() && is_ows(value.front()))
    value.remove_prefix(1);
  while (!value.empty() && is_ows(value.back()))
    value.remove_suffix(1);
  if (value.empty()) return malformed("empty");

  // credentials = auth-scheme [ 1*SP ( token68 / #auth-param ) ] (RFC 9110 §11.4)
  std::size_t scheme_end = 0;
  while (scheme_end < value.size() && is_tchar(value[scheme_end]))
    ++scheme_end;
  const std::string_view scheme = value.substr(0, scheme_end);
  if (scheme.empty() || (scheme_end < value.size() && !is_ows(value[scheme_end])))
    return malformed("no authentication scheme");
  std::string_view rest = value.substr(scheme_end);
  while (!rest.empty() && is_ows(rest.front()))
    rest.remove_prefix(1);

  const bool basic = equals_ignoring_case(scheme, "Basic");
  if (!basic && !equals_ignoring_case(scheme, "Bearer")) {
    // The scheme is tchar only, so it cannot inject a line; bounded to keep
    // the reason one short line.
    constexpr std::size_t shown = 32;
    return Refusal(
        fmt::format("unsupported Proxy-Authorization scheme '{}{}' (use Basic or Bearer)",
                    scheme.substr(0, shown), scheme.size() > shown ? "..." : ""));
  }
  if (rest.empty())
    return malformed(basic ? "Basic without credentials" : "Bearer without credentials");

  if (!basic) {
    if (!is_b64token(rest))
      return malformed("a Bearer token is one word of A-Z a-z 0-9 - . _ ~ + /");
    return ProxyCredentials{ProxyCredentials::Scheme::bearer, "", std::string(rest)};
  }

  auto decoded = decode_base64(rest);
  if (!decoded) return malformed("Basic credentials are not base64");
  // RFC 7617 §2: the user-id cannot hold ':', so the first one ends it; the
  // password may hold more.
  const std::size_t colon = decoded->find(':');
  if (colon == std::string::npos) return malformed("Basic credentials without ':' (NAME:TOKEN)");
  ProxyCredentials credentials{ProxyCredentials::Scheme::basic, decoded->substr(0, colon),
                               decoded->substr(colon + 1)};
  if (has_control_character(credentials.name) || has_control_character(credentials.token))
    return malformed("control character in Basic credentials");
  return credentials;
}

boost::system::result<std::string, std::string> check_proxy_credentials(const TokenStore& tokens,
                                                                        std::string_view value) {
  using Result = boost::system::result<std::string, std::string>;
  auto refuse = [](std::string reason) {
    return Result(boost::system::in_place_error, std::move(reason));
  };
  if (value.empty()) return refuse("no proxy credentials (Proxy-Authorization)");
  auto credentials = parse_proxy_authorization(value);
  if (!credentials) return refuse(credentials.error());

  constexpr std::string_view wrong = "unknown token or wrong secret";
  if (credentials->scheme == ProxyCredentials::Scheme::bearer) {
    auto name = tokens.name_of(credentials->token);
    if (!name) return refuse(std::string(wrong));
    return Result(boost::system::in_place_value, std::move(*name));
  }
  if (!tokens.verify(credentials->name, credentials->token)) return refuse(std::string(wrong));
  return Result(boost::system::in_place_value, std::move(credentials->name));
}

}  // namespace vmgate::hostd
