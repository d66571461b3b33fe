// IdleWatch: many idle timeouts on one io_context, one timer. Asserts the
// order watches end in and whether they end, never how long anything took.
#include <doctest/doctest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/asio.hpp"
#include "common/idle_watch.hpp"
#include "common/relay.hpp"

using namespace std::chrono_literals;
using namespace vmgate;

namespace {

// Notes its name in `ended` when its idle time passes.
struct NamedWatch : IdleWatch {
  NamedWatch(asio::io_context& io, std::chrono::milliseconds idle, std::string name_,
             std::vector<std::string>& ended_)
      : IdleWatch(io.get_executor(), idle), name(std::move(name_)), ended(ended_) {}
  void on_idle() override { ended.push_back(name); }
  std::string name;
  std::vector<std::string>& ended;
};

// Runs `io` until `done` says so, for 20 s at most.
void run_until(asio::io_context& io, const std::function<bool()>& done) {
  const auto give_up = std::chrono::steady_clock::now() + 20s;
  while (!done() && std::chrono::steady_clock::now() < give_up)
    io.run_for(5ms);
}

}  // namespace

TEST_CASE("a watch made after a longer one, while the timer waits for that, ends first") {
  asio::io_context io;
  std::vector<std::string> ended;
  NamedWatch slow(io, 400ms, "slow", ended);
  io.run_for(1ms);  // the clock's timer now waits for `slow`
  NamedWatch quick(io, 20ms, "quick", ended);
  run_until(io, [&] { return ended.size() == 2; });
  CHECK(ended == std::vector<std::string>{"quick", "slow"});
}

TEST_CASE("watches of one idle time end in the order they last moved") {
  asio::io_context io;
  std::vector<std::string> ended;
  NamedWatch first(io, 100ms, "first", ended);
  NamedWatch second(io, 100ms, "second", ended);
  NamedWatch third(io, 100ms, "third", ended);
  first.touch();  // now the last to have moved
  run_until(io, [&] { return ended.size() == 3; });
  CHECK(ended == std::vector<std::string>{"second", "third", "first"});
}

TEST_CASE("a watch kept moving does not end, and ends once left alone") {
  asio::io_context io;
  std::vector<std::string> ended;
  NamedWatch kept(io, 300ms, "kept", ended);
  NamedWatch left(io, 300ms, "left", ended);
  // `kept` moves every 20 ms until `left` has ended: it never falls idle.
  asio::steady_timer ticker(io);
  std::function<void()> tick = [&] {
    if (!ended.empty()) return;
    kept.touch();
    ticker.expires_after(20ms);
    ticker.async_wait([&](error_code) { tick(); });
  };
  tick();
  run_until(io, [&] { return ended.size() == 2; });
  CHECK(ended == std::vector<std::string>{"left", "kept"});
}

TEST_CASE("a stopped or destroyed watch never ends, and the others still do") {
  asio::io_context io;
  std::vector<std::string> ended;
  NamedWatch stopped(io, 20ms, "stopped", ended);
  auto destroyed = std::make_unique<NamedWatch>(io, 20ms, "destroyed", ended);
  NamedWatch kept(io, 60ms, "kept", ended);
  stopped.stop();
  destroyed.reset();
  run_until(io, [&] { return !ended.empty(); });
  io.run_for(50ms);
  CHECK(ended == std::vector<std::string>{"kept"});
}

TEST_CASE("run() returns once the last watch is gone, not at its idle time") {
  asio::io_context io;
  std::vector<std::string> ended;
  auto watch = std::make_unique<NamedWatch>(io, 1h, "gone", ended);
  io.run_for(5ms);  // the clock's timer now waits an hour for it
  watch.reset();
  io.restart();
  std::promise<void> returned;
  std::thread runner([&] {
    io.run();
    returned.set_value();
  });
  const bool by_itself = returned.get_future().wait_for(20s) == std::future_status::ready;
  if (!by_itself) io.stop();
  runner.join();
  CHECK(by_itself);
  CHECK(ended.empty());
}

TEST_CASE("an io_context that ends with idle relays still waiting ends cleanly") {
  // As in the daemons at exit: each relay's streams are owned by its
  // completion handler, so its state, its watch and its streams all end
  // with the context's pending operations, after its services have shut
  // down. The clock must outlive them (under ASan, in CI, a use after free
  // would show here).
  bool ran = false;
  std::vector<int> far_ends;
  {
    asio::io_context io;
    for (int i = 0; i < 2; ++i) {
      auto streams = std::make_unique<std::vector<Stream>>();
      for (int j = 0; j < 2; ++j) {
        int fds[2];
        REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
        streams->emplace_back(io).assign(asio::generic::stream_protocol(AF_UNIX, SOCK_STREAM),
                                         fds[0]);
        far_ends.push_back(fds[1]);
      }
      Stream& a = (*streams)[0];
      Stream& b = (*streams)[1];
      start_relay(a, b, 1h, {},
                  relay_done([owned = std::move(streams), &ran](RelayResult) { ran = true; }));
    }
    io.run_for(10ms);
  }
  for (int fd : far_ends)
    ::close(fd);
  CHECK_FALSE(ran);
}
