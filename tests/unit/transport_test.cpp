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
