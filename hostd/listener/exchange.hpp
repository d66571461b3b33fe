// One HTTP exchange on an open channel: the request head and body go to the
// agent while its response (interim responses, head, body) comes back to the
// client. Bodies of known length move inside the kernel (splice); the rest
// stream through one chunk per direction. The outcome says whether the client
// connection and the channel can each carry another exchange.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>

#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/parser.hpp>

#include "common/asio.hpp"
#include "common/watchdog.hpp"
#include "hostd/channel/channel_pool.hpp"
#include "hostd/config/hostd_config.hpp"
#include "hostd/directory/directory.hpp"
#include "hostd/listener/request_record.hpp"
#include "hostd/refusal.hpp"

namespace vmgate::hostd {

namespace http = boost::beast::http;

// An open channel to one agent port of one VM. The client connection keeps it
// between its requests while the agent keeps it alive, and hands it to the
// pool when the connection ends or its next request goes elsewhere.
//
// The preamble that opened it named the client connection and request that
// opened it (Client, Request-Id): for a reused channel that is only its
// origin, for guestd's log. Who sent each request reaches the agent in the
// Forwarded field rewrite_request() adds to every request.
struct Upstream {
  Stream stream;
  boost::beast::flat_buffer buffer;  // agent bytes read past the current response head
  ChannelKey key;
  // Set when an exchange ended cleanly with keep-alive: no request or response
  // bytes are in flight, so the channel can carry another exchange.
  bool idle = false;
  std::chrono::steady_clock::time_point idle_since{};
};

// The two body chunks a client connection keeps for all its exchanges.
// Allocated on first use and not zeroed: make_unique would memset 64 KiB per
// connection, the largest single cost of a short request on a new connection.
class BodyChunks {
 public:
  static constexpr std::size_t size = 64 * 1024;
  char* request() { return get(request_); }
  char* response() { return get(response_); }

 private:
  static char* get(std::unique_ptr<char[]>& slot);
  std::unique_ptr<char[]> request_;
  std::unique_ptr<char[]> response_;
};

// A request body that came whole with the head, moved into the request chunk
// so head and body can reach the channel in one write (a WS-Man envelope).
struct BufferedBody {
  bool taken = false;
  bool failed = false;  // malformed: the request cannot be served
  std::size_t size = 0;
};

// Takes a Content-Length body that is already in `buffer` and fits one chunk
// into `chunks.request()`. Anything else (still arriving, chunked, large) is
// left in place for the exchange to stream.
BufferedBody take_buffered_body(http::request_parser<http::buffer_body>& request,
                                boost::beast::flat_buffer& buffer, BodyChunks& chunks);

// What an exchange works with: the client connection, the channel, and the
// connection's watchdog (armed for the exchange's idle timeout while it runs).
struct ExchangeEnds {
  Stream& client;
  boost::beast::flat_buffer& client_buffer;  // client bytes read past the request head
  Upstream& upstream;
  Watchdog& watchdog;
  BodyChunks& chunks;
  const LimitsConfig& limits;
};

// The request as forward() prepared it: its head rewritten for the agent.
struct ExchangeRequest {
  http::request_parser<http::buffer_body>& parser;
  BufferedBody whole;  // taken: the body is in chunks.request(), sent with the head
  bool has_body = false;
  bool is_head = false;
  bool client_keep_alive = false;
  unsigned client_version = 11;
};

struct ExchangeOutcome {
  error_code head_write_error;  // the channel failed before the agent had the request
  bool request_done = false;
  bool request_failed = false;  // the client stopped sending (error or cancelled)
  bool response_started = false;
  bool response_done = false;
  bool upstream_reusable = false;
  bool client_keep_alive = false;
  bool timed_out = false;
  std::optional<Refusal> refusal;  // when no response was started

  // Both sides ended cleanly: the channel can carry another exchange.
  bool channel_reusable() const { return request_done && response_done && upstream_reusable; }
};

// Runs one exchange to its end. Status, byte counts and failures go into
// `record`; nothing is thrown for anything a client or agent does.
awaitable<ExchangeOutcome> run_exchange(ExchangeEnds ends, ExchangeRequest request,
                                        RequestRecord& record, const VmRecord& vm);

}  // namespace vmgate::hostd
