// ChannelBudget: the channels one VM may have open, and the requests that
// wait for one when they are all in use.
#include "hostd/channel/channel_budget.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <optional>

#include <doctest/doctest.h>

using namespace std::chrono_literals;
using namespace vmgate;
using namespace vmgate::hostd;

namespace {

VmRecord vm(std::string uuid = "6f1c0c9e-0000-4000-8000-000000000001") {
  return VmRecord{.uuid = std::move(uuid), .name = "vm1", .cid = 3, .state = VmState::running};
}

ChannelConfig limits(std::uint32_t max_per_vm, std::chrono::milliseconds wait = 10s,
                     std::uint32_t max_waiting = 16, std::uint32_t max_private = 1) {
  ChannelConfig c;
  c.max_per_vm = max_per_vm;
  c.max_private_per_vm = max_private;
  c.wait_timeout = wait;
  c.max_waiting_per_vm = max_waiting;
  return c;
}

using Result = boost::system::result<ChannelBudget::Grant, Refusal>;

// Starts acquire() on `io`; the result lands in `out` when it completes.
void start_acquire(asio::io_context& io, ChannelBudget& budget, const ChannelKey& key,
                   std::optional<Result>& out, std::function<bool()> make_room = {}) {
  asio::co_spawn(
      io,
      [&budget, key, &out, make_room = std::move(make_room)]() -> awaitable<void> {
        out.emplace(co_await budget.acquire(vm(key.uuid), key, make_room));
      },
      asio::detached);
}

Result acquire_now(asio::io_context& io, ChannelBudget& budget, const ChannelKey& key) {
  std::optional<Result> out;
  start_acquire(io, budget, key, out);
  io.restart();
  io.run_for(1s);
  REQUIRE(out.has_value());
  return std::move(*out);
}

// An open channel to `key` holding `ticket`: one end of a socket pair.
Channel channel(asio::io_context& io, ChannelKey key, ChannelTicket ticket) {
  int fds[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
  ::close(fds[1]);
  Channel c{Stream(io, asio::generic::stream_protocol(AF_UNIX, 0), fds[0]), {}, std::move(key)};
  c.ticket = std::move(ticket);
  return c;
}

const ChannelKey key_5986 = ChannelKey::of(vm(), 5986);
const ChannelKey key_8114 = ChannelKey::of(vm(), 8114);

}  // namespace

TEST_CASE("channel budget: tickets come at once under max_per_vm and go back when destroyed") {
  asio::io_context io;
  ChannelBudget budget(limits(2));
  auto a = acquire_now(io, budget, key_5986);
  auto b = acquire_now(io, budget, key_5986);
  REQUIRE(a.has_value());
  REQUIRE(b.has_value());
  CHECK(a->ticket);
  CHECK_FALSE(a->channel);
  CHECK(budget.open_for(vm().uuid) == 2);
  CHECK(budget.stats().open == 2);
  a->ticket = ChannelTicket();
  CHECK(budget.open_for(vm().uuid) == 1);
  // Another VM has a budget of its own.
  CHECK(acquire_now(io, budget, ChannelKey::of(vm("other"), 5986)).has_value());
}

TEST_CASE("channel budget: at max_per_vm a request waits, and gets the place of one that closes") {
  asio::io_context io;
  ChannelBudget budget(limits(1));
  auto held = acquire_now(io, budget, key_5986);
  REQUIRE(held.has_value());
  std::optional<Result> waiting;
  start_acquire(io, budget, key_5986, waiting);
  io.restart();
  io.run_for(50ms);
  CHECK_FALSE(waiting.has_value());
  CHECK(budget.stats().waiting == 1);
  held->ticket = ChannelTicket();  // its channel closed
  io.restart();
  io.run_for(1s);
  REQUIRE(waiting.has_value());
  REQUIRE(waiting->has_value());
  CHECK((*waiting)->ticket);
  CHECK(budget.open_for(vm().uuid) == 1);  // the place moved, it was not freed and taken
  CHECK(budget.stats().waits_granted == 1);
}

TEST_CASE("channel budget: a finished channel goes to a request waiting for the same port") {
  asio::io_context io;
  ChannelBudget budget(limits(1));
  auto held = acquire_now(io, budget, key_5986);
  REQUIRE(held.has_value());
  Channel done = channel(io, key_5986, std::move(held->ticket));
  const int fd = done.stream.native_handle();
  std::optional<Result> waiting;
  start_acquire(io, budget, key_5986, waiting);
  io.restart();
  io.run_for(50ms);
  REQUIRE(budget.hand_over(done));
  io.restart();
  io.run_for(1s);
  REQUIRE(waiting.has_value());
  REQUIRE(waiting->has_value());
  REQUIRE((*waiting)->channel);
  CHECK((*waiting)->channel->stream.native_handle() == fd);
  CHECK(budget.open_for(vm().uuid) == 1);
}

TEST_CASE("channel budget: a finished channel closes to make room for a waiter of another port") {
  asio::io_context io;
  ChannelBudget budget(limits(1));
  auto held = acquire_now(io, budget, key_5986);
  REQUIRE(held.has_value());
  Channel done = channel(io, key_5986, std::move(held->ticket));
  std::optional<Result> waiting;
  start_acquire(io, budget, key_8114, waiting);
  io.restart();
  io.run_for(50ms);
  REQUIRE(budget.hand_over(done));
  CHECK_FALSE(done.stream.is_open());
  io.restart();
  io.run_for(1s);
  REQUIRE(waiting.has_value());
  REQUIRE(waiting->has_value());
  CHECK_FALSE((*waiting)->channel);
  CHECK((*waiting)->ticket);
}

TEST_CASE("channel budget: with nobody waiting, a finished channel is not taken") {
  asio::io_context io;
  ChannelBudget budget(limits(2));
  auto held = acquire_now(io, budget, key_5986);
  REQUIRE(held.has_value());
  Channel done = channel(io, key_5986, std::move(held->ticket));
  CHECK_FALSE(budget.hand_over(done));
  CHECK(done.stream.is_open());
}

TEST_CASE("channel budget: a wait that outlasts wait_timeout is a 503 that says so") {
  asio::io_context io;
  ChannelBudget budget(limits(1, 50ms));
  auto held = acquire_now(io, budget, key_5986);
  REQUIRE(held.has_value());
  auto refused = acquire_now(io, budget, key_5986);
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.error().status == 503);
  CHECK(refused.error().reason ==
        "all 1 channels to vm vm1 stayed in use for 50 ms (channel.max_per_vm, "
        "channel.wait_timeout_ms)");
  CHECK(budget.stats().waits_timed_out == 1);
  CHECK(budget.stats().waiting == 0);
  // The timed-out waiter is gone: a release frees the place.
  held->ticket = ChannelTicket();
  CHECK(budget.open_for(vm().uuid) == 0);
}

TEST_CASE("channel budget: a full wait queue refuses at once") {
  asio::io_context io;
  ChannelBudget budget(limits(1, 10s, 0));
  auto held = acquire_now(io, budget, key_5986);
  REQUIRE(held.has_value());
  auto refused = acquire_now(io, budget, key_5986);
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.error().reason.find("wait for one already") != std::string::npos);
  CHECK(budget.stats().waits_refused == 1);
}

TEST_CASE("channel budget: make_room is asked before a request waits") {
  asio::io_context io;
  ChannelBudget budget(limits(1));
  auto held = acquire_now(io, budget, key_5986);
  REQUIRE(held.has_value());
  std::optional<Result> out;
  bool asked = false;
  start_acquire(io, budget, key_8114, out, [&] {
    asked = true;
    held->ticket = ChannelTicket();  // as the pool closing an idle channel of the VM does
    return true;
  });
  io.restart();
  io.run_for(1s);
  CHECK(asked);
  REQUIRE(out.has_value());
  CHECK(out->has_value());
  CHECK(budget.stats().waiting == 0);
}

TEST_CASE("channel budget: private channels have a cap of their own") {
  asio::io_context io;
  ChannelBudget budget(limits(4, 10s, 16, 1));
  auto a = acquire_now(io, budget, key_5986);
  auto b = acquire_now(io, budget, key_5986);
  REQUIRE(a.has_value());
  REQUIRE(b.has_value());
  CHECK(budget.make_private(a->ticket));
  CHECK(a->ticket.is_private());
  CHECK(budget.make_private(a->ticket));  // already
  CHECK_FALSE(budget.make_private(b->ticket));
  CHECK_FALSE(b->ticket.is_private());
  CHECK(budget.stats().private_ == 1);
  a->ticket = ChannelTicket();
  CHECK(budget.stats().private_ == 0);
  CHECK(budget.make_private(b->ticket));
  // A private channel is never handed to another request.
  Channel bound = channel(io, key_5986, std::move(b->ticket));
  CHECK_FALSE(budget.hand_over(bound));
}

TEST_CASE("channel budget: the VMs with the most channels open, most first") {
  asio::io_context io;
  ChannelBudget budget(limits(8));
  std::vector<Result> held;
  for (const char* uuid : {"a", "b", "b", "c", "c", "c"})
    held.push_back(acquire_now(io, budget, ChannelKey::of(vm(uuid), 5986)));
  using Busy = std::vector<std::pair<std::string, std::uint32_t>>;
  CHECK(budget.busiest(2) == Busy{{"c", 3}, {"b", 2}});
  CHECK(budget.busiest(5) == Busy{{"c", 3}, {"b", 2}, {"a", 1}});
  held.clear();
  CHECK(budget.busiest(5).empty());
}
