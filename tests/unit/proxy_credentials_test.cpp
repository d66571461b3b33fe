#include <doctest/doctest.h>

#include <string>
#include <string_view>

#include <fmt/format.h>

#include "hostd/identity/proxy_credentials.hpp"
#include "hostd/identity/token_store.hpp"

using vmgate::hostd::check_proxy_credentials;
using vmgate::hostd::max_proxy_authorization_bytes;
using vmgate::hostd::parse_proxy_authorization;
using vmgate::hostd::ProxyCredentials;
using vmgate::hostd::token_hash;
using vmgate::hostd::TokenStore;

namespace {

using Scheme = ProxyCredentials::Scheme;

// "ansible" with secret "s3cret", "ci" with "abc".
TokenStore store() {
  return TokenStore::parse("ansible " + token_hash("s3cret") + "\nci " + token_hash("abc") + "\n",
                           "tokens");
}

std::string reason_of(std::string_view value) {
  auto parsed = parse_proxy_authorization(value);
  if (parsed) {
    FAIL_CHECK("parsed but should not have: " << value);
    return {};
  }
  return parsed.error();
}

std::string refusal_of(std::string_view value) {
  auto checked = check_proxy_credentials(store(), value);
  if (checked) {
    FAIL_CHECK("accepted as '" << *checked << "' but should not have been: " << value);
    return {};
  }
  return checked.error();
}

}  // namespace

TEST_CASE("Basic proxy credentials are the base64 of NAME:TOKEN") {
  auto parsed = parse_proxy_authorization("Basic YW5zaWJsZTpzM2NyZXQ=");  // ansible:s3cret
  REQUIRE(parsed.has_value());
  CHECK(parsed->scheme == Scheme::basic);
  CHECK(parsed->name == "ansible");
  CHECK(parsed->token == "s3cret");

  auto checked = check_proxy_credentials(store(), "Basic YW5zaWJsZTpzM2NyZXQ=");
  REQUIRE(checked.has_value());
  CHECK(*checked == "ansible");
}

TEST_CASE("Basic with a wrong secret or an unknown name is refused the same way") {
  CHECK(refusal_of("Basic YW5zaWJsZTpzM2NyZXQy") == "unknown token or wrong secret");  // s3cret2
  CHECK(refusal_of("Basic bm9ib2R5OnMzY3JldA==") == "unknown token or wrong secret");  // nobody:
  CHECK(refusal_of("Basic Y2k6czNjcmV0") == "unknown token or wrong secret");          // ci:s3cret
  CHECK(refusal_of("Basic YW5zaWJsZTo=") == "unknown token or wrong secret");          // ansible:
  CHECK(refusal_of("Basic OnMzY3JldA==") == "unknown token or wrong secret");          // :s3cret
}

TEST_CASE("a Bearer token is checked by its secret alone") {
  auto parsed = parse_proxy_authorization("Bearer abc");
  REQUIRE(parsed.has_value());
  CHECK(parsed->scheme == Scheme::bearer);
  CHECK(parsed->name.empty());
  CHECK(parsed->token == "abc");

  auto checked = check_proxy_credentials(store(), "Bearer s3cret");
  REQUIRE(checked.has_value());
  CHECK(*checked == "ansible");
  CHECK(refusal_of("Bearer s3cret2") == "unknown token or wrong secret");
  CHECK(refusal_of("Bearer ansible") == "unknown token or wrong secret");

  // RFC 6750 §2.1's b64token: these characters and trailing '='.
  auto b64token = parse_proxy_authorization("Bearer aZ09-._~+/==");
  REQUIRE(b64token.has_value());
  CHECK(b64token->token == "aZ09-._~+/==");
}

TEST_CASE("proxy credential schemes are case-insensitive") {
  for (auto value : {"basic YW5zaWJsZTpzM2NyZXQ=", "BASIC YW5zaWJsZTpzM2NyZXQ=",
                     "bAsIc YW5zaWJsZTpzM2NyZXQ=", "bearer s3cret", "BEARER s3cret"}) {
    auto checked = check_proxy_credentials(store(), value);
    CHECK_MESSAGE(checked.has_value(), value);
    if (checked) CHECK(*checked == "ansible");
  }
}

TEST_CASE("Basic credentials decode with their padding, or without it") {
  struct Case {
    std::string_view value;
    std::string_view name;
    std::string_view token;
  } cases[] = {
      {"Basic YTpi", "a", "b"},              // 3 bytes: no padding
      {"Basic YTpiYw==", "a", "bc"},         // 4 bytes: two '='
      {"Basic YTpiYw", "a", "bc"},           // the same unpadded
      {"Basic YTpiY2Q=", "a", "bcd"},        // 5 bytes: one '='
      {"Basic YTpiY2Q", "a", "bcd"},         // the same unpadded
      {"Basic YTpiY2Rl", "a", "bcde"},       // 6 bytes
      {"Basic YTo=", "a", ""},               // "a:"
      {"Basic Pz4/Oj8+Pw==", "?>?", "?>?"},  // '+' and '/' of the alphabet
  };
  for (const auto& c : cases) {
    auto parsed = parse_proxy_authorization(c.value);
    REQUIRE_MESSAGE(parsed.has_value(), c.value);
    CHECK(parsed->name == c.name);
    CHECK(parsed->token == c.token);
  }
  for (auto value : {"Basic YTpiYw=", "Basic YTpiYw===", "Basic YTpiY2Q==", "Basic YTpiY",
                     "Basic YTpiY===", "Basic YTpi=", "Basic ====", "Basic YT==pi",
                     "Basic YTpi YTpi", "Basic YTp_", "Basic YTp-Yw", "Basic YTpi\x01"}) {
    CHECK_MESSAGE(reason_of(value).starts_with("malformed Proxy-Authorization: Basic "
                                               "credentials are not base64"),
                  value);
  }
}

TEST_CASE("the first ':' ends the name: a token may hold ':' and a name may not") {
  auto parsed = parse_proxy_authorization("Basic YTpiOmM6");  // a:b:c:
  REQUIRE(parsed.has_value());
  CHECK(parsed->name == "a");
  CHECK(parsed->token == "b:c:");

  const auto colons = TokenStore::parse("ansible " + token_hash("s3:cr:et") + "\n", "tokens");
  auto checked = check_proxy_credentials(colons, "Basic YW5zaWJsZTpzMzpjcjpldA==");
  REQUIRE(checked.has_value());
  CHECK(*checked == "ansible");

  CHECK(reason_of("Basic YW5zaWJsZQ==") ==  // "ansible"
        "malformed Proxy-Authorization: Basic credentials without ':' (NAME:TOKEN)");
  CHECK(reason_of("Basic YQlhOmI=") ==  // "a\ta:b"
        "malformed Proxy-Authorization: control character in Basic credentials");
  CHECK(reason_of("Basic YTpiDQpYOiB5") ==  // "a:b\r\nX: y"
        "malformed Proxy-Authorization: control character in Basic credentials");
}

TEST_CASE("an absent, empty or schemeless Proxy-Authorization is refused") {
  CHECK(refusal_of("") == "no proxy credentials (Proxy-Authorization)");
  CHECK(reason_of("") == "malformed Proxy-Authorization: empty");
  CHECK(reason_of("  \t ") == "malformed Proxy-Authorization: empty");
  CHECK(reason_of("Basic") == "malformed Proxy-Authorization: Basic without credentials");
  CHECK(reason_of("Bearer   ") == "malformed Proxy-Authorization: Bearer without credentials");
  CHECK(reason_of("=abc") == "malformed Proxy-Authorization: no authentication scheme");
  CHECK(reason_of("Basic,YTpi") == "malformed Proxy-Authorization: no authentication scheme");
  CHECK(reason_of("Bearer a b").starts_with("malformed Proxy-Authorization: a Bearer token is"));
  CHECK(reason_of("Bearer a=b").starts_with("malformed Proxy-Authorization: a Bearer token is"));
  CHECK(reason_of("Bearer ===").starts_with("malformed Proxy-Authorization: a Bearer token is"));
  // Surrounding white space is the field's, not the credentials' (RFC 9110 §5.5).
  auto spaced = check_proxy_credentials(store(), " \tBearer  s3cret \t");
  REQUIRE(spaced.has_value());
  CHECK(*spaced == "ansible");
}

TEST_CASE("a scheme other than Basic or Bearer is refused by name") {
  CHECK(refusal_of("Digest username=\"a\", realm=\"b\"") ==
        "unsupported Proxy-Authorization scheme 'Digest' (use Basic or Bearer)");
  CHECK(refusal_of("Negotiate YIIB") ==
        "unsupported Proxy-Authorization scheme 'Negotiate' (use Basic or Bearer)");
  const std::string long_scheme(100, 'X');
  CHECK(refusal_of(long_scheme + " abc") ==
        fmt::format("unsupported Proxy-Authorization scheme '{}...' (use Basic or Bearer)",
                    long_scheme.substr(0, 32)));
}

TEST_CASE("a Proxy-Authorization longer than the bound is refused unread") {
  const std::string at_bound = "Bearer " + std::string(max_proxy_authorization_bytes - 7, 'a');
  CHECK(parse_proxy_authorization(at_bound).has_value());
  CHECK(reason_of(at_bound + "a") == "malformed Proxy-Authorization: longer than 4096 bytes");
  CHECK(refusal_of(at_bound + "a") == "malformed Proxy-Authorization: longer than 4096 bytes");
}
