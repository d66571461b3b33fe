// Header rewriting on the proxied path (RFC 9110 §7.6): hop-by-hop fields
// stop at hostd, the routing header never reaches the agent, and the agent
// learns who the client was from `Forwarded` (RFC 7239).
#pragma once

#include <string>
#include <string_view>

#include <boost/beast/http/message.hpp>

#include "hostd/route/request_route.hpp"

namespace vmgate::hostd {

// The `for=` value of RFC 7239 §6 for a peer as transport::describe_peer
// prints it: `"192.0.2.43:47011"`, `"[2001:db8::17]:47011"`, or `unknown`.
std::string forwarded_for(std::string_view peer);

// The client, as the agent learns of it.
struct ForwardedClient {
  std::string_view peer;  // as transport::describe_peer prints it
  // What the client says of earlier hops (Forwarded, X-Forwarded-For) is
  // kept and extended only on a trusted listener, where a local proxy may
  // stand in front of hostd; any other client could claim any address, so
  // there those fields are replaced by what hostd saw.
  bool trusted = true;
  bool tls = false;  // it spoke TLS to hostd: proto=https
};

// Prepares a client's request head for the agent: origin-form target,
// hop-by-hop and routing headers removed, Forwarded and Via appended (or
// replaced, ForwardedClient), HTTP/1.1 towards the agent. Framing
// (Content-Length, Transfer-Encoding) is left as parsed: the serializer
// re-frames the body from it.
void rewrite_request(boost::beast::http::request_header<>& request, const Route& route,
                     std::string_view vm_header, const ForwardedClient& client);

// Prepares an agent's response head for the client.
void rewrite_response(boost::beast::http::response_header<>& response);

}  // namespace vmgate::hostd
