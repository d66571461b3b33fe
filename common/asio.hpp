// The one place for Asio/Beast aliases, so a Boost upgrade touches one header.
#pragma once

#include <boost/asio.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/system/result.hpp>

namespace vmgate {

namespace asio = boost::asio;
using boost::system::error_code;
template <class T>
using result = boost::system::result<T>;
template <class T>
using awaitable = asio::awaitable<T>;

// Every transport (AF_INET, AF_UNIX, AF_VSOCK) is carried by the same generic
// stream socket, so hostd, guestd and the relay have a single stream type.
using Stream = asio::generic::stream_protocol::socket;
using Acceptor = asio::basic_socket_acceptor<asio::generic::stream_protocol>;
using Endpoint = asio::generic::stream_protocol::endpoint;

// Expected outcomes (EOF, refused, aborted) come back as values, not exceptions.
inline constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

}  // namespace vmgate
