#include "hostd/proxy/connection_auth.hpp"

#include <cctype>

namespace vmgate::hostd {
namespace http = boost::beast::http;
namespace {

// The auth-scheme token that starts a credentials or challenge value (RFC
// 9110 §11.4), compared ignoring case.
bool names_bound_scheme(std::string_view value) {
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t'))
    value.remove_prefix(1);
  auto scheme = value.substr(0, value.find_first_of(" \t,"));
  auto equals = [](std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
      if (std::tolower(static_cast<unsigned char>(a[i])) != b[i]) return false;
    }
    return true;
  };
  return equals(scheme, "ntlm") || equals(scheme, "negotiate");
}

}  // namespace

bool binds_connection(const http::request_header<>& request) {
  auto [first, last] = request.equal_range(http::field::authorization);
  for (auto it = first; it != last; ++it) {
    if (names_bound_scheme(it->value())) return true;
  }
  return false;
}

bool binds_connection(const http::response_header<>& response) {
  if (response.result() != http::status::unauthorized) return false;
  auto [first, last] = response.equal_range(http::field::www_authenticate);
  for (auto it = first; it != last; ++it) {
    // One field may offer several challenges: "Negotiate, NTLM" or "Basic realm=x, NTLM".
    std::string_view value = it->value();
    for (std::size_t start = 0; start <= value.size();) {
      auto comma = value.find(',', start);
      if (names_bound_scheme(value.substr(start, comma - start))) return true;
      if (comma == std::string_view::npos) break;
      start = comma + 1;
    }
  }
  return false;
}

}  // namespace vmgate::hostd
