#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include "hostd/channel/channel_pool.hpp"

using namespace std::chrono_literals;
using vmgate::Stream;
using vmgate::hostd::ChannelConfig;
using vmgate::hostd::ChannelKey;
using vmgate::hostd::ChannelPool;
using vmgate::hostd::VmRecord;
using vmgate::hostd::VmState;

namespace {

// A channel (our end) and the guestd end, as a connected socket pair.
struct Pair {
  Stream ours;
  int theirs;
};

Pair make_pair(boost::asio::io_context& io) {
  int fds[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
  return {Stream(io, boost::asio::generic::stream_protocol(AF_UNIX, 0), fds[0]), fds[1]};
}

constexpr int nothing_came = -2;

// One read of `fd`: 1 with a byte, 0 at EOF, -1 on error, or nothing_came when
// no byte and no EOF arrived within a bound far above any real wait, so that
// a wrong channel fails the test instead of blocking it.
int read_one(int fd, char& byte) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, 5000) <= 0) return nothing_came;
  return static_cast<int>(::read(fd, &byte, 1));
}

// Which channel a Stream is: the peer writes its own fd number, we read it.
bool is_peer_of(Stream& s, int theirs) {
  char out = static_cast<char>(theirs);
  REQUIRE(::write(theirs, &out, 1) == 1);
  char in = 0;
  REQUIRE(read_one(s.native_handle(), in) == 1);
  return in == out;
}

VmRecord vm(std::uint32_t cid) {
  return VmRecord{.uuid = "6f1c0c9e-0000-4000-8000-000000000001",
                  .name = "vm1",
                  .cid = cid,
                  .state = VmState::running};
}

ChannelConfig config(std::uint32_t max_idle, std::chrono::milliseconds idle_timeout = 10s) {
  ChannelConfig c;
  c.pool_max_idle = max_idle;
  c.pool_idle_timeout = idle_timeout;
  return c;
}

const auto t0 = ChannelPool::clock::now();

vmgate::hostd::Channel channel(ChannelKey key, Stream stream) {
  return vmgate::hostd::Channel{std::move(stream), {}, std::move(key)};
}

}  // namespace

TEST_CASE("a channel returned to the pool is taken again for the same VM and port") {
  boost::asio::io_context io;
  ChannelPool pool(io.get_executor(), config(4));
  auto key = ChannelKey::of(vm(3), 5986);
  auto p = make_pair(io);
  pool.put(channel(key, std::move(p.ours)), t0);
  CHECK(pool.idle() == 1);
  auto taken = pool.take(key, io.get_executor(), t0 + 1s);
  REQUIRE(taken.has_value());
  CHECK(is_peer_of(taken->stream, p.theirs));
  CHECK(pool.idle() == 0);
  CHECK_FALSE(pool.take(key, io.get_executor(), t0 + 1s).has_value());
  ::close(p.theirs);
}

TEST_CASE("a channel is never taken for another CID, port or VM") {
  boost::asio::io_context io;
  ChannelPool pool(io.get_executor(), config(4));
  auto p = make_pair(io);
  pool.put(channel(ChannelKey::of(vm(3), 5986), std::move(p.ours)), t0);
  // The same VM restarted with a new CID: the old channel leads to the old VM.
  CHECK_FALSE(pool.take(ChannelKey::of(vm(4), 5986), io.get_executor(), t0).has_value());
  CHECK_FALSE(pool.take(ChannelKey::of(vm(3), 8114), io.get_executor(), t0).has_value());
  auto other = vm(3);
  other.uuid = "6f1c0c9e-0000-4000-8000-000000000002";
  CHECK_FALSE(pool.take(ChannelKey::of(other, 5986), io.get_executor(), t0).has_value());
  auto renamed = vm(3);
  renamed.name = "vm1-renamed";
  CHECK_FALSE(pool.take(ChannelKey::of(renamed, 5986), io.get_executor(), t0).has_value());
  CHECK(pool.take(ChannelKey::of(vm(3), 5986), io.get_executor(), t0).has_value());
  ::close(p.theirs);
}

TEST_CASE("a pooled channel the peer closed is dropped, not taken") {
  boost::asio::io_context io;
  ChannelPool pool(io.get_executor(), config(4));
  auto key = ChannelKey::of(vm(3), 5986);
  auto live = make_pair(io);
  auto dead = make_pair(io);
  pool.put(channel(key, std::move(live.ours)), t0);
  pool.put(channel(key, std::move(dead.ours)), t0);
  ::close(dead.theirs);  // the newer one, which take() tries first
  auto taken = pool.take(key, io.get_executor(), t0);
  REQUIRE(taken.has_value());
  CHECK(is_peer_of(taken->stream, live.theirs));
  CHECK(pool.stats().closed == 1);
  CHECK(pool.idle() == 0);
  ::close(live.theirs);
}

TEST_CASE("a pooled channel with unread bytes is not reused") {
  boost::asio::io_context io;
  ChannelPool pool(io.get_executor(), config(4));
  auto key = ChannelKey::of(vm(3), 5986);
  auto p = make_pair(io);
  pool.put(channel(key, std::move(p.ours)), t0);
  REQUIRE(::write(p.theirs, "x", 1) == 1);
  CHECK_FALSE(pool.take(key, io.get_executor(), t0).has_value());
  CHECK(pool.stats().closed == 1);
  ::close(p.theirs);
}

TEST_CASE("no more than max_idle channels are kept per VM and port") {
  boost::asio::io_context io;
  ChannelPool pool(io.get_executor(), config(2));
  auto key = ChannelKey::of(vm(3), 5986);
  std::vector<int> peers;
  for (int i = 0; i < 3; ++i) {
    auto p = make_pair(io);
    peers.push_back(p.theirs);
    pool.put(channel(key, std::move(p.ours)), t0);
  }
  CHECK(pool.idle() == 2);
  CHECK(pool.stats().full == 1);
  // The third was closed: its peer reads EOF.
  char byte;
  CHECK(read_one(peers[2], byte) == 0);
  // Another key has its own allowance.
  auto other = make_pair(io);
  pool.put(channel(ChannelKey::of(vm(3), 8114), std::move(other.ours)), t0);
  CHECK(pool.idle() == 3);
  for (int fd : peers)
    ::close(fd);
  ::close(other.theirs);
}

TEST_CASE("idle channels expire after the pool's idle timeout, taken or swept") {
  boost::asio::io_context io;
  ChannelPool pool(io.get_executor(), config(4, 2s));
  auto key = ChannelKey::of(vm(3), 5986);
  auto a = make_pair(io);
  auto b = make_pair(io);
  pool.put(channel(key, std::move(a.ours)), t0);
  pool.put(channel(key, std::move(b.ours)), t0 + 1s);
  CHECK_FALSE(pool.take(key, io.get_executor(), t0 + 3s).has_value());
  CHECK(pool.stats().expired == 2);
  CHECK(pool.idle() == 0);

  auto c = make_pair(io);
  auto d = make_pair(io);
  pool.put(channel(key, std::move(c.ours)), t0);
  pool.put(channel(ChannelKey::of(vm(4), 5986), std::move(d.ours)), t0 + 5s);
  pool.sweep(t0 + 6s);  // no request needed: a stopped VM's channels go too
  CHECK(pool.idle() == 1);
  char byte;
  CHECK(read_one(c.theirs, byte) == 0);
  for (int fd : {a.theirs, b.theirs, c.theirs, d.theirs})
    ::close(fd);
}

TEST_CASE("a channel opened on one I/O thread's context is handed over on the taker's") {
  boost::asio::io_context io;
  boost::asio::io_context other;
  ChannelPool pool(io.get_executor(), config(4));
  auto key = ChannelKey::of(vm(3), 5986);
  auto p = make_pair(io);
  pool.put(channel(key, std::move(p.ours)), t0);
  auto taken = pool.take(key, other.get_executor(), t0);
  REQUIRE(taken.has_value());
  CHECK(&boost::asio::query(taken->stream.get_executor(), boost::asio::execution::context) ==
        &other);
  CHECK(is_peer_of(taken->stream, p.theirs));
  // And it works on its new context.
  char out = 'y';
  REQUIRE(::write(p.theirs, &out, 1) == 1);
  char in = 0;
  taken->stream.async_read_some(boost::asio::buffer(&in, 1),
                                [](vmgate::error_code, std::size_t) {});
  other.run();
  CHECK(in == 'y');
  ::close(p.theirs);
}

TEST_CASE("a channel already on the taker's context is preferred to a newer one elsewhere") {
  boost::asio::io_context io;
  boost::asio::io_context other;
  ChannelPool pool(io.get_executor(), config(4));
  auto key = ChannelKey::of(vm(3), 5986);
  auto here = make_pair(other);
  auto there = make_pair(io);
  pool.put(channel(key, std::move(here.ours)), t0);
  pool.put(channel(key, std::move(there.ours)), t0 + 1s);
  auto taken = pool.take(key, other.get_executor(), t0 + 1s);
  REQUIRE(taken.has_value());
  CHECK(is_peer_of(taken->stream, here.theirs));
  auto next = pool.take(key, other.get_executor(), t0 + 1s);
  REQUIRE(next.has_value());
  CHECK(is_peer_of(next->stream, there.theirs));
  ::close(here.theirs);
  ::close(there.theirs);
}

TEST_CASE("a pool with max_idle 0 keeps nothing") {
  boost::asio::io_context io;
  ChannelPool pool(io.get_executor(), config(0));
  CHECK_FALSE(pool.enabled());
  auto key = ChannelKey::of(vm(3), 5986);
  auto p = make_pair(io);
  pool.put(channel(key, std::move(p.ours)), t0);
  CHECK(pool.idle() == 0);
  CHECK_FALSE(pool.take(key, io.get_executor(), t0).has_value());
  ::close(p.theirs);
}
