// Proxy credentials: the Proxy-Authorization request header (RFC 9110
// §11.7.1) of a client on a listener with identity = "token", which names a
// token of the tokens file (token_store.hpp).
//
//   Proxy-Authorization: Basic base64(NAME:TOKEN)   (RFC 7617)
//   Proxy-Authorization: Bearer TOKEN               (RFC 6750 §2.1 syntax)
//
// Basic is what HTTP_PROXY=http://NAME:TOKEN@host:port makes curl, python
// requests and python3-winrm send; Bearer is for clients that hold a token
// alone. The caller answers a refusal with 407 and Proxy-Authenticate, and
// strips the header before forwarding (it is hop-by-hop, §11.7.1).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include <boost/system/result.hpp>

#include "hostd/identity/token_store.hpp"

namespace vmgate::hostd {

// Longer values are refused unread. The whole head is bounded by
// limits.header_bytes already; this bounds the work one header can ask for.
// Base64 of a 64-byte name, ':' and a token is under 200 bytes; 4 KiB leaves
// room for the long bearer tokens of other systems a client may be
// configured with, which are then refused as unknown rather than malformed.
inline constexpr std::size_t max_proxy_authorization_bytes = 4096;

struct ProxyCredentials {
  enum class Scheme { basic, bearer };
  Scheme scheme = Scheme::basic;
  std::string name;   // basic: the user-id; bearer: empty
  std::string token;  // basic: the password; bearer: the token
};

// Parses one Proxy-Authorization value: the scheme, case-insensitively
// (RFC 9110 §11.1), then one token68 (§11.4). Basic's is base64 (RFC 4648
// §4, padding optional) of user-id ":" password, the user-id without ':',
// neither with control characters (RFC 7617 §2). Errors are one-line
// reasons, naming nothing the client sent but a (token-syntax) scheme.
boost::system::result<ProxyCredentials, std::string> parse_proxy_authorization(
    std::string_view value);

// The name of the token `value` presents, or the one-line reason for the
// 407. An empty `value` is a header absent. The reason never says whether a
// name exists: a wrong secret and an unknown name are the same refusal.
boost::system::result<std::string, std::string> check_proxy_credentials(const TokenStore& tokens,
                                                                        std::string_view value);

}  // namespace vmgate::hostd
