// One HTTP exchange on an open channel: the request head and body go to the
// agent while its response (interim responses, head, body) comes back to the
// client. Bodies of known length move inside the kernel (splice) when the
// client's stream is a plain socket; the rest, and everything to or from a
// TLS client, stream through one chunk per direction. How it ended says what the client
// connection and the channel can each do next.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>

#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/parser.hpp>

#include "common/asio.hpp"
#include "common/deadline.hpp"
#include "hostd/channel/channel.hpp"
#include "hostd/config/hostd_config.hpp"
#include "hostd/directory/directory.hpp"
#include "hostd/proxy/client_stream.hpp"
#include "hostd/proxy/request_record.hpp"
#include "hostd/refusal.hpp"

namespace vmgate::hostd {

namespace http = boost::beast::http;

// The two body chunks of a client connection's exchange. Allocated on first
// use and not zeroed (make_unique would memset 64 KiB, the largest single
// cost of a short request on a new connection), and released between
// exchanges, so an idle connection holds neither: the allocator gives the
// same memory to the next exchange on the thread.
class BodyChunks {
 public:
  static constexpr std::size_t size = 64 * 1024;
  char* request() { return get(request_); }
  char* response() { return get(response_); }
  void release() {
    request_.reset();
    response_.reset();
  }

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
// connection's deadline (set to the idle timeout while the exchange runs).
struct ExchangeEnds {
  ClientStream& client;
  boost::beast::flat_buffer& client_buffer;  // client bytes read past the request head
  Channel& channel;
  Deadline& deadline;
  BodyChunks& chunks;
  const LimitsConfig& limits;
};

// The request as the client connection prepared it: its head rewritten for the agent.
struct ExchangeRequest {
  http::request_parser<http::buffer_body>& parser;
  BufferedBody whole;  // taken: the body is in chunks.request(), sent with the head
  bool has_body = false;
  bool is_head = false;
  bool client_keep_alive = false;
  unsigned client_version = 11;
};

// How an exchange ended.
enum class ExchangeEnd {
  // The agent's response reached the client whole:
  keep_both,     // the client connection reads its next request; the channel is idle
  keep_client,   // the client goes on; the channel is done (the agent closes it)
  keep_channel,  // the client connection ends (it asked to); the channel is idle
  // The response was cut, or could not be framed for another: both close.
  close_both,
  // No response reached the client; both close, and the client is answered
  // `refusal`, unless it is gone:
  channel_failed,  // the channel broke before the agent answered: a request
                   // that carries no body may go again on a new channel
  refused,         // the agent's answer cannot be relayed, or it timed out
  client_gone,     // the client went away first
};

struct ExchangeOutcome {
  ExchangeEnd end = ExchangeEnd::close_both;
  Refusal refusal;  // channel_failed, refused
  // The agent answered 401 offering NTLM or Negotiate: the client's next
  // step must reach this same agent connection (proxy/connection_auth.hpp).
  bool agent_binds_connection = false;
  // A response started and did not finish (close_both): the client
  // connection must end as cut, not in order (ClientStream::close), so a
  // client reading to the end of it can tell.
  bool response_cut = false;

  bool client_continues() const {
    return end == ExchangeEnd::keep_both || end == ExchangeEnd::keep_client;
  }
  bool channel_reusable() const {
    return end == ExchangeEnd::keep_both || end == ExchangeEnd::keep_channel;
  }
  bool answered() const {
    return end != ExchangeEnd::channel_failed && end != ExchangeEnd::refused &&
           end != ExchangeEnd::client_gone;
  }
};

// Runs one exchange to its end. Status, byte counts and failures go into
// `record`; nothing is thrown for anything a client or agent does.
awaitable<ExchangeOutcome> run_exchange(ExchangeEnds ends, ExchangeRequest request,
                                        RequestRecord& record, const VmRecord& vm);

}  // namespace vmgate::hostd
