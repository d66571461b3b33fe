// The real guestd server, in-process on a unix socket in a temp dir, with a
// tiny agent behind it. The test speaks to it as hostd would, with plain
// blocking sockets; every wait is bounded, no assertion is about time.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <future>
#include <string>
#include <thread>

#include <fmt/format.h>

#include "common/asio.hpp"
#include "common/log.hpp"
#include "common/transport.hpp"
#include "guestd/config/guestd_config.hpp"
#include "guestd/dispatch/server.hpp"

using namespace std::chrono_literals;
using namespace vmgate;

namespace {

// Long enough never to matter on a loaded machine; only reached on failure.
constexpr auto bound = 20s;

std::string ok_answer() {
  return "VMGATE/1 200 OK\r\n\r\n";
}
// The whole answer to a CONNECT the echo agent served: OK, then its reply.
// (fmt rather than operator+: g++ 12 warns falsely on string concatenation.)
std::string relayed_reply(std::string_view sent) {
  return fmt::format("{}agent got: {}", ok_answer(), sent);
}

// A blocking client socket with bounded reads.
class Client {
 public:
  explicit Client(const std::string& path) : fd_(::socket(AF_UNIX, SOCK_STREAM, 0)) {
    REQUIRE(fd_ >= 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    REQUIRE(path.size() < sizeof sa.sun_path);
    std::memcpy(sa.sun_path, path.data(), path.size());
    REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  }
  ~Client() { ::close(fd_); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  void send(std::string_view data) {
    while (!data.empty()) {
      auto n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      REQUIRE(n > 0);
      data.remove_prefix(static_cast<std::size_t>(n));
    }
  }
  void shutdown_write() { REQUIRE(::shutdown(fd_, SHUT_WR) == 0); }

  // Reads exactly `n` bytes, or what came before a close or the bound.
  std::string read_exact(std::size_t n, std::chrono::milliseconds limit = bound) {
    std::string out;
    auto end = std::chrono::steady_clock::now() + limit;
    while (out.size() < n) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          end - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      std::string chunk(n - out.size(), '\0');
      auto got = ::recv(fd_, chunk.data(), chunk.size(), 0);
      if (got <= 0) break;
      out.append(chunk.data(), static_cast<std::size_t>(got));
    }
    return out;
  }

  struct Received {
    std::string data;
    bool eof = false;  // false: the bound passed first, or a read error
  };
  // Reads until the peer closes (EOF or reset), at most `limit`.
  Received read_to_eof(std::chrono::milliseconds limit = bound) {
    Received r;
    auto end = std::chrono::steady_clock::now() + limit;
    char buffer[16384];
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          end - std::chrono::steady_clock::now());
      if (left.count() <= 0) return r;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      auto n = ::recv(fd_, buffer, sizeof buffer, 0);
      if (n <= 0) {
        r.eof = true;
        return r;
      }
      r.data.append(buffer, static_cast<std::size_t>(n));
    }
  }

 private:
  int fd_;
};

// The agent: reads everything until EOF, then answers "agent got: " and what
// it read, and closes. It replying only after EOF proves half-close crosses
// guestd; the client receiving the reply after its own half-close proves the
// other direction stays open.
class EchoAfterEofAgent {
 public:
  EchoAfterEofAgent(asio::io_context& io, const std::string& path) : acceptor_(io) {
    error_code ec;
    auto address = transport::parse(fmt::format("unix:{}", path));
    REQUIRE(address.has_value());
    acceptor_ = transport::listen(io.get_executor(), *address, ec);
    REQUIRE_FALSE(ec);
    asio::co_spawn(io, accept_loop(), [](std::exception_ptr) {});
  }
  void close() {
    error_code ignored;
    acceptor_.close(ignored);
  }
  int connections() const { return connections_; }

 private:
  awaitable<void> accept_loop() {
    for (;;) {
      auto [ec, socket] = co_await acceptor_.async_accept(use_tuple);
      if (ec) co_return;
      ++connections_;
      asio::co_spawn(acceptor_.get_executor(), serve(std::move(socket)), [](std::exception_ptr) {});
    }
  }
  static awaitable<void> serve(Stream socket) {
    std::string received;
    char buffer[16384];
    for (;;) {
      auto [ec, n] = co_await socket.async_read_some(asio::buffer(buffer), use_tuple);
      received.append(buffer, n);
      if (ec) break;
    }
    std::string reply = fmt::format("agent got: {}", received);
    co_await asio::async_write(socket, asio::buffer(reply), use_tuple);
  }

  Acceptor acceptor_;
  std::atomic<int> connections_{0};
};

// A TCP listener that never accepts, with its one-slot queue filled: the
// kernel drops further SYNs, so connecting to it hangs (Linux).
class BlackholeListener {
 public:
  BlackholeListener() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
    REQUIRE(::listen(fd_, 0) == 0);
    socklen_t len = sizeof sa;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&sa), &len);
    port_ = ntohs(sa.sin_port);
    filler_ = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(::connect(filler_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  }
  ~BlackholeListener() {
    ::close(filler_);
    ::close(fd_);
  }
  std::uint16_t port() const { return port_; }

 private:
  int fd_ = -1;
  int filler_ = -1;
  std::uint16_t port_ = 0;
};

// What the process writes to stderr (guestd's log lines) goes to a file
// while this lives, so that a test can read why guestd ended a channel.
class StderrCapture {
 public:
  StderrCapture() {
    char templ[] = "/tmp/vmgate-guestd-log-XXXXXX";
    file_ = ::mkstemp(templ);
    REQUIRE(file_ >= 0);
    path_ = templ;
    saved_ = ::dup(STDERR_FILENO);
    REQUIRE(::dup2(file_, STDERR_FILENO) >= 0);
  }
  ~StderrCapture() {
    ::dup2(saved_, STDERR_FILENO);
    ::close(saved_);
    ::close(file_);
    std::filesystem::remove(path_);
  }
  StderrCapture(const StderrCapture&) = delete;
  StderrCapture& operator=(const StderrCapture&) = delete;

  std::string text() const {
    std::string out;
    int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    char buffer[4096];
    for (ssize_t n; fd >= 0 && (n = ::read(fd, buffer, sizeof buffer)) > 0;)
      out.append(buffer, static_cast<std::size_t>(n));
    if (fd >= 0) ::close(fd);
    return out;
  }
  // Waits (at most `bound`) for a line holding `needle`.
  bool wait_for(std::string_view needle) const {
    auto end = std::chrono::steady_clock::now() + bound;
    while (text().find(needle) == std::string::npos) {
      if (std::chrono::steady_clock::now() > end) return false;
      std::this_thread::sleep_for(10ms);
    }
    return true;
  }

 private:
  std::string path_;
  int file_ = -1;
  int saved_ = -1;
};

// guestd's preamble and agent-connect timeouts. They apply to every channel,
// so by default they are far above what a loaded machine needs to send a
// preamble or connect to a unix socket; only a test of a timeout itself makes
// its own short, where nothing that should succeed depends on it.
struct Timeouts {
  std::chrono::milliseconds preamble = 10s;
  std::chrono::milliseconds agent_connect = 10s;
};

// guestd on unix:DIR/channel.sock; port 5986 → the echo agent, 8114 → a
// socket nobody listens on, 9000 → `blackhole_port` when given.
class GuestdFixture {
 public:
  explicit GuestdFixture(std::uint32_t max_connections = 64, std::uint16_t blackhole_port = 0,
                         Timeouts timeouts = {}) {
    log::set_min_level(log::Level::warn);
    char templ[] = "/tmp/vmgate-guestd-test-XXXXXX";
    REQUIRE(::mkdtemp(templ) != nullptr);
    dir_ = templ;
    channel_path_ = fmt::format("{}/channel.sock", dir_);

    guestd::GuestdConfig config;
    config.listen = *transport::parse(fmt::format("unix:{}", channel_path_));
    config.allowed_ports = {5986, 8114, 9000};
    config.agents[5986] = *transport::parse(fmt::format("unix:{}/agent.sock", dir_));
    config.agents[8114] = *transport::parse(fmt::format("unix:{}/nobody.sock", dir_));
    if (blackhole_port != 0)
      config.agents[9000] = *transport::parse(fmt::format("tcp:127.0.0.1:{}", blackhole_port));
    config.limits.preamble_timeout = timeouts.preamble;
    config.limits.agent_connect_timeout = timeouts.agent_connect;
    config.limits.idle_timeout = 10s;
    config.limits.max_connections = max_connections;

    agent_ = std::make_unique<EchoAfterEofAgent>(io_, fmt::format("{}/agent.sock", dir_));
    server_ = std::make_unique<guestd::Server>(io_.get_executor(), config);
    REQUIRE_FALSE(server_->start());
    server_->on_stopped([this] { stopped_.set_value(); });
    thread_ = std::thread([this] { io_.run(); });
  }

  ~GuestdFixture() {
    stop(0ms);
    CHECK(stopped_future_.wait_for(bound) == std::future_status::ready);
    io_.stop();
    thread_.join();
    server_.reset();
    agent_.reset();
    std::filesystem::remove_all(dir_);
    log::set_min_level(log::Level::info);
  }

  void stop(std::chrono::milliseconds grace) {
    asio::post(io_, [this, grace] {
      server_->stop(grace);
      agent_->close();
    });
  }
  // Whether the server reported it stopped within the bound.
  bool wait_stopped() { return stopped_future_.wait_for(bound) == std::future_status::ready; }

  Client connect() { return Client(channel_path_); }
  int agent_connections() const { return agent_->connections(); }
  const std::string& channel_path() const { return channel_path_; }

  // One exchange: send `data`, half-close, read the whole answer.
  Client::Received exchange(std::string_view data) {
    Client client = connect();
    client.send(data);
    client.shutdown_write();
    return client.read_to_eof();
  }

 private:
  std::string dir_;
  std::string channel_path_;
  asio::io_context io_{1};
  std::unique_ptr<EchoAfterEofAgent> agent_;
  std::unique_ptr<guestd::Server> server_;
  std::promise<void> stopped_;
  std::future<void> stopped_future_ = stopped_.get_future();
  std::thread thread_;
};

}  // namespace

TEST_CASE(
    "guestd relays a CONNECT both ways, bytes after the preamble included, and half-close "
    "crosses") {
  GuestdFixture guestd;
  Client client = guestd.connect();
  // The first bytes of the stream ride in the same write as the preamble.
  client.send("VMGATE/1 CONNECT 5986\r\nRequest-Id: t1\r\n\r\nhello ");
  client.send("world");
  client.shutdown_write();
  auto answer = client.read_to_eof();
  CHECK(answer.eof);
  CHECK(answer.data == relayed_reply("hello world"));
}

TEST_CASE("guestd relays a large stream intact") {
  GuestdFixture guestd;
  std::string payload(512 * 1024, '\0');
  for (std::size_t i = 0; i < payload.size(); ++i)
    payload[i] = static_cast<char>(i * 131 % 251);
  auto answer = guestd.exchange(fmt::format("VMGATE/1 CONNECT 5986\r\n\r\n{}", payload));
  CHECK(answer.eof);
  CHECK(answer.data.size() == ok_answer().size() + 11 + payload.size());
  CHECK(answer.data == relayed_reply(payload));
}

TEST_CASE("CONNECT to a non-allowlisted port is refused by guestd") {
  GuestdFixture guestd;
  auto answer = guestd.exchange("VMGATE/1 CONNECT 22\r\n\r\n");
  CHECK(answer.eof);
  CHECK(answer.data == "VMGATE/1 403 port-not-allowed\r\n\r\n");
  CHECK(guestd.agent_connections() == 0);
}

TEST_CASE("a garbage preamble is answered 400 and closed, and guestd keeps serving") {
  GuestdFixture guestd;
  {
    // What an HTTP client pointed at the channel port sends.
    Client client = guestd.connect();
    client.send("GET / HTTP/1.1\r\nHost: vm1\r\n\r\n");
    auto answer = client.read_to_eof();  // no half-close: guestd must close by itself
    CHECK(answer.eof);
    CHECK(answer.data == "VMGATE/1 400 bad-preamble\r\n\r\n");
  }
  {
    // No terminator within 4096 bytes; the rest of what was sent is dropped.
    auto answer = guestd.exchange(std::string(6000, 'A'));
    CHECK(answer.eof);
    CHECK(answer.data == "VMGATE/1 400 preamble-too-large\r\n\r\n");
  }
  CHECK(guestd.exchange("VMGATE/2 CONNECT 5986\r\n\r\n").data ==
        "VMGATE/1 400 unsupported-version\r\n\r\n");
  CHECK(guestd.exchange("VMGATE/1 CONNECT 0\r\n\r\n").data == "VMGATE/1 400 bad-port\r\n\r\n");
  CHECK(guestd.agent_connections() == 0);

  auto answer = guestd.exchange("VMGATE/1 CONNECT 5986\r\n\r\nstill here");
  CHECK(answer.eof);
  CHECK(answer.data == relayed_reply("still here"));
}

TEST_CASE("a preamble that never completes is closed after the preamble timeout") {
  GuestdFixture guestd(64, 0, Timeouts{.preamble = 200ms});
  StderrCapture log_lines;
  log::set_min_level(log::Level::info);
  Client client = guestd.connect();
  client.send("VMGATE/1 CONN");
  auto answer = client.read_to_eof();  // bounded far above the timeout
  CHECK(answer.eof);
  CHECK(answer.data.empty());
  // Closed because the timeout passed, not for any other reason.
  CHECK(log_lines.wait_for("reason=preamble-timeout"));
  INFO("guestd's log: " << log_lines.text());
  CHECK(log_lines.text().find("event=channel ") != std::string::npos);
  CHECK(guestd.agent_connections() == 0);
}

TEST_CASE("a preamble completed by a later write before the preamble timeout is served") {
  GuestdFixture guestd;
  Client client = guestd.connect();
  client.send("VMGATE/1 CONN");
  // Long enough for guestd to read the first part alone; far below the timeout.
  std::this_thread::sleep_for(100ms);
  client.send("ECT 5986\r\n\r\nlate");
  client.shutdown_write();
  auto answer = client.read_to_eof();
  CHECK(answer.eof);
  CHECK(answer.data == relayed_reply("late"));
}

TEST_CASE("an agent that is down is answered 502 agent-unreachable") {
  GuestdFixture guestd;
  auto answer = guestd.exchange("VMGATE/1 CONNECT 8114\r\nRequest-Id: t2\r\n\r\n");
  CHECK(answer.eof);
  CHECK(answer.data == "VMGATE/1 502 agent-unreachable\r\n\r\n");
}

TEST_CASE("an agent that does not accept in time is answered 504 agent-timeout") {
  BlackholeListener blackhole;
  GuestdFixture guestd(64, blackhole.port(), Timeouts{.agent_connect = 200ms});
  auto answer = guestd.exchange("VMGATE/1 CONNECT 9000\r\n\r\n");
  CHECK(answer.eof);
  CHECK(answer.data == "VMGATE/1 504 agent-timeout\r\n\r\n");
}

TEST_CASE("host-bound verbs received by guestd are answered 501 not-implemented") {
  GuestdFixture guestd;
  for (std::string_view line :
       {"VMGATE/1 SEND host:api", "VMGATE/1 JOIN web", "VMGATE/1 LEAVE web"}) {
    CAPTURE(line);
    auto answer = guestd.exchange(fmt::format("{}\r\n\r\n", line));
    CHECK(answer.eof);
    CHECK(answer.data == "VMGATE/1 501 not-implemented\r\n\r\n");
  }
}

TEST_CASE("above max_connections a new channel is answered 503 busy") {
  GuestdFixture guestd(1);
  Client first = guestd.connect();
  first.send("VMGATE/1 CONNECT 5986\r\n\r\n");  // relaying, held open by the agent
  Client second = guestd.connect();
  auto busy = second.read_to_eof();
  CHECK(busy.eof);
  CHECK(busy.data == "VMGATE/1 503 busy\r\n\r\n");

  first.send("done");
  first.shutdown_write();
  auto answer = first.read_to_eof();
  CHECK(answer.data == relayed_reply("done"));
  // The slot is free again once the first session has ended.
  bool served = false;
  for (int attempt = 0; attempt < 200 && !served; ++attempt) {
    auto again = guestd.exchange("VMGATE/1 CONNECT 5986\r\n\r\nx");
    served = again.data == relayed_reply("x");
    if (!served) std::this_thread::sleep_for(10ms);
  }
  CHECK(served);
}

TEST_CASE("stopping guestd closes its sessions and reports it stopped") {
  GuestdFixture guestd;
  Client relaying = guestd.connect();
  relaying.send("VMGATE/1 CONNECT 5986\r\n\r\n");
  CHECK(relaying.read_exact(ok_answer().size()) == ok_answer());  // relaying now
  Client waiting = guestd.connect();
  waiting.send("VMGATE/1 CONN");

  guestd.stop(0ms);
  auto relayed = relaying.read_to_eof();
  CHECK(relayed.eof);
  CHECK(relayed.data.empty());
  auto waited = waiting.read_to_eof();
  CHECK(waited.eof);
  CHECK(waited.data.empty());
  CHECK(guestd.wait_stopped());
  CHECK_FALSE(std::filesystem::exists(guestd.channel_path()));
}

TEST_CASE("guestd's unix socket has its socket_mode once guestd listens, whatever the umask") {
  log::set_min_level(log::Level::warn);
  char templ[] = "/tmp/vmgate-guestd-mode-XXXXXX";
  REQUIRE(::mkdtemp(templ) != nullptr);
  const std::string dir = templ;
  struct Case {
    mode_t umask;
    std::uint32_t socket_mode;
  };
  // With umask 000 a socket bound without a chmod would be 0777: anyone in
  // the guest could reach its agents.
  for (auto [umask, socket_mode] : {Case{0000, guestd::default_socket_mode}, Case{0077, 0660}}) {
    CAPTURE(umask);
    CAPTURE(socket_mode);
    guestd::GuestdConfig config;
    config.listen = *transport::parse(fmt::format("unix:{}/channel.sock", dir));
    config.socket_mode = socket_mode;
    config.listen_remote = (socket_mode & 0022) != 0;
    asio::io_context io(1);
    guestd::Server server(io.get_executor(), config);
    const mode_t saved = ::umask(umask);
    const error_code ec = server.start();
    ::umask(saved);
    REQUIRE_FALSE(ec);

    struct stat st {};
    REQUIRE(::lstat(config.listen.path.c_str(), &st) == 0);
    CHECK(S_ISSOCK(st.st_mode));
    CHECK((st.st_mode & 07777) == socket_mode);
    CHECK(st.st_uid == ::geteuid());

    server.stop(0ms);
    io.run_for(bound);
  }
  std::filesystem::remove_all(dir);
  log::set_min_level(log::Level::info);
}
