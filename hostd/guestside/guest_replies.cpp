#include "hostd/guestside/guest_replies.hpp"

#include <array>
#include <utility>

#include <boost/beast/http.hpp>

#include "common/deadline.hpp"

namespace vmgate::hostd::guestside {
namespace {

namespace http = boost::beast::http;

// After a refusal, what the guest still sends is read and dropped, up to
// this much, so that closing does not reset the connection and destroy the
// answer in flight (a close with unread data resets vsock and TCP).
constexpr std::size_t linger_max_bytes = 64 * 1024;

awaitable<bool> drain(Stream& guest) {
  std::array<char, 4096> sink;
  std::size_t drained = 0;
  while (drained < linger_max_bytes) {
    auto [read_ec, got] = co_await guest.async_read_some(asio::buffer(sink), use_tuple);
    drained += got;
    if (read_ec) break;
  }
  co_return true;
}

}  // namespace

void close_stream(Stream& stream) {
  error_code ignored;
  stream.close(ignored);
}

awaitable<void> write_and_linger(Stream& guest, std::string bytes,
                                 std::chrono::milliseconds linger) {
  auto [ec, n] = co_await asio::async_write(guest, asio::buffer(bytes), use_tuple);
  if (!ec) {
    error_code ignored;
    guest.shutdown(asio::socket_base::shutdown_send, ignored);
    co_await within(linger, drain(guest));
  }
  close_stream(guest);
}

// guestd's answers map transport errors to HTTP-like statuses; a guest's
// refusal token says which kind in one word.
std::string token_for(unsigned status) {
  switch (status) {
    case 400:
      return "bad-request";
    case 403:
      return "not-allowed";
    case 404:
      return "not-found";
    case 501:
      return "not-implemented";
    case 503:
      return "unavailable";
    case 504:
      return "timeout";
    default:
      return "unreachable";
  }
}

GuestAnswer refuse(unsigned status, std::string token, std::string reason) {
  return GuestAnswer{status, std::move(token), std::move(reason)};
}

awaitable<void> answer_http(Stream& guest, unsigned status, std::string_view text,
                            std::chrono::milliseconds linger) {
  http::response<http::string_body> res{static_cast<http::status>(status), 11};
  res.set(http::field::content_type, "text/plain");
  res.keep_alive(false);
  res.body() = std::string(text) + "\n";
  res.prepare_payload();
  co_await http::async_write(guest, res, use_tuple);  // what the guest does not read is its loss
  co_await write_and_linger(guest, {}, linger);
}

}  // namespace vmgate::hostd::guestside
