#include "hostd/guestside/guest_replies.hpp"

#include <utility>

#include <boost/beast/http.hpp>

#include "common/deadline.hpp"
#include "common/lingering_close.hpp"

namespace vmgate::hostd::guestside {

namespace http = boost::beast::http;

void close_stream(Stream& stream) {
  error_code ignored;
  stream.close(ignored);
}

awaitable<void> write_and_linger(Stream& guest, std::string bytes,
                                 std::chrono::milliseconds linger) {
  auto [ec, n] = co_await asio::async_write(guest, asio::buffer(bytes), use_tuple);
  if (!ec) co_await within(linger, half_close_and_drain(guest));
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
