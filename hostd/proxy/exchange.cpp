#include "hostd/proxy/exchange.hpp"

#include <algorithm>
#include <array>
#include <functional>

#include <fmt/format.h>
#include <boost/beast/http.hpp>

#include "common/splice.hpp"
#include "hostd/proxy/connection_auth.hpp"
#include "hostd/proxy/head_bytes.hpp"
#include "hostd/route/header_rewrite.hpp"
#include "hostd/route/request_framing.hpp"

namespace vmgate::hostd {
namespace beast = boost::beast;
using namespace asio::experimental::awaitable_operators;

namespace {

constexpr std::size_t body_chunk = BodyChunks::size;
constexpr std::size_t read_buffer_size = 64 * 1024;
constexpr std::size_t response_read_size = 16 * 1024;
// Room, beyond a read and the configured limits, for a chunk-size line's
// size and line ends (RFC 9112 §7.1).
constexpr std::size_t chunk_line_room = 64;

// Beast buffers a chunk-size line, or a trailer section, whole before it
// parses it: while a chunked body streams, its buffer grows by no more than
// a read and the limits on both (buffer_overflow past that).
class ChunkLineBound {
 public:
  ChunkLineBound(beast::flat_buffer& buffer, const LimitsConfig& limits, bool chunked)
      : buffer_(buffer), unbounded_(buffer.max_size()) {
    if (chunked) {
      buffer.max_size(buffer.size() + read_buffer_size + chunk_line_room +
                      limits.chunk_extension_bytes + limits.trailer_bytes);
    }
  }
  ChunkLineBound(const ChunkLineBound&) = delete;
  ChunkLineBound& operator=(const ChunkLineBound&) = delete;
  ~ChunkLineBound() { buffer_.max_size(unbounded_); }

 private:
  beast::flat_buffer& buffer_;
  const std::size_t unbounded_;
};

// The bytes of a head's fields as they would be written.
template <class Fields>
std::size_t field_bytes(const Fields& fields) {
  std::size_t n = 0;
  for (const auto& f : fields)
    n += f.name_string().size() + 2 + f.value().size() + 2;
  return n;
}

// A request body hostd cannot frame as it streams, or whose chunked coding
// goes past the limits: the client's fault, answered 400 if no response started.
bool malformed_body(error_code ec) {
  return ec == http::error::bad_chunk || ec == http::error::bad_chunk_extension ||
         ec == http::error::bad_field || ec == http::error::bad_value ||
         ec == http::error::bad_line_ending || ec == http::error::bad_content_length ||
         ec == http::error::bad_transfer_encoding || ec == http::error::header_limit ||
         ec == http::error::buffer_overflow;
}

class Exchange {
 public:
  Exchange(const ExchangeEnds& ends, const ExchangeRequest& request, RequestRecord& record,
           const VmRecord& vm)
      : client_(ends.client),
        client_buffer_(ends.client_buffer),
        channel_(ends.channel),
        deadline_(ends.deadline),
        chunks_(ends.chunks),
        limits_(ends.limits),
        request_in_(request),
        rec_(record),
        vm_(vm) {
    client_keep_alive_ = request.client_keep_alive;
    // Past the idle timeout both streams are cancelled; whatever is waiting
    // then decides what the client sees (504 if no response started).
    deadline_.expires_after(limits_.idle_timeout, [this] {
      timed_out_ = true;
      error_code ignored;
      client_.cancel(ignored);
      channel_.stream.cancel(ignored);
    });
  }
  Exchange(const Exchange&) = delete;
  Exchange& operator=(const Exchange&) = delete;
  // The deadline's action names this exchange: it must not outlive it.
  ~Exchange() { deadline_.expires_never(); }

  awaitable<ExchangeOutcome> run() {
    auto& msg = request_in_.parser.get();
    // Only a chunked body has chunk headers; Beast takes the callback only
    // before the body's first byte is parsed, which a body taken whole with
    // its head already was (an assertion in debug builds).
    if (request_in_.parser.chunked()) request_in_.parser.on_chunk_header(limit_chunk_extensions_);
    http::serializer<true, http::buffer_body> writer{msg};
    error_code head_error;
    // No body, or a Content-Length one read whole with the head: nothing to
    // frame, so head and body leave as two plain buffers.
    const bool one_write = !request_in_.has_body || request_in_.whole.taken;
    if (one_write) {
      head_.clear();
      append_head(msg, head_);
      const std::array<asio::const_buffer, 2> message{
          asio::buffer(head_),
          asio::buffer(chunks_.request(), request_in_.whole.taken ? request_in_.whole.size : 0)};
      auto [ec, n] = co_await asio::async_write(channel_.stream, message, use_tuple);
      head_error = ec;
    } else {
      auto [ec, n] = co_await http::async_write_header(channel_.stream, writer, use_tuple);
      head_error = ec;
    }
    if (head_error) {
      co_return ExchangeOutcome{
          ExchangeEnd::channel_failed,
          Refusal{502, fmt::format("channel to vm {} failed: {}", vm_.name, head_error.message())}};
    }
    if (one_write) {
      // The response is read after the whole request, not beside a body pump.
      request_ = RequestSide::sent;
      co_await relay_response();
    } else {
      co_await (send_request_body(writer) && relay_response());
    }
    co_return outcome();
  }

 private:
  // Moves the last `left` bytes of a body of known length from `from` to `to`:
  // first those already read into `buffer` with the head, then the rest inside
  // the kernel (splice). Exactly that many, so both connections can carry the
  // next message. Counts into `counted`; progress keeps the deadline away.
  awaitable<MoveResult> splice_rest_of_body(Stream& from, beast::flat_buffer& buffer, Stream& to,
                                            std::uint64_t left, std::uint64_t& counted) {
    const std::size_t ahead =
        static_cast<std::size_t>(std::min<std::uint64_t>(buffer.size(), left));
    auto count = [this, &counted](std::size_t n) {
      counted += n;
      deadline_.extend(limits_.idle_timeout);
    };
    const OnMoved on_moved(count);
    const asio::const_buffer already_read(buffer.data().data(), ahead);
    MoveResult moved = co_await move_exactly(from, to, left, already_read, on_moved);
    buffer.consume(ahead);
    co_return moved;
  }

  // Streams the rest of a body whose end the parser finds as it goes (chunked,
  // or ended by the connection) through `chunk`: a piece parsed from `from`,
  // then serialized to `to`, until parser and serializer are both done. Bytes
  // written are added to `counted`; progress keeps the deadline away. `stop`
  // set between pieces ends it as a cancelled read would.
  template <bool isRequest, class From, class To>
  awaitable<MoveResult> pump_body(http::parser<isRequest, http::buffer_body>& parser, From& from,
                                  beast::flat_buffer& from_buffer,
                                  http::serializer<isRequest, http::buffer_body>& writer, To& to,
                                  char* chunk, std::uint64_t& counted, const bool& stop) {
    MoveResult result;
    auto& body = parser.get().body();
    // Trailer fields join the head's (RFC 9112 §7.1.2); they are dropped here
    // (the serializer writes none), but bounded.
    const std::size_t head_bytes = parser.chunked() ? field_bytes(parser.get()) : 0;
    const ChunkLineBound bound(from_buffer, limits_, parser.chunked());
    // Beast sizes each read by the buffer's free capacity (512 bytes at
    // least): without room reserved, a body streams in 512-byte reads.
    if (!parser.is_done()) from_buffer.reserve(read_buffer_size);
    for (;;) {
      if (stop) {
        result.read_error = asio::error::operation_aborted;
        co_return result;
      }
      if (!parser.is_done()) {
        body.data = chunk;
        body.size = body_chunk;
        auto [ec, n] = co_await http::async_read(from, from_buffer, parser, use_tuple);
        if (ec && ec != http::error::need_buffer) {
          result.read_error = ec;
          co_return result;
        }
        body.size = body_chunk - body.size;
        body.data = chunk;
        body.more = !parser.is_done();
        if (parser.is_done() && parser.chunked() &&
            field_bytes(parser.get()) - head_bytes > limits_.trailer_bytes) {
          result.read_error = http::error::header_limit;
          co_return result;
        }
      } else {
        body.data = nullptr;
        body.size = 0;
        body.more = false;
      }
      deadline_.extend(limits_.idle_timeout);
      if (writer.is_done()) co_return result;
      const std::size_t piece = body.size;
      auto [ec, n] = co_await http::async_write(to, writer, use_tuple);
      if (ec && ec != http::error::need_buffer) {
        result.write_error = ec;
        co_return result;
      }
      result.bytes += piece;
      counted += piece;
      if (parser.is_done() && writer.is_done()) co_return result;
    }
  }

  // The rest of the request body, after its head went alone.
  awaitable<void> send_request_body(http::serializer<true, http::buffer_body>& writer) {
    auto& request = request_in_.parser;
    MoveResult moved;
    if (!client_.is_tls() && !request.is_done() && !request.chunked() &&
        request.content_length_remaining()) {
      // Known length: the rest of the body goes client -> channel inside the
      // kernel (splice), after the bytes already read with the head.
      moved = co_await splice_rest_of_body(client_.socket(), client_buffer_, channel_.stream,
                                           *request.content_length_remaining(), rec_.bytes_in);
    } else {
      moved = co_await pump_body(request, client_, client_buffer_, writer, channel_.stream,
                                 chunks_.request(), rec_.bytes_in, stop_request_);
    }
    if (stop_request_) {  // the response side ended the exchange
      request_ = RequestSide::stopped;
      co_return;
    }
    if (moved.read_error) {
      request_ = RequestSide::stopped;
      // The client went away mid-body (an end or a reset, not a body it got
      // wrong): the agent's request is cut with the channel.
      if (!timed_out_ && moved.read_error != http::error::body_limit &&
          !malformed_body(moved.read_error))
        rec_.note_aborted(Aborted::client);
      if (moved.read_error == http::error::body_limit && response_ == ResponseSide::awaited) {
        refusal_ = Refusal{413, fmt::format("request body exceeds the limit of {} bytes",
                                            limits_.max_request_body)};
      } else if (malformed_body(moved.read_error) && response_ == ResponseSide::awaited) {
        refusal_ = Refusal{400, malformed_body_reason(moved.read_error)};
      }
      error_code ignored;
      channel_.stream.cancel(ignored);
      co_return;
    }
    // A failed write: the agent may have answered early and closed; the
    // response side decides.
    if (moved.write_error) co_return;
    request_ = RequestSide::sent;
  }

  std::string malformed_body_reason(error_code ec) const {
    if (ec == http::error::bad_chunk_extension && extensions_over_)
      return fmt::format("chunk extensions exceed {} bytes", limits_.chunk_extension_bytes);
    if (ec == http::error::header_limit)
      return fmt::format("chunked trailer section exceeds {} bytes", limits_.trailer_bytes);
    if (ec == http::error::buffer_overflow)
      return fmt::format("chunk-size line or trailer section exceeds {} bytes",
                         std::max(limits_.chunk_extension_bytes, limits_.trailer_bytes));
    return fmt::format("malformed chunked request body: {}", ec.message());
  }

  // Interim responses, then the final response head and its body.
  awaitable<void> relay_response() {
    for (;;) {
      http::response_parser<http::buffer_body> response;
      response.header_limit(limits_.header_bytes);
      response.body_limit(boost::none);
      if (request_in_.is_head) response.skip(true);
      // A whole small response (an 8 KiB WS-Man envelope and its head) in one
      // read, so it leaves in one write too (see the client connection's
      // request_read_size).
      if (channel_.buffer.capacity() < response_read_size)
        channel_.buffer.reserve(response_read_size);
      auto [ec, n] =
          co_await http::async_read_header(channel_.stream, channel_.buffer, response, use_tuple);
      if (ec) {
        if (request_ == RequestSide::stopped && !refusal_) co_return;  // the client is gone
        if (!refusal_) unanswered(ec, n);
        stop_reading_client();
        co_return;
      }
      auto& res = response.get();
      const unsigned code = res.result_int();
      if (code == 101) {
        refusal_ = Refusal{502, "agent switched protocols; use CONNECT for upgraded connections"};
        stop_reading_client();
        co_return;
      }
      if (code >= 100 && code < 200) {
        if (!co_await relay_interim(res)) co_return;
        continue;
      }
      co_await relay_final_response(response);
      co_return;
    }
  }

  // Why the agent's response head never came. A channel that ended before
  // any of it (`read` bytes) may have been closed by the agent as the request
  // arrived: a failed channel, not a failed agent.
  void unanswered(error_code ec, std::size_t read) {
    if (timed_out_) {
      refusal_ = Refusal{504, fmt::format("vm {} did not answer within {} ms", vm_.name,
                                          limits_.idle_timeout.count())};
    } else if (ec == http::error::header_limit) {
      refusal_ =
          Refusal{502, fmt::format("agent response head exceeds {} bytes", limits_.header_bytes)};
    } else if (ec.category() == http::make_error_code(http::error::bad_version).category() &&
               ec != http::error::end_of_stream && ec != http::error::partial_message) {
      refusal_ = Refusal{502, fmt::format("malformed response head from the agent on vm {} ({})",
                                          vm_.name, ec.message())};
    } else {
      refusal_ = Refusal{502, fmt::format("agent on vm {} port {} closed the connection before "
                                          "answering ({})",
                                          vm_.name, rec_.port, ec.message())};
      channel_failed_ = read == 0 && channel_.buffer.size() == 0;
    }
  }

  // Interim responses (100 Continue) go to HTTP/1.1 clients only (RFC 9110 §15.2).
  awaitable<bool> relay_interim(const http::response<http::buffer_body>& res) {
    if (request_in_.client_version < 11) co_return true;
    http::response<http::empty_body> interim{res.result(), 11};
    for (const auto& f : res)
      interim.insert(f.name_string(), f.value());
    rewrite_response(interim);
    auto [ec, n] = co_await http::async_write(client_, interim, use_tuple);
    rec_.bytes_out += n;
    if (ec) {
      request_ = RequestSide::stopped;
      rec_.note_aborted(Aborted::client);
      co_return false;
    }
    co_return true;
  }

  awaitable<void> relay_final_response(http::response_parser<http::buffer_body>& response) {
    auto& res = response.get();
    if (auto refused = check_response_head(res, parsed_framing(response))) {
      refusal_ = std::move(*refused);
      stop_reading_client();
      co_return;
    }
    if (response.chunked()) response.on_chunk_header(limit_chunk_extensions_);
    rec_.status = res.result_int();
    agent_keeps_channel_ = res.keep_alive() && !response.need_eof();
    agent_binds_connection_ = binds_connection(res);
    rewrite_response(res);
    bool keep = client_keep_alive_;
    if (request_in_.client_version < 11) {
      // No chunked coding for HTTP/1.0 clients: the body ends with the connection.
      if (res.chunked() || response.need_eof()) {
        res.chunked(false);
        keep = false;
      }
      res.version(10);
    } else {
      res.version(11);
      // Chunked keeps the client connection usable when the agent ends its body by closing.
      if (response.need_eof() && !request_in_.is_head) res.chunked(true);
    }
    res.keep_alive(keep);
    client_keep_alive_ = keep;

    http::serializer<false, http::buffer_body> writer{res};
    const auto prefilled =
        request_in_.is_head ? BufferedBody{} : take_buffered_response_body(response);
    if (prefilled.failed) {
      refusal_ = Refusal{502, "malformed response body from the agent"};
      stop_reading_client();
      co_return;
    }
    response_ = ResponseSide::started;
    error_code hec;
    // What is left of a known-length body after the bytes read with the head.
    const bool rest_spliced = !client_.is_tls() && !response.is_done() && !response.chunked() &&
                              response.content_length_remaining();
    const bool plain_head =
        !res.chunked() && (request_in_.is_head || response.is_done() || rest_spliced);
    if (plain_head) {
      // Nothing to frame and nothing left for the serializer to stream after
      // the head: head and body bytes as two plain buffers.
      head_.clear();
      append_head(res, head_);
      const std::array<asio::const_buffer, 2> message{
          asio::buffer(head_), asio::buffer(res.body().data, prefilled.taken ? prefilled.size : 0)};
      auto [ec, n] = co_await asio::async_write(client_, message, use_tuple);
      hec = ec;
      rec_.bytes_out += n;
    } else if (prefilled.taken) {
      // Head and the body bytes that came with it, in one write.
      auto [ec, n] = co_await http::async_write(client_, writer, use_tuple);
      hec = ec == http::error::need_buffer ? error_code{} : ec;
      rec_.bytes_out += n;
    } else {
      auto [ec, n] = co_await http::async_write_header(client_, writer, use_tuple);
      hec = ec;
      rec_.bytes_out += n;
    }
    if (hec) {
      request_ = RequestSide::stopped;
      rec_.note_aborted(Aborted::client);
      stop_reading_client();
      co_return;
    }
    if (!request_in_.is_head && !(plain_head && response.is_done())) {
      MoveResult moved;
      if (rest_spliced) {
        // Known length: the rest of the body goes channel -> client inside the
        // kernel (splice), after the bytes already read with the head. Exactly
        // that many, so the channel stays usable for the next response.
        moved = co_await splice_rest_of_body(channel_.stream, channel_.buffer, client_.socket(),
                                             *response.content_length_remaining(), rec_.bytes_out);
      } else {
        moved = co_await pump_body(response, channel_.stream, channel_.buffer, writer, client_,
                                   chunks_.response(), rec_.bytes_out, never_stop);
      }
      if (moved.failed()) {
        // Mid-body failure: the client sees a truncated message and a closed
        // connection (outcome().response_cut), never the end of one: no last
        // chunk (RFC 9112 §7.1), no padding to the length, no close_notify.
        if (moved.write_error) {
          request_ = RequestSide::stopped;
          rec_.note_aborted(Aborted::client);
        } else if (!timed_out_) {
          rec_.note_aborted(Aborted::upstream);
        }
        // A client that reads too slowly to make progress (or an agent that
        // stopped sending) ends here, at idle_timeout: the record says so.
        if (timed_out_) rec_.reason = "idle timeout";
        client_keep_alive_ = false;
        stop_reading_client();
        co_return;
      }
    }
    response_ = ResponseSide::complete;
    if (request_ != RequestSide::sent) stop_reading_client();
  }

  // Parses response body bytes already read with the head into the response
  // chunk, as much as fits, so they can leave with the head.
  BufferedBody take_buffered_response_body(http::response_parser<http::buffer_body>& response) {
    auto& buffer = channel_.buffer;
    if (response.is_done() || buffer.size() == 0) return {};
    auto& body = response.get().body();
    char* chunk = chunks_.response();
    body.data = chunk;
    body.size = body_chunk;
    response.eager(true);
    while (!response.is_done() && buffer.size() > 0 && body.size > 0) {
      error_code ec;
      auto used = response.put(buffer.data(), ec);
      buffer.consume(used);
      if (ec == http::error::need_buffer || ec == http::error::need_more) break;
      if (ec) return {.failed = true};
      if (used == 0) break;
    }
    const std::size_t taken = body_chunk - body.size;
    body.data = chunk;
    body.size = taken;
    body.more = !response.is_done();
    if (taken == 0 && body.more) return {};
    return {.taken = true, .size = taken};
  }

  // The response is over (or failed) while the request body is still coming:
  // stop reading it; the connection cannot carry another request.
  void stop_reading_client() {
    if (request_ == RequestSide::sent) return;
    stop_request_ = true;
    client_keep_alive_ = false;
    error_code ignored;
    client_.cancel(ignored);
    // The channel has an unfinished request on it: it cannot be reused either.
    channel_.stream.cancel(ignored);
  }

  // What the client connection and the channel can do next, from how each
  // side of the exchange ended.
  ExchangeOutcome outcome() const {
    if (response_ == ResponseSide::awaited) {
      if (request_ == RequestSide::stopped && !refusal_) return {ExchangeEnd::client_gone, {}};
      Refusal refusal = refusal_.value_or(Refusal{502, "no response from the agent"});
      return {channel_failed_ ? ExchangeEnd::channel_failed : ExchangeEnd::refused,
              std::move(refusal)};
    }
    const bool whole = response_ == ResponseSide::complete && request_ == RequestSide::sent;
    ExchangeEnd end = ExchangeEnd::close_both;
    if (whole && client_keep_alive_) {
      end = agent_keeps_channel_ ? ExchangeEnd::keep_both : ExchangeEnd::keep_client;
    } else if (whole && agent_keeps_channel_) {
      end = ExchangeEnd::keep_channel;
    }
    return {end, {}, agent_binds_connection_, response_ == ResponseSide::started};
  }

  enum class RequestSide { sending, sent, stopped };  // stopped: the client stopped, or was
  enum class ResponseSide { awaited, started, complete };

  ClientStream& client_;
  beast::flat_buffer& client_buffer_;
  Channel& channel_;
  Deadline& deadline_;
  BodyChunks& chunks_;
  const LimitsConfig& limits_;
  const ExchangeRequest& request_in_;
  RequestRecord& rec_;
  const VmRecord& vm_;

  RequestSide request_ = RequestSide::sending;
  ResponseSide response_ = ResponseSide::awaited;
  std::optional<Refusal> refusal_;  // what to answer if no response starts
  bool channel_failed_ = false;     // it ended before the agent said a thing
  bool agent_keeps_channel_ = false;
  bool agent_binds_connection_ = false;
  bool client_keep_alive_ = false;
  bool timed_out_ = false;
  bool stop_request_ = false;  // the response side ended the exchange early
  bool extensions_over_ = false;
  std::string head_;  // a head written without the serializer (head_bytes.hpp)
  // Chunk extensions are dropped (the serializer writes none), but bounded
  // (RFC 9112 §7.1.1): Beast reads a chunk-size line whole before this.
  std::function<void(std::uint64_t, beast::string_view, error_code&)> limit_chunk_extensions_ =
      [this](std::uint64_t, beast::string_view extensions, error_code& ec) {
        if (extensions.size() <= limits_.chunk_extension_bytes) return;
        extensions_over_ = true;
        ec = http::error::bad_chunk_extension;
      };
  static constexpr bool never_stop = false;
};

}  // namespace

char* BodyChunks::get(std::unique_ptr<char[]>& slot) {
  if (!slot) slot = std::make_unique_for_overwrite<char[]>(size);
  return slot.get();
}

BufferedBody take_buffered_body(http::request_parser<http::buffer_body>& request,
                                beast::flat_buffer& buffer, BodyChunks& chunks) {
  auto left = request.content_length_remaining();
  if (request.chunked() || !left || *left > body_chunk || *left > buffer.size()) return {};
  auto& body = request.get().body();
  char* chunk = chunks.request();
  body.data = chunk;
  body.size = body_chunk;
  while (!request.is_done()) {
    error_code ec;
    auto used = request.put(buffer.data(), ec);
    buffer.consume(used);
    if (ec || used == 0) return {.failed = true};
  }
  return {.taken = true, .size = body_chunk - body.size};
}

awaitable<ExchangeOutcome> run_exchange(ExchangeEnds ends, ExchangeRequest request,
                                        RequestRecord& record, const VmRecord& vm) {
  Exchange exchange(ends, request, record, vm);
  co_return co_await exchange.run();
}

}  // namespace vmgate::hostd
