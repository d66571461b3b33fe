// A message head written out as one run of bytes (RFC 9112 §2.1: start line,
// field lines, empty line), so that a head and the body bytes that came with
// it leave in one write of two buffers.
//
// Why not Beast's serializer on this path: it presents a head as a
// concatenation of one buffer per start-line piece and per field line, which
// costs ~11 K instructions per WS-Man exchange (callgrind, bench `wsman`
// workload: 16 % of hostd's 68.7 K per request) to walk, and hands sendmsg(2)
// an iovec per piece (about 100 for a WS-Man head). Copying the head into one
// buffer is a few hundred bytes of memcpy. The serializer stays where the body
// needs framing (chunked) or streams after the head.
#pragma once

#include <string>

#include <boost/beast/http/fields.hpp>
#include <boost/beast/http/message.hpp>

namespace vmgate::hostd {

namespace http = boost::beast::http;

// Appends `head` as it goes on the wire to `out`.
void append_head(const http::request_header<>& head, std::string& out);
void append_head(const http::response_header<>& head, std::string& out);

}  // namespace vmgate::hostd
