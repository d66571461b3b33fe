#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <doctest/doctest.h>

#include <fmt/format.h>

#include "common/transport.hpp"

using vmgate::transport::Kind;
using vmgate::transport::parse;

TEST_CASE("transport URIs parse into their kinds and print back") {
  auto v = parse("vsock:3:5500");
  REQUIRE(v.has_value());
  CHECK(v->kind == Kind::vsock);
  CHECK(v->cid == 3);
  CHECK(v->port == 5500);
  CHECK(v->to_string() == "vsock:3:5500");

  auto any = parse("vsock:ANY:5500");
  REQUIRE(any.has_value());
  CHECK(any->cid == vmgate::transport::vsock_cid_any);
  CHECK(any->to_string() == "vsock:ANY:5500");

  auto u = parse("unix:/run/vmgate/vm1.sock");
  REQUIRE(u.has_value());
  CHECK(u->kind == Kind::unix_socket);
  CHECK(u->path == "/run/vmgate/vm1.sock");

  auto t = parse("tcp:[::1]:8080");
  REQUIRE(t.has_value());
  CHECK(t->kind == Kind::tcp);
  CHECK(t->host == "::1");
  CHECK(t->to_string() == "tcp:[::1]:8080");

  auto f = parse("fcvsock:/run/fc/v.sock:5500");
  REQUIRE(f.has_value());
  CHECK(f->kind == Kind::fcvsock);
  CHECK(f->path == "/run/fc/v.sock");
  CHECK(f->port == 5500);
}

TEST_CASE("malformed transport URIs say what is wrong") {
  CHECK(parse("vsock:3").error().find("no port") != std::string::npos);
  CHECK(parse("vsock:x:1").error().find("invalid CID") != std::string::npos);
  CHECK(parse("tcp:host:99999").error().find("invalid port") != std::string::npos);
  CHECK(parse("unix:relative").error().find("absolute path") != std::string::npos);
  CHECK(parse("unix:/" + std::string(200, 'a')).error().find("longer than") != std::string::npos);
  CHECK(parse("smtp:x:1").error().find("unknown transport scheme") != std::string::npos);
  CHECK(parse("nocolon").error().find("no scheme") != std::string::npos);
}

namespace {

int nodelay(int fd) {
  int value = -1;
  socklen_t size = sizeof value;
  if (::getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &value, &size) != 0) return -1;
  return value;
}

}  // namespace

TEST_CASE("a TCP connection is made with Nagle's algorithm off") {
  vmgate::asio::io_context io;
  vmgate::error_code ec;
  auto listening = parse("tcp:127.0.0.1:0");
  REQUIRE(listening.has_value());
  auto acceptor = vmgate::transport::listen(io.get_executor(), *listening, ec);
  REQUIRE_FALSE(ec);
  auto bound = parse(vmgate::transport::local_uri(acceptor, *listening));
  REQUIRE(bound.has_value());

  vmgate::error_code connect_ec = vmgate::asio::error::would_block;
  std::optional<vmgate::Stream> client;
  vmgate::asio::co_spawn(
      io,
      [&]() -> vmgate::awaitable<void> {
        auto [e, s] = co_await vmgate::transport::connect(*bound);
        connect_ec = e;
        client.emplace(std::move(s));
      },
      vmgate::asio::detached);
  io.run();
  REQUIRE_FALSE(connect_ec);
  CHECK(nodelay(client->native_handle()) == 1);

  // What an accepting server does with the kind it listens on.
  vmgate::Stream accepted = acceptor.accept(ec);
  REQUIRE_FALSE(ec);
  CHECK(nodelay(accepted.native_handle()) == 0);
  vmgate::transport::tune(accepted, Kind::tcp);
  CHECK(nodelay(accepted.native_handle()) == 1);
}

TEST_CASE("tuning a unix socket leaves it alone") {
  int fds[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
  vmgate::asio::io_context io;
  vmgate::Stream a(io, vmgate::asio::generic::stream_protocol(AF_UNIX, 0), fds[0]);
  vmgate::Stream b(io, vmgate::asio::generic::stream_protocol(AF_UNIX, 0), fds[1]);
  vmgate::transport::tune(a, Kind::unix_socket);  // no TCP option to set: nothing fails
  CHECK(nodelay(a.native_handle()) == -1);
}

namespace {

// A fresh directory for socket files, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    char templ[] = "/tmp/vmgate-transport-test-XXXXXX";
    REQUIRE(::mkdtemp(templ) != nullptr);
    path_ = templ;
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(std::string_view name) const { return fmt::format("{}/{}", path_, name); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// The process umask, replaced while this lives.
class UmaskScope {
 public:
  explicit UmaskScope(mode_t mask) : saved_(::umask(mask)) {}
  ~UmaskScope() { ::umask(saved_); }
  UmaskScope(const UmaskScope&) = delete;
  UmaskScope& operator=(const UmaskScope&) = delete;

 private:
  mode_t saved_;
};

vmgate::transport::Address unix_address(const std::string& path) {
  auto a = parse(fmt::format("unix:{}", path));
  REQUIRE(a.has_value());
  return *a;
}

// The permission bits of `path`, or -1 when it cannot be read.
int mode_of(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode)) return -1;
  return static_cast<int>(st.st_mode & 07777);
}

}  // namespace

TEST_CASE("the address accept gives names a client as getpeername does") {
  TempDir dir;
  vmgate::asio::io_context io;
  vmgate::error_code ec;
  for (const std::string& uri : {std::string("tcp:127.0.0.1:0"), "unix:" + dir.file("peer.sock")}) {
    CAPTURE(uri);
    auto listening = parse(uri);
    REQUIRE(listening.has_value());
    auto acceptor = vmgate::transport::listen(io.get_executor(), *listening, ec);
    REQUIRE_FALSE(ec);
    vmgate::Stream client(io);
    // A unix listener binds a temporary name and renames it into place.
    client.connect(listening->kind == Kind::unix_socket
                       ? vmgate::Acceptor::endpoint_type(
                             vmgate::asio::local::stream_protocol::endpoint(listening->path))
                       : acceptor.local_endpoint(),
                   ec);
    REQUIRE_FALSE(ec);
    vmgate::Acceptor::endpoint_type from;
    vmgate::Stream accepted = acceptor.accept(from, ec);
    REQUIRE_FALSE(ec);
    const auto peer = vmgate::transport::peer_address(from);
    CHECK(peer.text == vmgate::transport::describe_peer(accepted));
    CHECK(peer.ip == vmgate::transport::peer_ip(accepted));
  }
}

TEST_CASE("a client's address from accept: IPv4-mapped as IPv4, an unnamed unix client as unix") {
  using Endpoint = vmgate::asio::generic::stream_protocol::endpoint;
  sockaddr_in6 v6{};
  v6.sin6_family = AF_INET6;
  v6.sin6_port = htons(51514);
  const unsigned char mapped[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 7};
  std::memcpy(&v6.sin6_addr, mapped, sizeof mapped);
  const auto peer = vmgate::transport::peer_address(Endpoint(&v6, sizeof v6, IPPROTO_TCP));
  REQUIRE(peer.ip.has_value());
  CHECK(peer.ip->is_v4());
  CHECK(peer.ip->to_string() == "192.0.2.7");
  CHECK(peer.text == "[::ffff:192.0.2.7]:51514");

  const sa_family_t unnamed = AF_UNIX;  // all accept(2) gives for such a client
  const auto unix_peer = vmgate::transport::peer_address(Endpoint(&unnamed, sizeof unnamed, 0));
  CHECK_FALSE(unix_peer.ip.has_value());
  CHECK(unix_peer.text == "unix");
}

TEST_CASE("a unix listener's socket file has the asked mode whatever the umask") {
  TempDir dir;
  vmgate::asio::io_context io;
  struct Case {
    mode_t umask;
    std::uint32_t mode;
  };
  // 000 would widen a file made by bind alone to 0777; 077 would narrow it.
  for (auto [umask, mode] : {Case{0000, 0600}, Case{0077, 0660}, Case{0022, 0620}}) {
    CAPTURE(umask);
    CAPTURE(mode);
    const std::string path = dir.file(fmt::format("{:o}.sock", mode));
    vmgate::error_code ec;
    UmaskScope scope(umask);
    auto acceptor = vmgate::transport::listen(io.get_executor(), unix_address(path), ec, mode);
    REQUIRE_FALSE(ec);
    CHECK(mode_of(path) == static_cast<int>(mode));
  }
}

TEST_CASE("a stale unix socket file is replaced, a live one is refused and left serving") {
  TempDir dir;
  const std::string path = dir.file("channel.sock");
  vmgate::asio::io_context io;
  vmgate::error_code ec;
  {
    // Closed without removing its file: what a killed process leaves.
    auto earlier = vmgate::transport::listen(io.get_executor(), unix_address(path), ec);
    REQUIRE_FALSE(ec);
  }
  REQUIRE(mode_of(path) != -1);
  auto live = vmgate::transport::listen(io.get_executor(), unix_address(path), ec);
  CHECK_FALSE(ec);

  vmgate::error_code second_ec;
  auto second = vmgate::transport::listen(io.get_executor(), unix_address(path), second_ec);
  CHECK(second_ec == vmgate::asio::error::address_in_use);
  CHECK_FALSE(second.is_open());
  // The first listener still owns the path: a client reaches it.
  int client = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  auto ep = vmgate::asio::local::stream_protocol::endpoint(path);
  CHECK(::connect(client, ep.data(), static_cast<socklen_t>(ep.size())) == 0);
  ::close(client);
  live.non_blocking(true);  // a listener that lost its path has nothing to accept: no hang
  vmgate::Stream accepted = live.accept(ec);
  CHECK_FALSE(ec);
}

TEST_CASE("a unix listener's path appears only once it listens, and nothing is left beside it") {
  // bind() makes the file, but a connect() before listen() is refused: a
  // peer that waits for the path and connects at once must never see that.
  // inotify shows how the path came to be: moved into place whole (rename
  // after listen), not created (bind on the path itself).
  TempDir dir;
  const std::string path = dir.file("vm1.sock");
  const int watch = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  REQUIRE(watch >= 0);
  REQUIRE(::inotify_add_watch(watch, dir.path().c_str(), IN_CREATE | IN_MOVED_TO) >= 0);
  vmgate::asio::io_context io;
  vmgate::error_code ec;
  auto acceptor = vmgate::transport::listen(io.get_executor(), unix_address(path), ec, 0660);
  REQUIRE_FALSE(ec);
  bool created = false;
  bool moved_in = false;
  alignas(inotify_event) char events[4096];
  const ssize_t got = ::read(watch, events, sizeof events);
  for (ssize_t at = 0; at < got;) {
    const auto* e = reinterpret_cast<const inotify_event*>(events + at);
    if (e->len > 0 && std::string_view(e->name) == "vm1.sock") {
      created = created || (e->mask & IN_CREATE) != 0;
      moved_in = moved_in || (e->mask & IN_MOVED_TO) != 0;
    }
    at += static_cast<ssize_t>(sizeof(inotify_event) + e->len);
  }
  ::close(watch);
  CHECK_FALSE(created);
  CHECK(moved_in);
  CHECK(mode_of(path) == 0660);
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path()))
    names.push_back(entry.path().filename().string());
  CHECK(names == std::vector<std::string>{"vm1.sock"});
  int client = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  auto ep = vmgate::asio::local::stream_protocol::endpoint(path);
  CHECK(::connect(client, ep.data(), static_cast<socklen_t>(ep.size())) == 0);
  ::close(client);
}

TEST_CASE("a unix listener never deletes a path that is not a socket") {
  TempDir dir;
  const std::string path = dir.file("guestd.toml");
  std::ofstream(path) << "listen = \"vsock:ANY:5500\"\n";
  vmgate::asio::io_context io;
  vmgate::error_code ec;
  auto acceptor = vmgate::transport::listen(io.get_executor(), unix_address(path), ec);
  CHECK(ec == boost::system::errc::file_exists);
  CHECK_FALSE(acceptor.is_open());
  std::ifstream kept(path);
  std::string line;
  std::getline(kept, line);
  CHECK(line == "listen = \"vsock:ANY:5500\"");

  const std::string subdir = dir.file("subdir");
  std::filesystem::create_directory(subdir);
  auto on_dir = vmgate::transport::listen(io.get_executor(), unix_address(subdir), ec);
  CHECK(ec == boost::system::errc::file_exists);
  CHECK(std::filesystem::is_directory(subdir));
}
