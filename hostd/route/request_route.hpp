// Reading the target of one request, in the order of precedence of
// docs/architecture.md ("Naming the VM"):
// CONNECT, the VM header, the absolute (forward-proxy) form, the Host suffix.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <boost/beast/http/message.hpp>
#include <boost/system/result.hpp>

#include "hostd/route/target.hpp"

namespace vmgate::hostd {

// sni: a passthrough listener's route, from the TLS ClientHello's server
// name (hostd/route/client_hello.hpp), never from a request head.
enum class RouteForm { connect, header, absolute, host_suffix, sni };
std::string_view route_form_name(RouteForm form);

struct RouteOptions {
  std::string_view vm_header;    // "X-VM-Id"
  std::string_view host_suffix;  // ".vms.example" or empty
  std::uint16_t guest_port = 0;  // the listener's default agent port
};

struct Route {
  RouteForm form = RouteForm::header;
  Target target;
  std::uint16_t port = 0;
  std::string origin_target;  // the request-target the agent sees ("/wsman")
};

// The labels before `suffix` (".vms.example") in a DNS name under it,
// compared without regard to case: "vm1" for "VM1.vms.example". Empty when
// `host` is not under the suffix, or is the suffix alone. The Host header's
// form and a passthrough listener's SNI name both name a VM this way.
std::optional<std::string_view> name_under_suffix(std::string_view host, std::string_view suffix);

// A 400 reason when the request names no usable target.
boost::system::result<Route, std::string> route_request(
    const boost::beast::http::request_header<>& request, const RouteOptions& options);

}  // namespace vmgate::hostd
