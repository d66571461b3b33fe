// The relay between two byte streams, used by both daemons: a CONNECT tunnel
// in hostd, the channel-to-agent leg in guestd.
//
// Two copy loops joined with `&&` (not `||`: one direction finishing must not
// cut the other, or a response is truncated after the client half-closes).
// At EOF the opposite side gets shutdown(send), so half-close crosses the
// relay. An idle timeout closes both when neither direction moves.
// A direction allocates its buffer only once data arrives, so idle tunnels
// cost a coroutine frame and no buffer.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>

#include "common/asio.hpp"
#include "common/deadline.hpp"

namespace vmgate {

struct RelayResult {
  std::uint64_t a_to_b = 0;
  std::uint64_t b_to_a = 0;
  bool idle_timeout = false;
  error_code error;  // the first error that was not an orderly EOF
};

inline constexpr std::size_t relay_buffer_size = 64 * 1024;

namespace detail {

template <class From, class To, class Other>
awaitable<void> relay_direction(From& from, To& to, Other& a, Other& b, std::uint64_t& count,
                                Deadline& deadline, std::chrono::milliseconds idle,
                                error_code& first_error) {
  std::unique_ptr<char[]> buffer;
  for (;;) {
    auto [wait_ec] = co_await from.async_wait(From::wait_read, use_tuple);
    if (!wait_ec && !buffer) buffer = std::make_unique<char[]>(relay_buffer_size);
    std::size_t n = 0;
    error_code ec = wait_ec;
    if (!ec)
      std::tie(ec, n) =
          co_await from.async_read_some(asio::buffer(buffer.get(), relay_buffer_size), use_tuple);
    if (n > 0) {
      deadline.expires_after(idle);
      auto [write_ec, written] =
          co_await asio::async_write(to, asio::buffer(buffer.get(), n), use_tuple);
      count += written;
      if (write_ec) ec = write_ec;
      deadline.expires_after(idle);
    }
    if (ec == asio::error::eof) {
      error_code ignored;
      to.shutdown(asio::socket_base::shutdown_send, ignored);
      co_return;
    }
    if (ec) {
      if (!first_error && ec != asio::error::operation_aborted) first_error = ec;
      // The relay is broken: stop the other direction too.
      error_code ignored;
      a.cancel(ignored);
      b.cancel(ignored);
      co_return;
    }
  }
}

}  // namespace detail

// Relays until both directions have ended (EOF both ways), an error, or
// `idle` passes without a byte moving. Does not close the streams.
template <class S>
awaitable<RelayResult> relay(S& a, S& b, std::chrono::milliseconds idle) {
  using namespace asio::experimental::awaitable_operators;
  RelayResult result;
  Deadline deadline(co_await asio::this_coro::executor);
  deadline.expires_after(idle);
  co_await ((detail::relay_direction(a, b, a, b, result.a_to_b, deadline, idle, result.error) &&
             detail::relay_direction(b, a, a, b, result.b_to_a, deadline, idle, result.error)) ||
            deadline.watch([&] {
              error_code ignored;
              a.cancel(ignored);
              b.cancel(ignored);
            }));
  result.idle_timeout = deadline.expired();
  co_return result;
}

}  // namespace vmgate
