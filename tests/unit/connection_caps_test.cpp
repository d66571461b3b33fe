#include "hostd/admission/connection_caps.hpp"

#include <optional>
#include <vector>

#include <doctest/doctest.h>

using namespace vmgate::hostd;
namespace ip = boost::asio::ip;

TEST_CASE("connection caps: one address gets its limit of places, another address its own") {
  ConnectionCaps caps;
  const auto a = ip::make_address("192.0.2.1");
  const auto b = ip::make_address("192.0.2.2");
  std::vector<CapPlace> held;
  for (int i = 0; i < 3; ++i) {
    held.push_back(caps.take_client(a, 3));
    CHECK(held.back());
  }
  CHECK_FALSE(caps.take_client(a, 3));
  CHECK(caps.connections_from(a) == 3);
  CapPlace other = caps.take_client(b, 3);
  CHECK(other);
  CHECK(caps.connections_from(b) == 1);
}

TEST_CASE("connection caps: a place given back lets the next connection of that address in") {
  ConnectionCaps caps;
  const auto a = ip::make_address("2001:db8::1");
  std::optional<CapPlace> first(caps.take_client(a, 1));
  CHECK(*first);
  CHECK_FALSE(caps.take_client(a, 1));
  first.reset();
  CHECK(caps.connections_from(a) == 0);
  CHECK(caps.take_client(a, 1));
}

TEST_CASE("connection caps: an IPv4-mapped IPv6 client counts as its IPv4 address") {
  ConnectionCaps caps;
  CapPlace v4 = caps.take_client(ip::make_address("192.0.2.7"), 1);
  CHECK(v4);
  CHECK_FALSE(caps.take_client(ip::make_address("::ffff:192.0.2.7"), 1));
}

TEST_CASE("connection caps: tunnels are capped hostd-wide and give their place back") {
  ConnectionCaps caps;
  std::optional<CapPlace> one(caps.take_tunnel(2));
  CapPlace two = caps.take_tunnel(2);
  CHECK((*one && two));
  CHECK_FALSE(caps.take_tunnel(2));
  CHECK(caps.open_tunnels() == 2);
  // A moved place is given back once, by its last holder.
  CapPlace moved = std::move(*one);
  one.reset();
  CHECK(caps.open_tunnels() == 2);
  moved = CapPlace{};
  CHECK(caps.open_tunnels() == 1);
  CHECK(caps.take_tunnel(2));
}

TEST_CASE("connection caps: a place outlives the caps that gave it") {
  CapPlace place;
  {
    ConnectionCaps caps;
    place = caps.take_tunnel(1);
  }
  CHECK(place);
  place = CapPlace{};  // gives back into counts the place kept alive
}
