#include "hostd/route/request_route.hpp"

#include <fmt/format.h>
#include <boost/beast/http/field.hpp>

namespace vmgate::hostd {
namespace http = boost::beast::http;

namespace {

bool iequals_prefix(std::string_view text, std::string_view prefix) {
  if (text.size() < prefix.size()) return false;
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(text[i])) != prefix[i]) return false;
  }
  return true;
}

bool iends_with(std::string_view text, std::string_view suffix) {
  if (text.size() < suffix.size()) return false;
  auto tail = text.substr(text.size() - suffix.size());
  for (std::size_t i = 0; i < suffix.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(tail[i])) !=
        std::tolower(static_cast<unsigned char>(suffix[i])))
      return false;
  }
  return true;
}

boost::system::result<Target, std::string> single_target(std::string_view text) {
  auto t = parse_target(text);
  if (!t) return t.error();
  return t;
}

}  // namespace

std::string_view route_form_name(RouteForm form) {
  switch (form) {
    case RouteForm::connect:
      return "connect";
    case RouteForm::header:
      return "header";
    case RouteForm::absolute:
      return "absolute";
    case RouteForm::host_suffix:
      return "host";
    case RouteForm::sni:
      return "sni";
  }
  return "header";
}

std::optional<std::string_view> name_under_suffix(std::string_view host, std::string_view suffix) {
  if (suffix.empty() || host.size() <= suffix.size() || !iends_with(host, suffix))
    return std::nullopt;
  return host.substr(0, host.size() - suffix.size());
}

boost::system::result<Route, std::string> route_request(const http::request_header<>& req,
                                                        const RouteOptions& options) {
  Route route;
  route.port = options.guest_port;
  std::string_view target = req.target();

  // 1. CONNECT vm:port — a raw tunnel to that agent port.
  if (req.method() == http::verb::connect) {
    auto authority = parse_authority(target);
    if (!authority) return fmt::format("CONNECT target: {}", authority.error());
    if (authority->port == 0) return std::string("CONNECT needs VM:PORT");
    auto t = single_target(authority->host);
    if (!t) return t.error();
    route.form = RouteForm::connect;
    route.target = std::move(*t);
    route.port = authority->port;
    return route;
  }

  // The path the agent sees: absolute-form is reduced to origin-form.
  std::string_view authority_text;
  bool absolute = false;
  if (iequals_prefix(target, "http://")) {
    absolute = true;
    auto rest = target.substr(7);
    auto slash = rest.find_first_of("/?");
    authority_text = rest.substr(0, slash);
    std::string_view path =
        slash == std::string_view::npos ? std::string_view("/") : rest.substr(slash);
    // "http://vm1?x" has an empty path: the origin form is "/?x".
    route.origin_target = path.front() == '?' ? fmt::format("/{}", path) : std::string(path);
  } else if (iequals_prefix(target, "https://")) {
    return std::string("https:// in the request line: use CONNECT for TLS to the agent");
  } else if (target.empty() || (target.front() != '/' && target != "*")) {
    return std::string("request target is neither a path nor an http:// URL");
  } else {
    route.origin_target = std::string(target);
  }

  // 2. The VM header.
  auto headers = req.equal_range(options.vm_header);
  if (headers.first != headers.second) {
    if (std::next(headers.first) != headers.second)
      return fmt::format("more than one {} header", options.vm_header);
    auto t = single_target(headers.first->value());
    if (!t) return fmt::format("{}: {}", options.vm_header, t.error());
    route.form = RouteForm::header;
    route.target = std::move(*t);
    return route;
  }

  // 3. Absolute form, as sent by clients using hostd as HTTP_PROXY.
  if (absolute) {
    auto authority = parse_authority(authority_text);
    if (!authority) return fmt::format("request URL: {}", authority.error());
    auto t = single_target(authority->host);
    if (!t) return t.error();
    route.form = RouteForm::absolute;
    route.target = std::move(*t);
    if (authority->port != 0) route.port = authority->port;
    return route;
  }

  // 4. Host header ending in the configured suffix: vm1.vms.example.
  if (!options.host_suffix.empty()) {
    std::string_view host = req[http::field::host];
    if (auto colon = host.rfind(':');
        colon != std::string_view::npos && host.find(']') == std::string_view::npos)
      host = host.substr(0, colon);
    if (host.ends_with('.')) host.remove_suffix(1);
    if (auto name = name_under_suffix(host, options.host_suffix)) {
      auto t = single_target(*name);
      if (!t) return fmt::format("Host: {}", t.error());
      route.form = RouteForm::host_suffix;
      route.target = std::move(*t);
      return route;
    }
  }

  if (options.host_suffix.empty()) {
    return fmt::format(
        "no target VM: send a {} header, use CONNECT VM:PORT, or use hostd as an "
        "HTTP proxy",
        options.vm_header);
  }
  return fmt::format(
      "no target VM: send a {} header, use CONNECT VM:PORT, use hostd as an HTTP "
      "proxy, or a Host name ending in {}",
      options.vm_header, options.host_suffix);
}

}  // namespace vmgate::hostd
