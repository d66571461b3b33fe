#include "hostd/proxy/error_response.hpp"

#include <fmt/format.h>

namespace vmgate::hostd {
namespace http = boost::beast::http;

http::response<http::string_body> make_error_response(const Refusal& refusal,
                                                      std::string_view request_id, unsigned version,
                                                      bool keep_alive) {
  http::response<http::string_body> res{static_cast<http::status>(refusal.status),
                                        version >= 11 ? 11u : 10u};
  res.set(http::field::content_type, "text/plain; charset=utf-8");
  res.set(http::field::server, "vmgate");
  res.set("X-Request-Id", request_id);
  res.set(http::field::cache_control, "no-store");
  // RFC 9110 §15.5.8: a 407 says how to authenticate to the proxy. Both
  // schemes hostd takes (hostd/identity/proxy_credentials.hpp).
  if (refusal.status == 407)
    res.set(http::field::proxy_authenticate, R"(Basic realm="vmgate", Bearer realm="vmgate")");
  // One line, whatever the reason held: nothing a client sent can add lines.
  std::string line = refusal.reason;
  for (char& c : line) {
    if (c == '\r' || c == '\n') c = ' ';
  }
  res.body() = fmt::format("{} {}: {} (request {})\n", refusal.status,
                           http::obsolete_reason(res.result()), line, request_id);
  res.keep_alive(keep_alive);
  res.prepare_payload();
  return res;
}

}  // namespace vmgate::hostd
