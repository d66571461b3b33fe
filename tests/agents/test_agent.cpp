// vmgate-test-agent: the HTTP agent that stands behind guestd in tests, the
// demo and benchmarks. It plays the part of a guest's local agent (a WinRM
// listener, a BITS server), so it must never be the bottleneck and never hold
// a whole body: heads are read with request_parser<empty_body>, bodies are
// streamed through buffer_body in fixed pieces, both ways.
//
//   vmgate-test-agent --listen 127.0.0.1:0 [--files DIR] [--name NAME]
//                     [--bits-dir DIR] [--threads N] [--idle-timeout SECONDS]
//                     [--verbose]
//
// Prints exactly one line, `listening PORT` (0 for a unix socket), once it
// accepts connections. Endpoints:
//
//   GET  /hello              "hello from NAME\n"
//   ANY  /echo-headers       request line, then every header "Name: value"
//   GET  /bytes/N[?chunked=1][&sha=0]
//                            N bytes of the pattern below; X-Content-SHA256
//   GET  /files/NAME         DIR/NAME, streamed in 256 KiB pieces
//   ANY  /sha256             "HEXDIGEST BYTES\n" of the request body
//   ANY  /discard            "BYTES\n" of the request body
//   POST /wsman              a fixed 8 KiB SOAP envelope
//   GET  /slow?ms=N          "slow\n" after N ms (at most 60000)
//   GET  /close              "bye\n", then the connection is closed
//   BITS_POST /ANY/NAME      (any path but /echo-headers)
//                            a BITS upload server (bits_upload.hpp): sessions
//                            assemble DIR/NAME in --bits-dir (default: the
//                            --files DIR); Close-Session's Ack carries
//                            X-Content-SHA256 of the assembled file
//   GET  /hang-up-next       "ok\n"; the connection's next request is read,
//                            not answered, and the connection closed (an
//                            agent dropping a kept-alive connection just as
//                            a request arrives)
//   GET  /gather?n=N         "gathered\n" once N such requests wait at once
//   ANY  /negotiate          a two-step handshake bound to the connection:
//                            "Authorization: Negotiate start" gets a 401
//                            challenge "Negotiate challenge-ID"; then
//                            "Negotiate answer-to-challenge-ID" on the same
//                            connection gets 200, on any other a 401
//
// Broken agents, for the error paths of what stands in front:
//   GET  /big-head?bytes=N   "big\n", its head padded with an X-Padding header
//                            of N bytes (at most 1 MiB)
//   GET  /switch-protocols   "101 Switching Protocols", then the connection closes
//   GET  /malformed-body     a chunked 200 whose first chunk size is not hex,
//                            in the same write as its head; then closes
//   GET  /die-mid-body?length=N&sent=M[&reset=1]
//                            a 200 head saying Content-Length N and the first
//                            M pattern bytes (M < N), then the agent closes
//   GET  /die-mid-body?framing=chunked&sent=M[&reset=1]
//                            a chunked 200 and one chunk of M pattern bytes,
//                            never the last chunk, then the agent closes
//   GET  /die-mid-body?framing=close&sent=M[&reset=1]
//                            a 200 with neither length nor chunked and M
//                            pattern bytes: the body ends with the connection,
//                            so only reset=1 makes it a cut one
//                            reset=1: the agent resets the connection
//                            (SO_LINGER 0) instead of closing it, as a crash
//                            with bytes unread does
//
// A request body that ends before its framing says (the connection ended or
// was reset) is logged `event=request_body_cut target=... bytes=N`.
//
// GET endpoints answer HEAD too. Every response carries X-Agent-Name: NAME.
//
// Byte k of every /bytes body is pattern_byte(k % 65536), so a test in any
// language can regenerate it:
//   bytes(((i * 131) + (i >> 8) * 7) & 0xFF for i in range(65536))
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <variant>
#include <vector>

#include <fmt/format.h>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "common/asio.hpp"
#include "common/deadline.hpp"
#include "common/log.hpp"
#include "common/transport.hpp"
#include "tests/agents/agent_content.hpp"
#include "tests/agents/bits_upload.hpp"

namespace vmgate::test_agent {
namespace {

namespace beast = boost::beast;
using namespace asio::experimental::awaitable_operators;

constexpr std::uint32_t header_limit = 64 * 1024;
constexpr std::uint64_t max_bytes_length = std::uint64_t{1} << 40;
constexpr long max_slow_ms = 60000;
// How long a closing connection keeps reading what the client still sends, so
// that unread request bytes do not turn our close into a reset that destroys
// the response in flight (RFC 9112 §9.6).
constexpr auto lingering_close_time = std::chrono::seconds(2);

struct Options {
  std::string listen = "127.0.0.1:0";
  std::string files_dir;
  std::string bits_dir;  // empty: files_dir
  std::string name = "agent";
  unsigned threads = 1;
  std::chrono::seconds idle_timeout{120};
  bool verbose = false;
};

// /gather?n=N: requests wait here until N of them are waiting at once (on any
// connections and threads), then all are answered; so a test can have N
// requests in flight together without guessing at timing.
class Gathering {
 public:
  // Waits (at most max_slow_ms) until `n` requests have arrived.
  awaitable<void> arrive(std::size_t n) {
    auto timer = std::make_shared<asio::steady_timer>(co_await asio::this_coro::executor,
                                                      std::chrono::milliseconds(max_slow_ms));
    std::vector<std::shared_ptr<asio::steady_timer>> release;
    {
      std::lock_guard lock(mutex_);
      waiting_.push_back(timer);
      if (waiting_.size() >= n) release.swap(waiting_);
    }
    for (auto& t : release)
      asio::post(t->get_executor(), [t] { t->cancel(); });
    co_await timer->async_wait(use_tuple);
  }

 private:
  std::mutex mutex_;
  std::vector<std::shared_ptr<asio::steady_timer>> waiting_;
};

Gathering gathering;

struct FileDescriptor {
  explicit FileDescriptor(int f) : fd(f) {}
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  ~FileDescriptor() {
    if (fd >= 0) ::close(fd);
  }
  int fd;
};

bool is_parse_error(const error_code& ec) {
  return ec.category() == http::make_error_code(http::error::bad_method).category() &&
         ec != http::error::end_of_stream && ec != http::error::partial_message;
}

class Connection {
 public:
  Connection(Stream& socket, Deadline& deadline, const Options& options, bits::Uploads& uploads,
             std::uint64_t id)
      : socket_(socket),
        deadline_(deadline),
        options_(options),
        uploads_(uploads),
        id_(id),
        scratch_(std::make_unique<char[]>(piece_size)) {}
  // The deadline's action names this connection: it must not outlive it.
  ~Connection() { deadline_.expires_never(); }

  awaitable<void> run() {
    for (;;) {
      http::request_parser<http::empty_body> head;
      head.header_limit(header_limit);
      // Bodies are streamed, never held: no limit on their size.
      head.body_limit(std::numeric_limits<std::uint64_t>::max());
      deadline_.expires_after(options_.idle_timeout, [this] { close_socket(); });
      auto [ec, n] = co_await http::async_read_header(socket_, buffer_, head, use_tuple);
      if (ec) {
        if (is_parse_error(ec)) co_await reject_malformed(ec);
        co_return;
      }
      if (hang_up_next_) {
        error_code ignored;
        socket_.close(ignored);
        co_return;
      }
      if (!co_await handle(head)) {
        co_await close_gracefully();
        co_return;
      }
    }
  }

 private:
  awaitable<void> reject_malformed(const error_code& ec) {
    bool too_large = ec == http::error::header_limit;
    http::response<http::string_body> res{
        too_large ? http::status::request_header_fields_too_large : http::status::bad_request, 11};
    res.set(http::field::content_type, "text/plain; charset=utf-8");
    res.body() = fmt::format("malformed request: {}\n", ec.message());
    res.keep_alive(false);
    res.prepare_payload();
    deadline_.expires_after(options_.idle_timeout, [this] { close_socket(); });
    co_await http::async_write(socket_, res, use_tuple);
    co_await close_gracefully();
  }

  http::response<http::string_body> make_response(const RequestInfo& info, http::status status,
                                                  std::string body,
                                                  std::string_view content_type =
                                                      "text/plain; "
                                                      "charset=utf-8") {
    http::response<http::string_body> res{status, info.version};
    res.set(http::field::server, "vmgate-test-agent");
    res.set("X-Agent-Name", options_.name);
    res.set(http::field::content_type, content_type);
    res.body() = std::move(body);
    return res;
  }

  // Sends a small response; returns whether the connection stays open.
  awaitable<bool> send(const RequestInfo& info, http::response<http::string_body> res) {
    res.keep_alive(info.keep_alive);
    res.prepare_payload();
    deadline_.expires_after(options_.idle_timeout, [this] { close_socket(); });
    if (info.method == http::verb::head) {
      // The head a GET would get, Content-Length included (RFC 9110 §9.3.2).
      http::response_serializer<http::string_body> serializer(res);
      auto [ec, n] = co_await http::async_write_header(socket_, serializer, use_tuple);
      co_return !ec && info.keep_alive;
    }
    auto [ec, n] = co_await http::async_write(socket_, res, use_tuple);
    co_return !ec && info.keep_alive;
  }

  awaitable<bool> reply(const RequestInfo& info, http::status status, std::string body) {
    co_return co_await send(info, make_response(info, status, std::move(body)));
  }

  // Sends a response whose body comes from `next_piece`, called until it
  // returns an empty span; nullopt means the source failed, and since the
  // head is already out, the only honest signal left is closing.
  template <class NextPiece>
  awaitable<bool> send_streamed(const RequestInfo& info, http::response<http::buffer_body>& res,
                                NextPiece next_piece) {
    res.set(http::field::server, "vmgate-test-agent");
    res.set("X-Agent-Name", options_.name);
    res.keep_alive(info.keep_alive);
    http::response_serializer<http::buffer_body> serializer(res);
    if (info.method == http::verb::head) {
      deadline_.expires_after(options_.idle_timeout, [this] { close_socket(); });
      auto [ec, n] = co_await http::async_write_header(socket_, serializer, use_tuple);
      co_return !ec && info.keep_alive;
    }
    // The first piece goes out with the head in one write.
    for (;;) {
      std::optional<std::span<const char>> piece = next_piece();
      if (!piece) co_return false;
      res.body().data = piece->empty() ? nullptr : const_cast<char*>(piece->data());
      res.body().size = piece->size();
      res.body().more = !piece->empty();
      deadline_.expires_after(options_.idle_timeout, [this] { close_socket(); });
      auto [ec, n] = co_await http::async_write(socket_, serializer, use_tuple);
      if (ec == http::error::need_buffer) continue;
      if (ec) co_return false;
      if (piece->empty()) break;
    }
    co_return info.keep_alive;
  }

  // Streams the request body to `on_data` piece by piece. Returns the byte
  // count, or nullopt when the body could not be read (the caller closes).
  template <class OnData>
  awaitable<std::optional<std::uint64_t>> read_body(http::request_parser<http::empty_body>& head,
                                                    const RequestInfo& info, OnData on_data) {
    if (head.is_done()) co_return 0;
    if (info.expect_continue) {
      // RFC 9110 §10.1.1: the client waits for this before sending the body.
      http::response<http::empty_body> go_on{http::status::continue_, 11};
      deadline_.expires_after(options_.idle_timeout, [this] { close_socket(); });
      auto [ec, n] = co_await http::async_write(socket_, go_on, use_tuple);
      if (ec) co_return std::nullopt;
    }
    http::request_parser<http::buffer_body> parser(std::move(head));
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    // Beast sizes each read by the buffer's free capacity (512 bytes at least):
    // without room reserved, an upload arrives in 512-byte reads and the agent,
    // not the path in front of it, sets the pace.
    buffer_.reserve(piece_size);
    std::uint64_t total = 0;
    while (!parser.is_done()) {
      parser.get().body().data = scratch_.get();
      parser.get().body().size = piece_size;
      deadline_.expires_after(options_.idle_timeout, [this] { close_socket(); });
      auto [ec, n] = co_await http::async_read(socket_, buffer_, parser, use_tuple);
      if (ec && ec != http::error::need_buffer) {
        // Logged whatever the endpoint: how a test sees that an upload was
        // cut on the way here, not handed over as complete.
        log::warn("request_body_cut")
            .kv("conn", static_cast<unsigned long long>(id_))
            .kv("target", info.target)
            .kv("bytes", total + (piece_size - parser.get().body().size))
            .kv("error", ec.message());
        co_return std::nullopt;
      }
      std::size_t got = piece_size - parser.get().body().size;
      on_data(scratch_.get(), got);
      total += got;
    }
    co_return total;
  }

  awaitable<bool> handle(http::request_parser<http::empty_body>& head) {
    RequestInfo info = describe(head.get());
    if (options_.verbose) {
      log::info("request")
          .kv("conn", static_cast<unsigned long long>(id_))
          .kv("method", info.method_name)
          .kv("target", info.target)
          .kv("version", info.version);
    }
    const std::string_view path = info.path;
    // Beast parses a method it does not know (verb::unknown) and keeps its text.
    // /echo-headers still echoes one, so tests can see it arrive unchanged.
    if (info.method_name == bits::method && path != "/echo-headers")
      co_return co_await bits_post(head, info);
    if (path == "/sha256") {
      Sha256 sha;
      auto count =
          co_await read_body(head, info, [&](const char* p, std::size_t n) { sha.update(p, n); });
      if (!count) co_return false;
      co_return co_await reply(info, http::status::ok, fmt::format("{} {}\n", sha.hex(), *count));
    }
    if (path == "/discard") {
      auto count = co_await read_body(head, info, [](const char*, std::size_t) {});
      if (!count) co_return false;
      co_return co_await reply(info, http::status::ok, fmt::format("{}\n", *count));
    }
    if (path == "/wsman") {
      if (info.method != http::verb::post) {
        if (!co_await skip_body(head, info)) co_return false;
        co_return co_await method_not_allowed(info, "POST");
      }
      if (!co_await read_body(head, info, [](const char*, std::size_t) {})) co_return false;
      static const std::string envelope = wsman_envelope(options_.name);
      co_return co_await send(info, make_response(info, http::status::ok, envelope,
                                                  "application/soap+xml;charset=UTF-8"));
    }

    if (path == "/echo-headers") {
      // Taken before skip_body, which moves the head away if a body came.
      std::string text = echo_text(info, head.get());
      if (!co_await skip_body(head, info)) co_return false;
      co_return co_await reply(info, http::status::ok, std::move(text));
    }
    // The remaining endpoints take no body; one that comes anyway is drained.
    if (!co_await skip_body(head, info)) co_return false;
    const bool is_get = info.method == http::verb::get || info.method == http::verb::head;
    if (path == "/hello") {
      if (!is_get) co_return co_await method_not_allowed(info, "GET, HEAD");
      co_return co_await reply(info, http::status::ok,
                               fmt::format("hello from {}\n", options_.name));
    }
    if (path.starts_with("/bytes/")) {
      if (!is_get) co_return co_await method_not_allowed(info, "GET, HEAD");
      co_return co_await send_bytes(info, path.substr(7));
    }
    if (path.starts_with("/files/")) {
      if (!is_get) co_return co_await method_not_allowed(info, "GET, HEAD");
      co_return co_await send_file(info, path.substr(7));
    }
    if (path == "/slow") {
      if (!is_get) co_return co_await method_not_allowed(info, "GET, HEAD");
      co_return co_await slow(info);
    }
    if (path == "/gather") {
      auto n = parse_u64(query_value(info.query, "n").value_or(""));
      if (!n || *n == 0 || *n > 10000)
        co_return co_await reply(info, http::status::bad_request, "/gather?n=N needs 1..10000\n");
      deadline_.expires_after(std::chrono::milliseconds(max_slow_ms) + options_.idle_timeout,
                              [this] { close_socket(); });
      co_await gathering.arrive(static_cast<std::size_t>(*n));
      co_return co_await reply(info, http::status::ok, "gathered\n");
    }
    if (path == "/negotiate") co_return co_await negotiate(info, head.get());
    if (path == "/hang-up-next") {
      if (!is_get) co_return co_await method_not_allowed(info, "GET, HEAD");
      hang_up_next_ = info.keep_alive;
      co_return co_await reply(info, http::status::ok, "ok\n");
    }
    if (path == "/big-head" || path == "/switch-protocols" || path == "/malformed-body" ||
        path == "/die-mid-body") {
      if (!is_get) co_return co_await method_not_allowed(info, "GET, HEAD");
      co_return co_await misbehave(info);
    }
    if (path == "/close") {
      info.keep_alive = false;
      co_await reply(info, http::status::ok, "bye\n");
      co_return false;
    }
    co_return co_await reply(info, http::status::not_found, fmt::format("no endpoint {}\n", path));
  }

  // For an endpoint that takes no body: drains one, unless the client waits
  // for 100 Continue; then the answer ends the connection instead (RFC 9110
  // §10.1.1), which `info.keep_alive` now says.
  awaitable<bool> skip_body(http::request_parser<http::empty_body>& head, RequestInfo& info) {
    if (head.is_done()) co_return true;
    if (info.expect_continue) {
      info.keep_alive = false;
      co_return true;
    }
    co_return (co_await read_body(head, info, [](const char*, std::size_t) {})).has_value();
  }

  // One BITS packet: a fragment's body goes to its session's file; any other
  // packet's body is skipped (BITS sends none).
  awaitable<bool> bits_post(http::request_parser<http::empty_body>& head, RequestInfo& info) {
    auto packet = uploads_.receive(head.get(), info.path);
    bits::Reply reply;
    if (auto* fragment = std::get_if<bits::Fragment>(&packet)) {
      auto count = co_await read_body(head, info,
                                      [&](const char* p, std::size_t n) { fragment->write(p, n); });
      // A body cut short ends the connection, and the fragment counts for nothing.
      if (!count) co_return false;
      reply = fragment->finish(*count);
    } else {
      if (!co_await skip_body(head, info)) co_return false;
      reply = std::get<bits::Reply>(std::move(packet));
    }
    auto res = make_response(info, reply.status, std::move(reply.body));
    for (auto& [name, value] : reply.headers)
      res.set(name, value);
    co_return co_await send(info, std::move(res));
  }

  // The body, if any, is already skipped.
  awaitable<bool> method_not_allowed(const RequestInfo& info, std::string_view allow) {
    auto res = make_response(info, http::status::method_not_allowed,
                             fmt::format("{} is not allowed on {}\n", info.method_name, info.path));
    res.set(http::field::allow, allow);
    co_return co_await send(info, std::move(res));
  }

  awaitable<bool> send_bytes(const RequestInfo& info, std::string_view length_text) {
    auto length = parse_u64(length_text);
    if (!length || *length > max_bytes_length)
      co_return co_await reply(
          info, http::status::bad_request,
          fmt::format("/bytes/N needs N between 0 and {}\n", max_bytes_length));
    http::response<http::buffer_body> res{http::status::ok, info.version};
    res.set(http::field::content_type, "application/octet-stream");
    if (query_value(info.query, "sha") != "0") res.set("X-Content-SHA256", pattern_digest(*length));
    // HTTP/1.0 has no chunked coding (RFC 9112 §7): a 1.0 client gets a length.
    if (query_value(info.query, "chunked") == "1" && info.version >= 11)
      res.chunked(true);
    else
      res.content_length(*length);
    std::uint64_t left = *length;
    const auto piece = pattern_piece();
    co_return co_await send_streamed(info, res, [&]() -> std::optional<std::span<const char>> {
      auto n = static_cast<std::size_t>(std::min<std::uint64_t>(left, piece.size()));
      left -= n;
      return piece.first(n);
    });
  }

  awaitable<bool> send_file(const RequestInfo& info, std::string_view encoded_name) {
    if (options_.files_dir.empty())
      co_return co_await reply(info, http::status::not_found, "no --files directory\n");
    auto name = percent_decode(encoded_name);
    if (!name || name->empty() || name->find('/') != std::string::npos ||
        name->find("..") != std::string::npos || name->find('\0') != std::string::npos)
      co_return co_await reply(info, http::status::bad_request, "bad file name\n");
    FileDescriptor file(::open((options_.files_dir + "/" + *name).c_str(), O_RDONLY | O_CLOEXEC));
    struct stat st {};
    if (file.fd < 0 || ::fstat(file.fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      int err = errno;
      co_return co_await reply(
          info, file.fd < 0 && err != ENOENT ? http::status::forbidden : http::status::not_found,
          fmt::format("cannot serve {}\n", *name));
    }
    http::response<http::buffer_body> res{http::status::ok, info.version};
    res.set(http::field::content_type, "application/octet-stream");
    res.content_length(static_cast<std::uint64_t>(st.st_size));
    auto left = static_cast<std::uint64_t>(st.st_size);
    char* buffer = scratch_.get();
    co_return co_await send_streamed(info, res, [&]() -> std::optional<std::span<const char>> {
      auto want = static_cast<std::size_t>(std::min<std::uint64_t>(left, piece_size));
      std::size_t got = 0;
      while (got < want) {
        ssize_t r = ::read(file.fd, buffer + got, want - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return std::nullopt;  // error, or the file shrank under us
        got += static_cast<std::size_t>(r);
      }
      left -= got;
      return std::span<const char>(buffer, got);
    });
  }

  // A two-step connection-bound handshake, as Negotiate and NTLM are: the
  // first step gets a 401 challenge naming this connection, and only its
  // answer on the same connection is accepted. On another connection the
  // answer fails, as it does against a real agent.
  awaitable<bool> negotiate(const RequestInfo& info, const http::request_header<>& head) {
    const std::string challenge = fmt::format("challenge-{}", id_);
    std::string_view credentials = head[http::field::authorization];
    if (credentials == "Negotiate answer-to-" + challenge && negotiate_pending_) {
      negotiate_pending_ = false;
      co_return co_await reply(info, http::status::ok,
                               fmt::format("authenticated on connection {}\n", id_));
    }
    auto res = make_response(info, http::status::unauthorized,
                             credentials.starts_with("Negotiate answer-to-")
                                 ? "that answer is to a challenge of another connection\n"
                                 : "authenticate\n");
    if (credentials.starts_with("Negotiate start")) {
      negotiate_pending_ = true;
      res.set(http::field::www_authenticate, "Negotiate " + challenge);
    } else {
      res.set(http::field::www_authenticate, "Negotiate");
    }
    co_return co_await send(info, std::move(res));
  }

  // The broken agents listed at the top; each ends the connection but /big-head.
  awaitable<bool> misbehave(const RequestInfo& info) {
    constexpr std::uint64_t max_padding = 1024 * 1024;
    auto number = [&](std::string_view key) {
      auto text = query_value(info.query, key);
      return text ? parse_u64(*text) : std::nullopt;
    };
    std::string raw;
    if (info.path == "/big-head") {
      auto bytes = number("bytes");
      if (!bytes || *bytes > max_padding)
        co_return co_await reply(info, http::status::bad_request,
                                 fmt::format("/big-head?bytes=N needs N up to {}\n", max_padding));
      auto res = make_response(info, http::status::ok, "big\n");
      res.set("X-Padding", std::string(*bytes, 'a'));
      co_return co_await send(info, std::move(res));
    }
    if (info.path == "/switch-protocols") {
      raw =
          "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
          "Upgrade: vmgate-test\r\n\r\n";
    } else if (info.path == "/malformed-body") {
      raw =
          "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
          "not-a-chunk-size\r\nbody\r\n0\r\n\r\n";
    } else {
      const auto framing = query_value(info.query, "framing").value_or("length");
      auto length = framing == "length" ? number("length") : std::optional<std::uint64_t>(0);
      auto sent = number("sent");
      const bool length_ok = framing != "length" || (length && sent && *sent < *length);
      if (!sent || !length_ok || *sent > pattern_block ||
          (framing != "length" && framing != "chunked" && framing != "close"))
        co_return co_await reply(
            info, http::status::bad_request,
            fmt::format("/die-mid-body needs length=N&sent=M with M < N, M <= {}, or "
                        "framing=chunked|close&sent=M\n",
                        pattern_block));
      raw = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n";
      if (framing == "length") {
        raw += fmt::format("Content-Length: {}\r\n\r\n", *length);
        raw.append(pattern_piece().data(), *sent);
      } else if (framing == "chunked") {
        // One chunk, and never the last chunk (RFC 9112 §7.1).
        raw += fmt::format("Transfer-Encoding: chunked\r\n\r\n{:x}\r\n", *sent);
        raw.append(pattern_piece().data(), *sent);
        raw += "\r\n";
      } else {
        // Neither length nor chunked: the body ends with the connection
        // (RFC 9112 §6.3, rule 8).
        raw += "Connection: close\r\n\r\n";
        raw.append(pattern_piece().data(), *sent);
      }
    }
    deadline_.expires_after(options_.idle_timeout, [this] { close_socket(); });
    co_await asio::async_write(socket_, asio::buffer(raw), use_tuple);
    if (query_value(info.query, "reset") == "1") {
      // A crash rather than a close: the connection is reset (SO_LINGER 0),
      // which is what tells a close-delimited body cut from one complete.
      error_code ignored;
      socket_.set_option(asio::socket_base::linger(true, 0), ignored);
      close_socket();
    }
    co_return false;
  }

  awaitable<bool> slow(const RequestInfo& info) {
    auto ms_text = query_value(info.query, "ms");
    auto ms = ms_text ? parse_u64(*ms_text) : std::optional<std::uint64_t>(0);
    if (!ms)
      co_return co_await reply(info, http::status::bad_request, "/slow?ms=N needs a number\n");
    auto wait = std::chrono::milliseconds(std::min<std::uint64_t>(*ms, max_slow_ms));
    deadline_.expires_after(wait + options_.idle_timeout, [this] { close_socket(); });
    asio::steady_timer timer(socket_.get_executor(), wait);
    co_await timer.async_wait(use_tuple);
    co_return co_await reply(info, http::status::ok, "slow\n");
  }

  // Half-closes, then reads and drops what the client still sends until it
  // closes too (or lingering_close_time passes).
  awaitable<void> close_gracefully() {
    error_code ec;
    socket_.shutdown(asio::socket_base::shutdown_send, ec);
    if (ec) co_return;
    deadline_.expires_after(lingering_close_time, [this] { close_socket(); });
    for (;;) {
      auto [read_ec, n] =
          co_await socket_.async_read_some(asio::buffer(scratch_.get(), piece_size), use_tuple);
      if (read_ec) break;
    }
    socket_.close(ec);
  }

  Stream& socket_;
  Deadline& deadline_;
  const Options& options_;
  bits::Uploads& uploads_;
  std::uint64_t id_;
  // Holds bytes read past the current head or body piece (the next pipelined
  // request); it must outlive every read on the connection.
  beast::flat_buffer buffer_;
  // Body pieces in and out: one allocation per connection.
  std::unique_ptr<char[]> scratch_;
  bool hang_up_next_ = false;       // set by /hang-up-next
  bool negotiate_pending_ = false;  // /negotiate challenged this connection

  // Past a deadline the socket closes, so the pending operation ends.
  void close_socket() {
    error_code ignored;
    socket_.close(ignored);
  }
};

awaitable<void> serve(Stream socket, const Options& options, bits::Uploads& uploads,
                      std::uint64_t id) {
  // The connection's strand, which its completions are dispatched on too.
  Deadline deadline(co_await asio::this_coro::executor);
  Connection connection(socket, deadline, options, uploads, id);
  co_await connection.run();
}

awaitable<void> accept_loop(Acceptor& acceptor, transport::Kind kind, const Options& options,
                            bits::Uploads& uploads) {
  std::uint64_t next_id = 1;
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(use_tuple);
    if (ec == asio::error::operation_aborted) co_return;
    if (ec) {
      // Out of descriptors or a transient network error: wait, don't exit.
      log::warn("accept_failed").kv("error", ec.message());
      asio::steady_timer pause(acceptor.get_executor(), std::chrono::milliseconds(100));
      co_await pause.async_wait(use_tuple);
      continue;
    }
    transport::tune(socket, kind);
    std::uint64_t id = next_id++;
    // One strand per connection: the deadline and the work may otherwise run
    // on two threads at once when --threads > 1.
    auto connection = serve(std::move(socket), options, uploads, id);
    asio::co_spawn(asio::make_strand(acceptor.get_executor()), std::move(connection),
                   [id](std::exception_ptr e) {
                     if (!e) return;
                     try {
                       std::rethrow_exception(e);
                     } catch (const std::exception& x) {
                       log::error("connection_failed")
                           .kv("conn", static_cast<unsigned long long>(id))
                           .kv("error", x.what());
                     }
                   });
  }
}

[[noreturn]] void usage_error(std::string_view message) {
  fmt::print(stderr,
             "vmgate-test-agent: {}\n"
             "usage: vmgate-test-agent [--listen HOST:PORT | --listen unix:/PATH] [--files DIR]\n"
             "                         [--bits-dir DIR] [--name NAME] [--threads N]\n"
             "                         [--idle-timeout SECONDS] [--verbose]\n",
             message);
  std::exit(2);
}

Options parse_args(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    auto value = [&]() -> std::string_view {
      if (i + 1 >= argc) usage_error(fmt::format("{} needs a value", arg));
      return argv[++i];
    };
    auto number = [&](std::uint64_t min, std::uint64_t max) {
      std::string_view text = value();
      auto n = parse_u64(text);
      if (!n || *n < min || *n > max)
        usage_error(fmt::format("{} '{}' is not a number in {}..{}", arg, text, min, max));
      return *n;
    };
    if (arg == "--listen")
      options.listen = value();
    else if (arg == "--files")
      options.files_dir = value();
    else if (arg == "--bits-dir")
      options.bits_dir = value();
    else if (arg == "--name")
      options.name = value();
    else if (arg == "--threads")
      options.threads = static_cast<unsigned>(number(1, 256));
    else if (arg == "--idle-timeout")
      options.idle_timeout = std::chrono::seconds(number(1, 86400));
    else if (arg == "--verbose")
      options.verbose = true;
    else if (arg == "--help" || arg == "-h")
      usage_error("help");
    else
      usage_error(fmt::format("unknown argument '{}'", arg));
  }
  if (options.name.empty()) usage_error("--name must not be empty");
  return options;
}

int run(int argc, char** argv) {
  Options options = parse_args(argc, argv);
  std::string uri = options.listen;
  if (!uri.starts_with("unix:") && !uri.starts_with("tcp:")) uri = "tcp:" + uri;
  auto address = transport::parse(uri);
  if (!address) usage_error(fmt::format("--listen: {}", address.error()));
  if (address->kind != transport::Kind::tcp && address->kind != transport::Kind::unix_socket)
    usage_error("--listen takes HOST:PORT or unix:/PATH");

  std::signal(SIGPIPE, SIG_IGN);
  // Before the io_context: connections still in it when it is destroyed use it.
  bits::Uploads uploads(options.bits_dir.empty() ? options.files_dir : options.bits_dir);
  asio::io_context io(static_cast<int>(options.threads));
  error_code ec;
  Acceptor acceptor = transport::listen(io.get_executor(), *address, ec);
  if (ec) {
    log::error("listen_failed").kv("address", address->to_string()).kv("error", ec.message());
    return 1;
  }
  auto actual = transport::parse(transport::local_uri(acceptor, *address));
  unsigned port = actual && actual->kind == transport::Kind::tcp ? actual->port : 0;
  log::info("agent_started")
      .kv("listen", actual ? actual->to_string() : address->to_string())
      .kv("name", options.name)
      .kv("threads", options.threads);
  std::printf("listening %u\n", port);
  std::fflush(stdout);

  asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](const error_code&, int) { io.stop(); });
  auto accepting = accept_loop(acceptor, address->kind, options, uploads);
  asio::co_spawn(io, std::move(accepting), [](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      log::error("accept_loop_failed").kv("error", x.what());
    }
  });
  std::vector<std::thread> threads;
  for (unsigned i = 1; i < options.threads; ++i)
    threads.emplace_back([&io] { io.run(); });
  io.run();
  for (auto& t : threads)
    t.join();
  if (address->kind == transport::Kind::unix_socket) ::unlink(address->path.c_str());
  return 0;
}

}  // namespace
}  // namespace vmgate::test_agent

int main(int argc, char** argv) {
  try {
    return vmgate::test_agent::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vmgate-test-agent: %s\n", e.what());
    return 1;
  }
}
