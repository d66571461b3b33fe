// libFuzzer target for Proxy-Authorization parsing
// (hostd/identity/proxy_credentials.hpp), which reads what any client on a
// token listener sends before it is known. Besides "no crash, no sanitizer
// report", it checks what hostd relies on:
//   - a refusal is one short line (it goes into the 407's body and the log);
//   - what parses is within the bound, and Basic's name has no ':' and
//     neither part a control character (RFC 7617 §2);
//   - credentials written back (Basic: base64 of NAME:TOKEN; Bearer: the
//     token) parse to the same credentials;
//   - checking against a tokens file accepts only a name that file holds.
#include <openssl/evp.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "hostd/identity/proxy_credentials.hpp"
#include "hostd/identity/token_store.hpp"

namespace id = vmgate::hostd;

namespace {

void check(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "proxy credentials property violated: %s\n", what);
  std::abort();
}

void check_reason(const std::string& reason) {
  check(!reason.empty(), "every refusal has a reason");
  check(reason.size() <= 200, "a reason is short");
  check(reason.find_first_of("\r\n") == std::string::npos, "a reason is one line");
}

bool has_control_character(std::string_view text) {
  for (unsigned char c : text) {
    if (c < 0x20 || c == 0x7f) return true;
  }
  return false;
}

std::string base64(std::string_view bytes) {
  std::string out((bytes.size() + 2) / 3 * 4 + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(bytes.data()),
                                static_cast<int>(bytes.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

const id::TokenStore& tokens() {
  static const id::TokenStore store = id::TokenStore::parse(
      "ansible " + id::token_hash("s3cret") + "\nci " + id::token_hash("abc") + "\n", "tokens");
  return store;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);

  auto parsed = id::parse_proxy_authorization(input);
  if (!parsed) {
    check_reason(parsed.error());
  } else {
    check(input.size() <= id::max_proxy_authorization_bytes, "parsed value within the bound");
    check(!has_control_character(parsed->name) && !has_control_character(parsed->token),
          "no control characters in credentials");
    std::string again;
    if (parsed->scheme == id::ProxyCredentials::Scheme::basic) {
      check(parsed->name.find(':') == std::string::npos, "a Basic name has no ':'");
      again = "Basic " + base64(parsed->name + ":" + parsed->token);
    } else {
      check(parsed->name.empty(), "Bearer credentials have no name");
      check(!parsed->token.empty(), "a Bearer token is not empty");
      again = "Bearer " + parsed->token;
    }
    if (again.size() <= id::max_proxy_authorization_bytes) {
      auto reparsed = id::parse_proxy_authorization(again);
      check(reparsed.has_value(), "credentials written back parse");
      check(reparsed->scheme == parsed->scheme, "scheme survives");
      check(reparsed->name == parsed->name, "name survives");
      check(reparsed->token == parsed->token, "token survives");
    }
  }

  auto checked = id::check_proxy_credentials(tokens(), input);
  if (!checked) {
    check_reason(checked.error());
  } else {
    check(*checked == "ansible" || *checked == "ci", "only a name of the tokens file is accepted");
  }
  return 0;
}
