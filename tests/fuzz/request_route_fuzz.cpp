// libFuzzer target for the request head from the parser to the agent, as
// hostd's client connection handles it (hostd/listener/client_connection.cpp):
// Beast's parser with hostd's limits, check_request_head, route_request in all
// four forms (CONNECT, the VM header, the absolute form, the Host suffix), and
// for what is forwarded, rewrite_request. Every head is routed with and
// without a host suffix, and rewritten for a trusted and an untrusted client.
// Besides "no crash, no sanitizer report, no exception", it checks what the
// rest of hostd relies on:
//   - a refusal's reason is one non-empty line (it goes into the body and
//     the log, and quotes client text);
//   - a route names valid targets only: every VM, host, group or network
//     name non-empty, printable, without space, CR or LF (request records and
//     the directory lookup take them as they are); a CONNECT is routed as one,
//     to a port; any other request to an origin-form target;
//   - the rewritten head keeps no hop-by-hop field (RFC 9110 §7.6.1), neither
//     those by definition nor those Connection named, and no routing header;
//     its target is the route's origin form, its framing what the client's
//     was, its Forwarded hostd's alone when the client is not trusted;
//   - that head, written out as hostd forwards it, is read back by another
//     parser (the agent's) with the same target and framing.
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <boost/beast/http.hpp>
#include <boost/beast/http/rfc7230.hpp>

#include "hostd/config/hostd_config.hpp"
#include "hostd/route/header_rewrite.hpp"
#include "hostd/route/request_framing.hpp"
#include "hostd/route/request_route.hpp"

namespace http = boost::beast::http;
using namespace vmgate::hostd;

namespace {

void check(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "request route property violated: %s\n", what);
  std::abort();
}

// hostd's defaults (hostd/config/hostd_config.hpp): what a listener uses
// unless the config says otherwise.
const HostdConfig& config() {
  static const HostdConfig c;
  return c;
}
constexpr std::string_view host_suffix = ".vms.example";
constexpr std::uint16_t guest_port = 5985;

// One line for the log and the body: a reason may quote a field value,
// which may hold HTAB and obs-text (RFC 9110 §5.5) but never CR, LF or NUL.
bool one_line(std::string_view text) {
  return text.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos;
}

// What a name in a target may be (hostd/route/target.hpp), written out here
// rather than asking valid_vm_name, which is under test too.
bool valid_name(std::string_view name) {
  if (name.empty() || name.size() > 253) return false;
  for (unsigned char c : name) {
    if (c <= ' ' || c >= 0x7f || c == '/' || c == ',' || c == '"' || c == '\'' || c == '\\')
      return false;
  }
  return true;
}

void check_target(const Target& target, bool in_list) {
  switch (target.kind) {
    case Target::Kind::vm:
    case Target::Kind::group:
    case Target::Kind::network:
      check(valid_name(target.value), "a target names a valid name");
      check(target.host.empty() && target.members.empty(), "a simple target is simple");
      break;
    case Target::Kind::host_vm:
      check(valid_name(target.value) && valid_name(target.host),
            "host/vm names a valid host and VM");
      check(target.members.empty(), "host/vm has no members");
      break;
    case Target::Kind::list:
      check(!in_list, "lists do not nest");
      check(target.members.size() >= 2, "a list has more than one member");
      for (const auto& member : target.members)
        check_target(member, true);
      break;
  }
  const std::string text = target.to_string();
  check(!text.empty() && one_line(text) && text.find(' ') == std::string::npos,
        "a target prints as one word");
}

// RFC 9110 §7.6.1, and what rewrite_request removes besides.
constexpr std::array hop_by_hop{
    http::field::connection,
    http::field::proxy_connection,
    http::field::keep_alive,
    http::field::te,
    http::field::trailer,
    http::field::upgrade,
    http::field::proxy_authorization,
};

bool is_framing(std::string_view name) {
  return boost::beast::iequals(name, "content-length") ||
         boost::beast::iequals(name, "transfer-encoding") || boost::beast::iequals(name, "host");
}

void check_rewrite(const http::request_header<>& client_head, const Route& route,
                   const ForwardedClient& client,
                   const http::request_parser<http::empty_body>& parser) {
  http::request_header<> head = client_head;
  const std::string_view vm_header = config().routing.vm_header;
  rewrite_request(head, route, vm_header, client);

  for (auto f : hop_by_hop)
    check(head.count(f) == 0, "no hop-by-hop field is forwarded");
  check(head.count("Proxy-Connection") == 0, "no Proxy-Connection is forwarded");
  check(head.count(vm_header) == 0, "the routing header is not forwarded");
  for (auto it = client_head.find(http::field::connection);
       it != client_head.end() && it->name() == http::field::connection; ++it) {
    for (auto token : http::token_list(it->value())) {
      if (!is_framing(token))
        check(head.count(token) == 0, "no field Connection named is forwarded");
    }
  }

  check(head.target() == route.origin_target, "the agent sees the origin form");
  check(head.version() == 11, "HTTP/1.1 towards the agent");
  check(head.method() == client_head.method(), "the method is the client's");
  check(head[http::field::content_length] == client_head[http::field::content_length],
        "Content-Length is left as parsed");
  check(head[http::field::transfer_encoding] == client_head[http::field::transfer_encoding],
        "Transfer-Encoding is left as parsed");
  check(head.count(http::field::forwarded) >= 1, "Forwarded is set");
  check(head[http::field::via].ends_with("1.1 vmgate"), "Via names hostd last");
  if (!client.trusted) {
    check(head.count(http::field::forwarded) == 1 &&
              head[http::field::forwarded].starts_with("for=") &&
              head[http::field::forwarded].find(',') == std::string_view::npos,
          "an untrusted client's Forwarded is hostd's alone");
    check(head.count("X-Real-IP") == 0 && head.count("X-Forwarded-Host") == 0 &&
              head.count("X-Forwarded-Proto") == 0 && head.count("X-Forwarded-For") <= 1,
          "an untrusted client's X-Forwarded-* are dropped");
  }
  if (route.form == RouteForm::absolute) {
    check(head.count(http::field::host) == 1, "the absolute form sets one Host");
    check(!head[http::field::host].empty(), "the absolute form's Host is its authority");
  }

  // As the agent reads it.
  std::ostringstream written;
  written << head;
  const std::string again = written.str();
  http::request_parser<http::empty_body> agent;
  agent.header_limit(1024 * 1024);
  agent.body_limit(boost::none);
  boost::system::error_code agent_ec;
  agent.put(boost::asio::buffer(again.data(), again.size()), agent_ec);
  check(!agent_ec && agent.is_header_done(), "the forwarded head parses");
  check(agent.get().target() == route.origin_target, "the agent reads the same target");
  check(agent.chunked() == parser.chunked(), "the agent reads the same chunked");
  check(agent.content_length() == parser.content_length(), "the agent reads the same length");
}

void check_route(const http::request_header<>& head, std::string_view suffix,
                 const ForwardedClient& client,
                 const http::request_parser<http::empty_body>& parser) {
  const RouteOptions options{
      .vm_header = config().routing.vm_header, .host_suffix = suffix, .guest_port = guest_port};
  auto route = route_request(head, options);
  if (!route) {
    check(!route.error().empty() && one_line(route.error()), "a route's refusal is one line");
    return;
  }
  check_target(route->target, false);
  check(route->port != 0, "a route has a port");
  if (head.method() == http::verb::connect) {
    check(route->form == RouteForm::connect, "a CONNECT is routed as one");
    return;
  }
  check(route->form != RouteForm::connect && route->form != RouteForm::sni,
        "only a CONNECT is routed as one; no head routes on SNI");
  if (route->form != RouteForm::absolute) check(route->port == guest_port, "the listener's port");
  if (route->form == RouteForm::host_suffix) check(!suffix.empty(), "a Host route needs a suffix");
  if (route->form == RouteForm::header)
    check(head.count(options.vm_header) == 1, "a header route has one VM header");
  const std::string& origin = route->origin_target;
  check(origin == "*" || origin.starts_with('/'), "the origin form is a path or *");
  check(one_line(origin) && origin.find_first_of(" \t") == std::string::npos,
        "the origin form is one word");

  check_rewrite(head, *route, client, parser);
  ForwardedClient untrusted = client;
  untrusted.trusted = false;
  check_rewrite(head, *route, untrusted, parser);
}

// describe_peer's forms (common/transport.hpp), and none.
constexpr std::array<std::string_view, 5> peers{"192.0.2.43:47011", "[2001:db8::17]:47011", "unix",
                                                "unknown", ""};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  try {
    const LimitsConfig& limits = config().limits;
    http::request_parser<http::empty_body> parser;
    parser.header_limit(limits.header_bytes);
    parser.body_limit(boost::none);
    boost::system::error_code ec;
    parser.put(boost::asio::buffer(input.data(), input.size()), ec);
    if (ec || !parser.is_header_done()) return 0;

    auto& head = parser.get();
    if (auto refused = check_request_head(head, parsed_framing(parser), limits)) return 0;

    const ForwardedClient client{
        .peer = peers[size % peers.size()], .trusted = true, .tls = (size / 5) % 2 == 1};
    check_route(head, "", client, parser);
    check_route(head, host_suffix, client, parser);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "request route: exception escaped: %s\n", e.what());
    std::abort();
  }
  return 0;
}
