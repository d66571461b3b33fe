// Agent authentication bound to a connection (NTLM, Negotiate: Kerberos or
// SPNEGO) authenticates the TCP connection, not the request: a client doing
// it needs each of its requests on the same agent connection. Such a
// channel is private to its client connection, never pooled or shared.
#pragma once

#include <string_view>

#include <boost/beast/http/message.hpp>

namespace vmgate::hostd {

// A request whose Authorization speaks such a scheme (RFC 4559, MS-NTHT).
bool binds_connection(const boost::beast::http::request_header<>& request);
// A 401 whose WWW-Authenticate offers such a scheme: the client's next step
// must reach the same agent connection.
bool binds_connection(const boost::beast::http::response_header<>& response);

}  // namespace vmgate::hostd
