#include "hostd/route/header_rewrite.hpp"

#include <algorithm>
#include <vector>

#include <fmt/format.h>
#include <boost/asio/ip/address.hpp>
#include <boost/beast/http/field.hpp>
#include <boost/beast/http/rfc7230.hpp>

namespace vmgate::hostd {
namespace http = boost::beast::http;

namespace {

constexpr std::string_view via_value = "1.1 vmgate";

bool is_framing(std::string_view name) {
  return boost::beast::iequals(name, "content-length") ||
         boost::beast::iequals(name, "transfer-encoding") || boost::beast::iequals(name, "host");
}

// RFC 9110 §7.6.1: Connection, the fields it names, and the fields that are
// hop-by-hop by definition.
template <class Header>
void remove_hop_by_hop(Header& h, std::initializer_list<http::field> always) {
  // Most messages carry none of these; one pass over the fields is cheaper
  // than a lookup per name.
  bool present = false;
  for (const auto& f : h) {
    auto name = f.name();
    if (name == http::field::connection || name == http::field::proxy_connection ||
        std::find(always.begin(), always.end(), name) != always.end()) {
      present = true;
      break;
    }
  }
  if (!present) return;
  std::vector<std::string> named;
  for (auto it = h.find(http::field::connection);
       it != h.end() && it->name() == http::field::connection; ++it) {
    for (auto token : http::token_list(it->value())) {
      if (!is_framing(token)) named.emplace_back(token);
    }
  }
  for (const auto& name : named)
    h.erase(name);
  h.erase(http::field::connection);
  h.erase("Proxy-Connection");
  for (auto f : always)
    h.erase(f);
}

void append_field(http::fields& h, http::field f, std::string_view value) {
  auto it = h.find(f);
  if (it == h.end()) {
    h.insert(f, value);
    return;
  }
  auto existing = it->value();
  if (existing.empty()) {
    h.set(f, value);
  } else {
    h.set(f, fmt::format("{}, {}", existing, value));
  }
}

}  // namespace

std::string forwarded_for(std::string_view peer) {
  if (peer.empty() || peer == "unix" || peer == "unknown") return "unknown";
  // host:port always needs quoting (RFC 7239 §4: ':' and '[' are not token characters).
  return fmt::format("\"{}\"", peer);
}

namespace {

// "192.0.2.43" of "192.0.2.43:47011", "2001:db8::17" of "[2001:db8::17]:47011".
std::string_view address_of(std::string_view peer) {
  if (peer.starts_with('[')) {
    auto end = peer.find(']');
    return end == std::string_view::npos ? peer : peer.substr(1, end - 1);
  }
  auto colon = peer.rfind(':');
  return colon == std::string_view::npos ? peer : peer.substr(0, colon);
}

}  // namespace

void rewrite_request(http::request_header<>& req, const Route& route, std::string_view vm_header,
                     const ForwardedClient& client) {
  remove_hop_by_hop(req, {http::field::keep_alive, http::field::te, http::field::trailer,
                          http::field::upgrade, http::field::proxy_authorization});
  req.erase(vm_header);
  if (route.form == RouteForm::absolute) {
    // RFC 9112 §3.2.2: a proxy replaces Host with the target URI's authority.
    std::string_view target = req.target();
    auto rest = target.substr(7);
    req.set(http::field::host, rest.substr(0, rest.find_first_of("/?")));
  }
  req.target(route.origin_target);
  req.version(11);
  const std::string forwarded =
      fmt::format("for={}{}", forwarded_for(client.peer), client.tls ? ";proto=https" : "");
  if (client.trusted) {
    append_field(req, http::field::forwarded, forwarded);
  } else {
    req.set(http::field::forwarded, forwarded);
    req.erase("X-Real-IP");
    req.erase("X-Forwarded-Host");
    req.erase("X-Forwarded-Proto");
    // X-Forwarded-For carries addresses only: a unix peer, or a guest
    // (peer "vm:NAME"), has none to give.
    const std::string_view address = address_of(client.peer);
    boost::system::error_code not_ip;
    boost::asio::ip::make_address(address, not_ip);
    if (not_ip) {
      req.erase("X-Forwarded-For");
    } else {
      req.set("X-Forwarded-For", address);
    }
  }
  append_field(req, http::field::via, via_value);
}

void rewrite_response(http::response_header<>& res) {
  remove_hop_by_hop(res, {http::field::keep_alive, http::field::trailer, http::field::upgrade,
                          http::field::proxy_authenticate});
  append_field(res, http::field::via, via_value);
}

}  // namespace vmgate::hostd
