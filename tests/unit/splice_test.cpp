// The relay and the splice primitive over real sockets: unix socketpairs
// (and a TCP loopback pair where TCP's ACKs are the point), with the far ends
// driven by plain blocking threads. Every wait is bounded;
// no assertion is about time.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <future>
#include <optional>
#include <random>
#include <string>
#include <thread>

#include "common/asio.hpp"
#include "common/relay.hpp"
#include "common/splice.hpp"

using namespace std::chrono_literals;
using namespace vmgate;

namespace {

constexpr auto bound = 20s;

std::string pattern(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s)
    c = static_cast<char>(rng());
  return s;
}

struct Pair {
  int ours;    // becomes a Stream
  int theirs;  // driven by a test thread
};

Pair socket_pair() {
  int fds[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
  return {fds[0], fds[1]};
}

Stream adopt(asio::io_context& io, int fd) {
  Stream s(io);
  s.assign(asio::generic::stream_protocol(AF_UNIX, SOCK_STREAM), fd);
  return s;
}

// A connected TCP loopback pair: `ours` is the accepted end.
Pair tcp_pair() {
  int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(listener >= 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  auto* raw = reinterpret_cast<sockaddr*>(&address);
  REQUIRE(::bind(listener, raw, sizeof address) == 0);
  REQUIRE(::listen(listener, 1) == 0);
  REQUIRE(::getsockname(listener, raw, &length) == 0);
  int theirs = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(::connect(theirs, raw, sizeof address) == 0);
  int ours = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
  ::close(listener);
  REQUIRE(ours >= 0);
  return {ours, theirs};
}

Stream adopt_tcp(asio::io_context& io, int fd) {
  Stream s(io);
  s.assign(asio::generic::stream_protocol(AF_INET, IPPROTO_TCP), fd);
  return s;
}

// One direction to move: `from` and `to` are ours, on `io`; a test drives
// the far ends (source.theirs, sink.theirs), which close with it.
struct OneDirection {
  // refuse_splice: the sink is opened O_APPEND, which splice(2) refuses.
  explicit OneDirection(bool refuse_splice = false) {
    if (!refuse_splice) return;
    int flags = ::fcntl(sink.ours, F_GETFL);
    REQUIRE(::fcntl(sink.ours, F_SETFL, flags | O_APPEND) == 0);
  }
  ~OneDirection() {
    ::close(source.theirs);
    ::close(sink.theirs);
  }
  OneDirection(const OneDirection&) = delete;
  OneDirection& operator=(const OneDirection&) = delete;

  asio::io_context io;
  Pair source = socket_pair();
  Pair sink = socket_pair();
  Stream from = adopt(io, source.ours);
  Stream to = adopt(io, sink.ours);
};

// Whether the kernel ACKs what arrives on this TCP socket at once (quick-ACK
// mode) rather than holding the ACK to send it with data (interactive mode).
bool acks_at_once(int fd) {
  int value = 0;
  socklen_t length = sizeof value;
  REQUIRE(::getsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &value, &length) == 0);
  return value != 0;
}

void send_all(int fd, std::string_view data) {
  while (!data.empty()) {
    auto n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) return;
    data.remove_prefix(static_cast<std::size_t>(n));
  }
}

// Reads until EOF, at most `max` bytes, or until nothing arrives within the bound.
std::string read_until_eof(int fd, std::size_t max = SIZE_MAX) {
  std::string out;
  char buffer[65536];
  while (out.size() < max) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(std::chrono::milliseconds(bound).count())) <= 0) break;
    auto n = ::recv(fd, buffer, std::min(sizeof buffer, max - out.size()), 0);
    if (n <= 0) break;
    out.append(buffer, static_cast<std::size_t>(n));
  }
  return out;
}

// Runs `work` on a fresh io_context thread and returns its result.
template <class T>
T run_on_io(asio::io_context& io, awaitable<T> work) {
  std::promise<T> promise;
  auto future = promise.get_future();
  asio::co_spawn(io, std::move(work), [&promise](std::exception_ptr e, T value) {
    if (e)
      promise.set_exception(e);
    else
      promise.set_value(std::move(value));
  });
  std::thread runner([&io] { io.run(); });
  auto status = future.wait_for(bound * 2);
  if (status != std::future_status::ready) io.stop();
  runner.join();
  REQUIRE(status == std::future_status::ready);
  return future.get();
}

// client <-> [a relay b] <-> agent; each end sends its bytes, half-closes and
// reads what the other sent.
struct RelayRun {
  RelayResult result;
  std::string at_agent;
  std::string at_client;
};

RelayRun relay_both_ways(const std::string& up, const std::string& down,
                         bool agent_refuses_splice = false) {
  asio::io_context io;
  auto client = socket_pair();
  auto agent = socket_pair();
  if (agent_refuses_splice) {
    // A real refusal: splice(2) into a file opened O_APPEND is EINVAL, and
    // a socket can carry the flag (send(2) ignores it).
    int flags = ::fcntl(agent.ours, F_GETFL);
    REQUIRE(::fcntl(agent.ours, F_SETFL, flags | O_APPEND) == 0);
  }
  Stream a = adopt(io, client.ours);
  Stream b = adopt(io, agent.ours);
  RelayRun run;
  std::thread client_thread([&] {
    std::thread writer([&] {
      send_all(client.theirs, up);
      ::shutdown(client.theirs, SHUT_WR);
    });
    run.at_client = read_until_eof(client.theirs);
    writer.join();
  });
  std::thread agent_thread([&] {
    std::thread writer([&] {
      send_all(agent.theirs, down);
      ::shutdown(agent.theirs, SHUT_WR);
    });
    run.at_agent = read_until_eof(agent.theirs);
    writer.join();
  });
  run.result = run_on_io(io, relay(a, b, bound));
  client_thread.join();
  agent_thread.join();
  ::close(client.theirs);
  ::close(agent.theirs);
  return run;
}

}  // namespace

TEST_CASE("the relay carries bytes intact both ways around and far over the pipe size") {
  for (std::size_t size : {std::size_t{1}, std::size_t{65535}, std::size_t{65537},
                           std::size_t{256 * 1024 + 7}, std::size_t{8 * 1024 * 1024 + 3}}) {
    CAPTURE(size);
    auto up = pattern(size, 1);
    auto down = pattern(size + 11, 2);
    auto run = relay_both_ways(up, down);
    CHECK(run.at_agent == up);
    CHECK(run.at_client == down);
    CHECK(run.result.a_to_b == up.size());
    CHECK(run.result.b_to_a == down.size());
    CHECK(run.result.a_to_b_spliced);
    CHECK(run.result.b_to_a_spliced);
    CHECK_FALSE(run.result.error);
    CHECK_FALSE(run.result.idle_timeout);
  }
}

TEST_CASE("the relay copies where the kernel refuses splice, and the bytes still arrive intact") {
  auto up = pattern(3 * 1024 * 1024 + 5, 3);
  auto down = pattern(2 * 1024 * 1024 + 9, 4);
  auto run = relay_both_ways(up, down, /*agent_refuses_splice=*/true);
  CHECK(run.at_agent == up);
  CHECK(run.at_client == down);
  CHECK(run.result.a_to_b == up.size());
  CHECK(run.result.b_to_a == down.size());
  CHECK_FALSE(run.result.a_to_b_spliced);  // into the agent: refused, copied
  CHECK(run.result.b_to_a_spliced);        // out of it: spliced
  CHECK_FALSE(run.result.error);
}

TEST_CASE("half-close crosses the relay and the other direction keeps flowing") {
  asio::io_context io;
  auto client = socket_pair();
  auto agent = socket_pair();
  Stream a = adopt(io, client.ours);
  Stream b = adopt(io, agent.ours);
  auto reply = pattern(1024 * 1024, 5);
  std::string agent_got;
  // The agent answers only after it has seen the client's EOF.
  std::thread agent_thread([&] {
    agent_got = read_until_eof(agent.theirs);
    send_all(agent.theirs, reply);
    ::shutdown(agent.theirs, SHUT_WR);
  });
  std::string client_got;
  std::thread client_thread([&] {
    send_all(client.theirs, "request");
    ::shutdown(client.theirs, SHUT_WR);
    client_got = read_until_eof(client.theirs);
  });
  auto result = run_on_io(io, relay(a, b, bound));
  agent_thread.join();
  client_thread.join();
  CHECK(agent_got == "request");
  CHECK(client_got == reply);
  CHECK(result.a_to_b == 7);
  CHECK(result.b_to_a == reply.size());
  ::close(client.theirs);
  ::close(agent.theirs);
}

TEST_CASE("an idle relay ends at its idle timeout") {
  asio::io_context io;
  auto client = socket_pair();
  auto agent = socket_pair();
  Stream a = adopt(io, client.ours);
  Stream b = adopt(io, agent.ours);
  auto result = run_on_io(io, relay(a, b, 50ms));
  CHECK(result.idle_timeout);
  CHECK(result.a_to_b == 0);
  CHECK(result.b_to_a == 0);
  ::close(client.theirs);
  ::close(agent.theirs);
}

TEST_CASE("a relay that keeps moving bytes outlives its idle timeout") {
  // A byte every 150 ms for 1.8 s through a relay whose idle timeout is 1 s:
  // the relay ends when both sides end, not at its timeout.
  asio::io_context io;
  auto client = socket_pair();
  auto agent = socket_pair();
  Stream a = adopt(io, client.ours);
  Stream b = adopt(io, agent.ours);
  ::shutdown(agent.theirs, SHUT_WR);
  std::thread trickle([&] {
    for (int i = 0; i < 12; ++i) {
      send_all(client.theirs, "x");
      std::this_thread::sleep_for(150ms);
    }
    ::shutdown(client.theirs, SHUT_WR);
  });
  std::string at_agent;
  std::thread reader([&] { at_agent = read_until_eof(agent.theirs); });
  auto result = run_on_io(io, relay(a, b, 1s));
  trickle.join();
  reader.join();
  CHECK_FALSE(result.idle_timeout);
  CHECK(result.a_to_b == 12);
  CHECK(at_agent == std::string(12, 'x'));
  ::close(client.theirs);
  ::close(agent.theirs);
}

TEST_CASE("a reset on one side ends the relay, and says which side failed") {
  asio::io_context io;
  auto client = socket_pair();
  auto agent = tcp_pair();
  Stream a = adopt(io, client.ours);
  Stream b = adopt_tcp(io, agent.ours);
  // The agent sends a piece, then dies as a crash does: a reset, not an end.
  std::thread agent_thread([&] {
    send_all(agent.theirs, "partial");
    linger abort{.l_onoff = 1, .l_linger = 0};
    REQUIRE(::setsockopt(agent.theirs, SOL_SOCKET, SO_LINGER, &abort, sizeof abort) == 0);
    ::close(agent.theirs);
  });
  auto result = run_on_io(io, relay(a, b, bound));
  agent_thread.join();
  CHECK(result.error == asio::error::connection_reset);
  CHECK(result.failed == RelayResult::Side::b);
  CHECK_FALSE(result.b_ended);
  CHECK_FALSE(result.idle_timeout);
  ::close(client.theirs);
}

TEST_CASE("a write to a side that is gone ends the relay as that side's failure") {
  asio::io_context io;
  auto client = socket_pair();
  auto agent = socket_pair();
  Stream a = adopt(io, client.ours);
  Stream b = adopt(io, agent.ours);
  ::close(client.theirs);  // gone both ways, not half-closed
  std::thread agent_thread([&] { send_all(agent.theirs, "response"); });
  auto result = run_on_io(io, relay(a, b, bound));
  agent_thread.join();
  CHECK(result.error);
  CHECK(result.failed == RelayResult::Side::a);
  ::close(agent.theirs);
}

TEST_CASE("an orderly end both ways is no side's failure") {
  auto run = relay_both_ways("up", "down");
  CHECK_FALSE(run.result.error);
  CHECK(run.result.failed == RelayResult::Side::none);
  CHECK(run.result.a_ended);
  CHECK(run.result.b_ended);
}

TEST_CASE("the relay ACKs at once what it read from a TCP source it is told to acknowledge") {
  asio::io_context io;
  auto client = socket_pair();
  auto agent = tcp_pair();
  Stream a = adopt(io, client.ours);
  Stream b = adopt_tcp(io, agent.ours);
  std::promise<RelayResult> relayed;
  asio::co_spawn(io, relay(a, b, bound, AcknowledgeReads{.from_b = true}),
                 [&relayed](std::exception_ptr, RelayResult r) { relayed.set_value(r); });
  std::thread runner([&io] { io.run(); });
  // Asked on the relay's thread, after the relay has finished with the bytes
  // it was passing on when asked: a step ends with a post (co_spawn's
  // completion), so the question goes round the queue twice.
  auto agent_side_acks_at_once = [&] {
    std::promise<bool> answer;
    auto future = answer.get_future();
    asio::post(io, [&] { asio::post(io, [&] { answer.set_value(acks_at_once(agent.ours)); }); });
    REQUIRE(future.wait_for(bound) == std::future_status::ready);
    return future.get();
  };
  // A response, then a request sent right after it: the relay's socket to
  // the agent is now in the kernel's interactive mode, holding ACKs (~40 ms)
  // in the hope of sending them with the next request.
  bool holding = false;
  std::size_t exchanges = 0;
  for (; exchanges < 5 && !holding; ++exchanges) {
    send_all(agent.theirs, "response");
    CHECK(read_until_eof(client.theirs, 8) == "response");
    send_all(client.theirs, "request");
    CHECK(read_until_eof(agent.theirs, 7) == "request");
    holding = !agent_side_acks_at_once();
  }
  REQUIRE_MESSAGE(holding, "the kernel never held an ACK: nothing to prove here");
  // The next response's head: passed on, and its ACK not held, so an agent
  // with Nagle on sends the body now rather than when the ACK timer fires.
  send_all(agent.theirs, "head");
  CHECK(read_until_eof(client.theirs, 4) == "head");
  CHECK(agent_side_acks_at_once());

  ::shutdown(client.theirs, SHUT_WR);
  ::shutdown(agent.theirs, SHUT_WR);
  auto done = relayed.get_future();
  if (done.wait_for(bound) != std::future_status::ready) io.stop();
  runner.join();
  REQUIRE(done.wait_for(0s) == std::future_status::ready);
  auto result = done.get();
  CHECK(result.a_to_b == 7 * exchanges);
  CHECK(result.b_to_a == 8 * exchanges + 4);
  CHECK_FALSE(result.error);
  ::close(client.theirs);
  ::close(agent.theirs);
}

TEST_CASE("move_exactly moves exactly the length and leaves what follows in the source") {
  for (bool refuse : {false, true}) {
    CAPTURE(refuse);
    OneDirection d(refuse);
    auto& [io, source, sink, from, to] = d;
    const std::size_t length = 2 * 1024 * 1024 + 17;
    auto body = pattern(length, 6);
    std::string next = "GET /next HTTP/1.1\r\n\r\n";
    std::thread writer([&] {
      send_all(source.theirs, body);
      send_all(source.theirs, next);
    });
    std::string got;
    std::thread reader([&] { got = read_until_eof(sink.theirs, length); });
    std::uint64_t progressed = 0;
    auto count = [&progressed](std::size_t n) { progressed += n; };
    OnMoved on_moved(count);
    auto result = run_on_io(io, move_exactly(from, to, length, on_moved));
    writer.join();
    reader.join();
    CHECK_FALSE(result.failed());
    CHECK(result.bytes == length);
    CHECK(progressed == length);
    CHECK(got == body);
    // The next message is still in the source, whole.
    CHECK(read_until_eof(source.ours, next.size()) == next);
  }
}

TEST_CASE("move_exactly reports a source that ends before the length") {
  OneDirection d;
  auto& [io, source, sink, from, to] = d;
  auto body = pattern(100000, 7);
  std::thread writer([&] {
    send_all(source.theirs, body);
    ::shutdown(source.theirs, SHUT_WR);
  });
  std::string got;
  std::thread reader([&] { got = read_until_eof(sink.theirs, body.size()); });
  auto result = run_on_io(io, move_exactly(from, to, 1000000, OnMoved{}));
  writer.join();
  reader.join();
  CHECK(result.read_error == asio::error::eof);
  CHECK(result.bytes == body.size());
  CHECK(got == body);
}

TEST_CASE("pipes go back to the pool when a direction goes idle") {
  // The relay's io thread is this test's helper thread, so look from there.
  OneDirection d;
  auto& [io, source, sink, from, to] = d;
  send_all(source.theirs, "some bytes");
  auto probe = [&]() -> awaitable<std::size_t> {
    SpliceDirection direction;
    auto moved = co_await move_available(from, to, direction, unlimited_bytes, OnMoved{});
    CHECK(moved.bytes == 10);
    CHECK(direction.spliced);
    co_return splice_testing::pooled_pipes();
  };
  CHECK(run_on_io(io, probe()) >= 1);
  CHECK(read_until_eof(sink.theirs, 10) == "some bytes");
}

TEST_CASE("a read well under the ask returns drained at once, the stream's end left to the next") {
  // The peer's FIN is queued behind its bytes: a second read in the same
  // call would see it. Not reading again is what spares a relay the read
  // that fails with EAGAIN after every message.
  for (const bool copying : {false, true}) {
    CAPTURE(copying);
    OneDirection d;
    auto& [io, source, sink, from, to] = d;
    send_all(source.theirs, "some bytes");
    ::shutdown(source.theirs, SHUT_WR);
    auto probe = [&]() -> awaitable<std::pair<MoveResult, MoveResult>> {
      SpliceDirection direction;
      direction.refused = copying;  // the copy path decides the same way
      auto first = co_await move_available(from, to, direction, unlimited_bytes, OnMoved{});
      auto second = co_await move_available(from, to, direction, unlimited_bytes, OnMoved{});
      co_return std::pair{first, second};
    };
    auto [first, second] = run_on_io(io, probe());
    CHECK(first.bytes == 10);
    CHECK(first.source_drained);
    CHECK_FALSE(first.failed());
    CHECK(second.bytes == 0);
    CHECK(second.read_error == asio::error::eof);
    CHECK(read_until_eof(sink.theirs, 10) == "some bytes");
  }
}

TEST_CASE("a move that spends its limit is not drained: the caller reads again without a wait") {
  OneDirection d;
  auto& [io, source, sink, from, to] = d;
  send_all(source.theirs, "0123456789");
  auto probe = [&]() -> awaitable<MoveResult> {
    SpliceDirection direction;
    co_return co_await move_available(from, to, direction, 4, OnMoved{});
  };
  auto moved = run_on_io(io, probe());
  CHECK(moved.bytes == 4);
  CHECK_FALSE(moved.source_drained);
  CHECK(read_until_eof(sink.theirs, 4) == "0123");
}

TEST_CASE("a destination that refuses splice is remembered and its bytes are copied") {
  OneDirection d(true);
  auto& [io, source, sink, from, to] = d;
  auto body = pattern(300000, 8);
  std::thread writer([&] { send_all(source.theirs, body); });
  std::string got;
  std::thread reader([&] { got = read_until_eof(sink.theirs, body.size()); });
  auto probe = [&]() -> awaitable<SpliceDirection> {
    SpliceDirection direction;
    std::uint64_t total = 0;
    while (total < body.size()) {
      auto moved = co_await move_available(from, to, direction, unlimited_bytes, OnMoved{});
      total += moved.bytes;
      if (moved.failed()) break;
      if (moved.bytes == 0) co_await from.async_wait(Stream::wait_read, use_tuple);
    }
    co_return direction;
  };
  auto direction = run_on_io(io, probe());
  writer.join();
  reader.join();
  CHECK(direction.refused);
  CHECK_FALSE(direction.spliced);
  CHECK(got == body);
}

TEST_CASE("move_exactly sends the bytes already read first and counts them in the length") {
  OneDirection d;
  auto& [io, source, sink, from, to] = d;
  const std::string already = "first bytes, read with the head;";
  auto rest = pattern(700000, 9);
  std::thread writer([&] {
    send_all(source.theirs, rest);
    send_all(source.theirs, "next");
  });
  std::string got;
  const std::size_t length = already.size() + rest.size();
  std::thread reader([&] { got = read_until_eof(sink.theirs, length); });
  auto result = run_on_io(io, move_exactly(from, to, length, asio::buffer(already), OnMoved{}));
  writer.join();
  reader.join();
  CHECK_FALSE(result.failed());
  CHECK(result.bytes == length);
  CHECK(got == already + rest);
  CHECK(read_until_eof(source.ours, 4) == "next");
}
