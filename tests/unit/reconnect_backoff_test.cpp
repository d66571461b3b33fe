#include <set>

#include <doctest/doctest.h>

#include "hostd/inventory/reconnect_backoff.hpp"

using namespace std::chrono_literals;
using vmgate::hostd::ReconnectBackoff;

TEST_CASE("reconnect waits double from the minimum up to the maximum, each within its jitter") {
  ReconnectBackoff backoff(500ms, 4000ms, 1);
  for (auto delay : {500ms, 1000ms, 2000ms, 4000ms, 4000ms, 4000ms}) {
    const auto wait = backoff.next();
    CHECK(wait >= delay / 2);
    CHECK(wait <= delay);
  }
  backoff.reset();
  CHECK(backoff.next() <= 500ms);
}

TEST_CASE("reconnect waits are spread, not in step") {
  // Hostds that lost one daemon together must not all come back at once.
  std::set<long> waits;
  for (std::uint32_t seed = 1; seed <= 50; ++seed)
    waits.insert(static_cast<long>(ReconnectBackoff(2000ms, 2000ms, seed).next().count()));
  CHECK(waits.size() > 25);
  CHECK(*waits.begin() < 1500);
  CHECK(*waits.rbegin() > 1500);
}
