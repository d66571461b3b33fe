// run_exchange(): how one exchange ends, and so what the client connection
// and the channel may each do next, on every path. The client and the agent
// are the far ends of two socket pairs (splice needs real sockets), each
// played by a small coroutine.
#include "hostd/proxy/exchange.hpp"

#include <sys/socket.h>

#include <functional>
#include <string>

#include <doctest/doctest.h>

#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "common/log.hpp"

using namespace std::chrono_literals;
using namespace vmgate;
using namespace vmgate::hostd;
namespace http = boost::beast::http;

namespace {

std::pair<Stream, Stream> socket_pair(asio::io_context& io) {
  int fds[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds) == 0);
  const asio::generic::stream_protocol unix_stream(AF_UNIX, 0);
  return {Stream(io, unix_stream, fds[0]), Stream(io, unix_stream, fds[1])};
}

awaitable<void> write_all(Stream& s, std::string text) {
  co_await asio::async_write(s, asio::buffer(text), use_tuple);
}

// Reads until the peer closes: what the other side sent.
awaitable<std::string> read_all(Stream& s) {
  std::string got;
  co_await asio::async_read(s, asio::dynamic_buffer(got), use_tuple);
  co_return got;
}

// Reads one request head (and a body of known length) from the channel, as an agent does.
awaitable<std::string> read_request(Stream& agent, std::string& rest) {
  auto [ec, n] =
      co_await asio::async_read_until(agent, asio::dynamic_buffer(rest), "\r\n\r\n", use_tuple);
  if (ec) co_return std::string();
  std::string head = rest.substr(0, n);
  rest.erase(0, n);
  co_return head;
}

using Agent = std::function<awaitable<void>(Stream& agent)>;

struct Run {
  ExchangeOutcome outcome;
  std::string client_saw;           // everything written to the client, once the exchange ended
  unsigned status = 0;              // the record's
  Aborted aborted = Aborted::none;  // the record's
};

// One exchange of `request` (written by the client, which then keeps its
// end open until the exchange is over, unless `client_closes`), answered by `agent`.
Run exchange(std::string request, Agent agent, bool client_closes = false,
             std::chrono::milliseconds idle = 10s) {
  log::set_min_level(log::Level::error);
  asio::io_context io;
  auto [client_socket, client_peer] = socket_pair(io);
  ClientStream client(std::move(client_socket));
  auto [channel_end, agent_end] = socket_pair(io);
  Run run;
  bool done = false;

  asio::co_spawn(
      io,
      [&]() -> awaitable<void> {
        co_await write_all(client_peer, request);
        if (client_closes) {
          error_code ignored;
          client_peer.close(ignored);
        }
      },
      asio::detached);
  asio::co_spawn(
      io, [&]() -> awaitable<void> { co_await agent(agent_end); }, asio::detached);
  asio::co_spawn(
      io,
      [&]() -> awaitable<void> {
        boost::beast::flat_buffer buffer;
        http::request_parser<http::empty_body> head;
        co_await http::async_read_header(client, buffer, head, use_tuple);
        http::request_parser<http::buffer_body> parser{std::move(head)};
        auto& msg = parser.get();
        ExchangeRequest req{.parser = parser,
                            .has_body = !parser.is_done(),
                            .is_head = msg.method() == http::verb::head,
                            .client_keep_alive = msg.keep_alive(),
                            .client_version = msg.version()};
        Channel channel{std::move(channel_end), {}, {}};
        Deadline deadline(io.get_executor());
        BodyChunks chunks;
        LimitsConfig limits;
        limits.idle_timeout = idle;
        limits.header_bytes = 1024;
        VmRecord vm{.uuid = "u", .name = "vm1"};
        {
          RequestRecord record;
          record.port = 5986;
          ExchangeEnds ends{.client = client,
                            .client_buffer = buffer,
                            .channel = channel,
                            .deadline = deadline,
                            .chunks = chunks,
                            .limits = limits};
          run.outcome = co_await run_exchange(ends, req, record, vm);
          run.status = record.status;
          run.aborted = record.aborted;
        }
        error_code ignored;
        client.close(ignored);
        channel.stream.close(ignored);
        done = true;
      },
      asio::detached);
  io.run_for(20s);
  REQUIRE(done);
  // What reached the client, now that its connection is closed.
  asio::co_spawn(
      io, [&]() -> awaitable<void> { run.client_saw = co_await read_all(client_peer); },
      asio::detached);
  io.restart();
  io.run_for(5s);
  log::set_min_level(log::Level::info);
  return run;
}

const std::string get_request = "GET /hello HTTP/1.1\r\nHost: vm1\r\n\r\n";

Agent answers(std::string response, bool then_close = false) {
  return [response, then_close](Stream& agent) -> awaitable<void> {
    std::string rest;
    co_await read_request(agent, rest);
    co_await write_all(agent, response);
    if (then_close) {
      error_code ignored;
      agent.close(ignored);
    } else {
      // Stays open, as an agent that keeps the connection does.
      co_await read_all(agent);
    }
  };
}

}  // namespace

TEST_CASE("exchange: a whole keep-alive response keeps the client connection and the channel") {
  auto run = exchange(get_request, answers("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"));
  CHECK(run.outcome.end == ExchangeEnd::keep_both);
  CHECK(run.outcome.client_continues());
  CHECK(run.outcome.channel_reusable());
  CHECK(run.status == 200);
  CHECK(run.client_saw.ends_with("\r\n\r\nhello"));
}

TEST_CASE("exchange: an agent that closes its connection keeps the client, not the channel") {
  auto run = exchange(
      get_request,
      answers("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello", true));
  CHECK(run.outcome.end == ExchangeEnd::keep_client);
  CHECK(run.outcome.client_continues());
  CHECK_FALSE(run.outcome.channel_reusable());
}

TEST_CASE("exchange: a body the agent ends by closing reaches the client chunked, channel done") {
  auto run = exchange(get_request, answers("HTTP/1.1 200 OK\r\n\r\nuntil eof", true));
  CHECK(run.outcome.end == ExchangeEnd::keep_client);
  CHECK(run.client_saw.find("Transfer-Encoding: chunked") != std::string::npos);
  CHECK(run.client_saw.ends_with("0\r\n\r\n"));
}

TEST_CASE("exchange: a client that asked to close leaves the channel idle for another") {
  auto run = exchange("GET /hello HTTP/1.1\r\nHost: vm1\r\nConnection: close\r\n\r\n",
                      answers("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"));
  CHECK(run.outcome.end == ExchangeEnd::keep_channel);
  CHECK_FALSE(run.outcome.client_continues());
  CHECK(run.outcome.channel_reusable());
}

TEST_CASE("exchange: a response cut by the agent is cut for the client, and nothing is kept") {
  auto run = exchange(get_request,
                      answers("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..", true));
  CHECK(run.outcome.end == ExchangeEnd::close_both);
  CHECK(run.outcome.answered());
  CHECK_FALSE(run.outcome.client_continues());
  CHECK_FALSE(run.outcome.channel_reusable());
  // The client has the ten bytes, never a padded hundred, and the connection
  // ends as cut (no TLS close_notify).
  CHECK(run.client_saw.ends_with("\r\n\r\nonly ten.."));
  CHECK(run.outcome.response_cut);
  CHECK(run.status == 200);
  CHECK(run.aborted == Aborted::upstream);
}

TEST_CASE("exchange: a chunked response cut by the agent never gets its last chunk") {
  auto run = exchange(get_request, answers("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                           "5\r\nhello\r\n",
                                           true));
  CHECK(run.outcome.end == ExchangeEnd::close_both);
  CHECK(run.client_saw.find("hello") != std::string::npos);
  CHECK(run.client_saw.find("0\r\n\r\n") == std::string::npos);
  CHECK(run.outcome.response_cut);
  CHECK(run.aborted == Aborted::upstream);
}

TEST_CASE("exchange: a body an HTTP/1.0 client gets until the agent closes is whole, not cut") {
  auto run = exchange("GET /hello HTTP/1.0\r\nHost: vm1\r\n\r\n",
                      answers("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nthe whole body", true));
  CHECK(run.outcome.answered());
  CHECK(run.client_saw.ends_with("\r\n\r\nthe whole body"));
  // It ends in order: close_notify over TLS tells the client it is complete.
  CHECK_FALSE(run.outcome.response_cut);
  CHECK(run.aborted == Aborted::none);
}

TEST_CASE("exchange: a channel that closes before the agent says anything has failed") {
  Agent hang_up = [](Stream& agent) -> awaitable<void> {
    std::string rest;
    co_await read_request(agent, rest);
    error_code ignored;
    agent.close(ignored);
  };
  auto run = exchange(get_request, hang_up);
  CHECK(run.outcome.end == ExchangeEnd::channel_failed);
  CHECK_FALSE(run.outcome.answered());
  CHECK(run.outcome.refusal.status == 502);
  CHECK(run.outcome.refusal.reason.find("closed the connection before answering") !=
        std::string::npos);
  CHECK(run.client_saw.empty());  // the client connection answers that, not the exchange
}

TEST_CASE("exchange: an agent head over header_bytes is refused, not a failed channel") {
  auto run = exchange(get_request,
                      answers("HTTP/1.1 200 OK\r\nX-Big: " + std::string(2000, 'a') + "\r\n\r\n"));
  CHECK(run.outcome.end == ExchangeEnd::refused);
  CHECK(run.outcome.refusal.status == 502);
  CHECK(run.outcome.refusal.reason.find("exceeds 1024 bytes") != std::string::npos);
}

TEST_CASE("exchange: an agent that switches protocols is refused with the way that works") {
  auto run = exchange(get_request,
                      answers("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"));
  CHECK(run.outcome.end == ExchangeEnd::refused);
  CHECK(run.outcome.refusal.reason.find("use CONNECT") != std::string::npos);
}

TEST_CASE("exchange: an agent that never answers is refused with 504 once idle_timeout passes") {
  Agent silent = [](Stream& agent) -> awaitable<void> { co_await read_all(agent); };
  auto run = exchange(get_request, silent, false, 200ms);
  CHECK(run.outcome.end == ExchangeEnd::refused);
  CHECK(run.outcome.refusal.status == 504);
  CHECK(run.outcome.refusal.reason == "vm vm1 did not answer within 200 ms");
}

TEST_CASE("exchange: a client that goes away mid-upload, before any answer, is gone") {
  Agent reads_forever = [](Stream& agent) -> awaitable<void> { co_await read_all(agent); };
  auto run = exchange("PUT /discard HTTP/1.1\r\nHost: vm1\r\nContent-Length: 100000\r\n\r\npart",
                      reads_forever, true);
  CHECK(run.outcome.end == ExchangeEnd::client_gone);
  CHECK_FALSE(run.outcome.channel_reusable());
  CHECK(run.aborted == Aborted::client);
}

TEST_CASE("exchange: a chunked upload the client leaves mid-chunk never gets its last chunk") {
  std::string agent_got;
  Agent reads_all = [&agent_got](Stream& agent) -> awaitable<void> {
    agent_got = co_await read_all(agent);
  };
  auto run = exchange(
      "PUT /discard HTTP/1.1\r\nHost: vm1\r\nTransfer-Encoding: chunked\r\n\r\n"
      "100\r\nonly part of it",
      reads_all, true);
  CHECK(run.outcome.end == ExchangeEnd::client_gone);
  CHECK(run.aborted == Aborted::client);
  CHECK(agent_got.starts_with("PUT /discard HTTP/1.1\r\n"));
  CHECK(agent_got.find("0\r\n\r\n") == std::string::npos);
}

TEST_CASE("exchange: an interim 100 Continue is relayed before the final response") {
  auto run = exchange(get_request,
                      answers("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"));
  CHECK(run.outcome.end == ExchangeEnd::keep_both);
  CHECK(run.status == 204);
  CHECK(run.client_saw.starts_with("HTTP/1.1 100 Continue\r\n"));
}

namespace {

// An agent that reads everything the channel carries, into `saw`, and never answers.
Agent reads_all(std::string& saw) {
  return [&saw](Stream& agent) -> awaitable<void> { saw = co_await read_all(agent); };
}

const std::string chunked_head =
    "POST /upload HTTP/1.1\r\nHost: vm1\r\nTransfer-Encoding: chunked\r\n\r\n";

}  // namespace

TEST_CASE("exchange: chunk extensions over chunk_extension_bytes are a 400, never relayed whole") {
  std::string agent_saw;
  auto run = exchange(chunked_head + "5;" + std::string(LimitsConfig{}.chunk_extension_bytes, 'e') +
                          "\r\nhello\r\n0\r\n\r\n",
                      reads_all(agent_saw));
  CHECK(run.outcome.end == ExchangeEnd::refused);
  CHECK(run.outcome.refusal.status == 400);
  CHECK(run.outcome.refusal.reason == "chunk extensions exceed 1024 bytes");
  CHECK(agent_saw.find("hello") == std::string::npos);
  // At the limit it is a body like any other; its extensions are dropped.
  std::string at_limit;
  auto fine =
      exchange(chunked_head + "5;" + std::string(LimitsConfig{}.chunk_extension_bytes - 1, 'e') +
                   "\r\nhello\r\n0\r\n\r\n",
               [&at_limit](Stream& agent) -> awaitable<void> {
                 std::string rest;
                 co_await read_request(agent, rest);
                 while (rest.find("0\r\n\r\n") == std::string::npos) {
                   char c[512];
                   auto [ec, n] = co_await agent.async_read_some(asio::buffer(c), use_tuple);
                   if (ec) co_return;
                   rest.append(c, n);
                 }
                 at_limit = rest;
                 co_await write_all(agent, "HTTP/1.1 204 No Content\r\n\r\n");
               });
  CHECK(fine.status == 204);
  CHECK(at_limit == "5\r\nhello\r\n0\r\n\r\n");
}

TEST_CASE("exchange: a trailer section over trailer_bytes is a 400, and the body never ends") {
  std::string agent_saw;
  auto run = exchange(chunked_head + "5\r\nhello\r\n0\r\nX-T: " +
                          std::string(LimitsConfig{}.trailer_bytes, 't') + "\r\n\r\n",
                      reads_all(agent_saw));
  CHECK(run.outcome.end == ExchangeEnd::refused);
  CHECK(run.outcome.refusal.status == 400);
  CHECK(run.outcome.refusal.reason == "chunked trailer section exceeds 8192 bytes");
  CHECK(agent_saw.find("0\r\n\r\n") == std::string::npos);
}

TEST_CASE("exchange: a chunk-size line that never ends is a 400 once it outgrows the bounds") {
  std::string agent_saw;
  auto run = exchange(chunked_head + "5;" + std::string(200 * 1024, 'e'), reads_all(agent_saw));
  CHECK(run.outcome.end == ExchangeEnd::refused);
  CHECK(run.outcome.refusal.status == 400);
  CHECK(run.outcome.refusal.reason.starts_with("chunk-size line or trailer section exceeds"));
}

TEST_CASE("exchange: a bad chunk size in a request body is a 400") {
  std::string agent_saw;
  auto run = exchange(chunked_head + "zz\r\nGET /smuggled HTTP/1.1\r\n\r\n", reads_all(agent_saw));
  CHECK(run.outcome.end == ExchangeEnd::refused);
  CHECK(run.outcome.refusal.status == 400);
  CHECK(agent_saw.find("/smuggled") == std::string::npos);
}

TEST_CASE("exchange: an agent response with Content-Length and Transfer-Encoding is not relayed") {
  auto run = exchange(get_request,
                      answers("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 5\r\n"
                              "\r\nhello",
                              true));
  CHECK(run.outcome.end == ExchangeEnd::refused);
  CHECK(run.outcome.refusal.status == 502);
  CHECK(run.client_saw.empty());
}
