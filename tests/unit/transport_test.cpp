#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <optional>

#include <doctest/doctest.h>

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
