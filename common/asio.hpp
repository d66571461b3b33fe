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
//
// Its executor is its io_context's own, not the polymorphic any_io_executor:
// each pending operation on a socket otherwise carries two any_io_executor
// copies (112 bytes), and an idle tunnel is two such readiness waits in each
// daemon. Both daemons run one io_context per thread, so handlers that have
// no executor of their own (the relay's) run on the socket's thread as before.
// (bench/run --only tunnels, 10,000 idle CONNECT tunnels, hostd + guestd RSS
// per tunnel: 4.1-4.5 KiB before this and hostd's heap-free cap places,
// 3.4-3.5 KiB after; heaptrack: 216 -> 108 bytes per pending wait.)
using IoExecutor = asio::io_context::executor_type;
using Stream = asio::basic_stream_socket<asio::generic::stream_protocol, IoExecutor>;
using Acceptor = asio::basic_socket_acceptor<asio::generic::stream_protocol, IoExecutor>;
using Endpoint = asio::generic::stream_protocol::endpoint;

// The io_context executor under `executor` (a coroutine's, a strand's): what
// a socket is made on. Every execution context in vmgate is an io_context.
inline IoExecutor io_executor_of(const asio::any_io_executor& executor) {
  if (const IoExecutor* io = executor.target<IoExecutor>()) return *io;
  return static_cast<asio::io_context&>(asio::query(executor, asio::execution::context))
      .get_executor();
}

// Expected outcomes (EOF, refused, aborted) come back as values, not exceptions.
inline constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

}  // namespace vmgate
