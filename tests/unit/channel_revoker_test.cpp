#include <sys/socket.h>
#include <unistd.h>

#include <optional>
#include <string>

#include <doctest/doctest.h>

#include "hostd/channel/channel_pool.hpp"
#include "hostd/channel/channel_revoker.hpp"
#include "hostd/channel/live_channels.hpp"
#include "hostd/directory/embedded_directory.hpp"

using namespace std::chrono_literals;
using vmgate::error_code;
using vmgate::Stream;
using vmgate::hostd::channel_gone;
using vmgate::hostd::ChannelConfig;
using vmgate::hostd::ChannelKey;
using vmgate::hostd::ChannelPool;
using vmgate::hostd::ChannelRevoker;
using vmgate::hostd::ChannelWatch;
using vmgate::hostd::EmbeddedDirectory;
using vmgate::hostd::LiveChannels;
using vmgate::hostd::VmRecord;
using vmgate::hostd::VmState;
namespace asio = boost::asio;

namespace {

// A channel (our end) and the guestd end, as a connected socket pair.
struct Pair {
  Stream ours;
  int theirs;
};

Pair make_pair(asio::io_context& io) {
  int fds[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
  return {Stream(io, asio::generic::stream_protocol(AF_UNIX, 0), fds[0]), fds[1]};
}

VmRecord vm(std::string name, std::string uuid, std::uint32_t cid,
            VmState state = VmState::running) {
  return VmRecord{.uuid = std::move(uuid), .name = std::move(name), .cid = cid, .state = state};
}

const std::string uuid1 = "6f1c0c9e-0000-4000-8000-000000000001";
const std::string uuid2 = "6f1c0c9e-0000-4000-8000-000000000002";

// A directory, the registry and the revoker, wired as hostd wires them.
struct Host {
  asio::io_context io;
  EmbeddedDirectory directory;
  LiveChannels live{[this](const ChannelKey& key) { return channel_gone(key, directory); }};
  ChannelPool pool{io.get_executor(), pool_config()};
  ChannelRevoker revoker{directory, live, &pool};

  static ChannelConfig pool_config() {
    ChannelConfig c;
    c.pool_max_idle = 4;
    c.pool_idle_timeout = 60s;
    return c;
  }
};

// An exchange in progress: a read waiting on the channel for the agent.
struct PendingRead {
  char byte = 0;
  std::optional<error_code> result;
  void start(Stream& stream) {
    stream.async_read_some(asio::buffer(&byte, 1),
                           [this](error_code ec, std::size_t) { result = ec; });
  }
};

void settle(asio::io_context& io) {
  io.restart();
  io.poll();
}

}  // namespace

TEST_CASE("a channel in use is closed when its VM is shut off, and only that one") {
  Host host;
  host.directory.replace_all({vm("vm1", uuid1, 3), vm("vm2", uuid2, 4)});
  auto p1 = make_pair(host.io);
  auto p2 = make_pair(host.io);
  const auto key1 = ChannelKey::of(vm("vm1", uuid1, 3), 5986);
  const auto key2 = ChannelKey::of(vm("vm2", uuid2, 4), 5986);
  ChannelWatch watch1(&host.live, key1, p1.ours);
  ChannelWatch watch2(&host.live, key2, p2.ours);
  PendingRead read1, read2;
  read1.start(p1.ours);
  read2.start(p2.ours);
  settle(host.io);
  CHECK_FALSE(read1.result);

  host.directory.upsert(vm("vm1", uuid1, 3, VmState::shut_off));
  settle(host.io);
  REQUIRE(read1.result);
  CHECK(*read1.result == asio::error::operation_aborted);
  CHECK(watch1.revoked());
  CHECK(watch1.why() == "vm vm1 is shut_off");
  CHECK_FALSE(p1.ours.is_open());
  CHECK_FALSE(read2.result);
  CHECK_FALSE(watch2.revoked());
  CHECK(host.live.revoked() == 1);
  ::close(p1.theirs);
  ::close(p2.theirs);
}

TEST_CASE("what waits on the client's socket ends with the channel, the socket left open") {
  // An exchange blocked writing to a client that stopped reading.
  Host host;
  host.directory.replace_all({vm("vm1", uuid1, 3)});
  auto channel = make_pair(host.io);
  auto client = make_pair(host.io);
  const auto key = ChannelKey::of(vm("vm1", uuid1, 3), 5986);
  ChannelWatch watch(&host.live, key, channel.ours, &client.ours);
  PendingRead waiting;
  waiting.start(client.ours);
  host.directory.remove(uuid1);
  settle(host.io);
  REQUIRE(waiting.result);
  CHECK(*waiting.result == asio::error::operation_aborted);
  CHECK_FALSE(channel.ours.is_open());
  CHECK(client.ours.is_open());  // its owner closes it, as a cut response is closed
  ::close(channel.theirs);
  ::close(client.theirs);
}

TEST_CASE("a channel in use is closed when its VM is undefined or takes a new CID") {
  Host host;
  host.directory.replace_all({vm("vm1", uuid1, 3), vm("vm2", uuid2, 4)});
  auto p1 = make_pair(host.io);
  auto p2 = make_pair(host.io);
  const auto key1 = ChannelKey::of(vm("vm1", uuid1, 3), 5986);
  const auto key2 = ChannelKey::of(vm("vm2", uuid2, 4), 5986);
  ChannelWatch watch1(&host.live, key1, p1.ours);
  ChannelWatch watch2(&host.live, key2, p2.ours);

  host.directory.remove(uuid1);
  host.directory.upsert(vm("vm2", uuid2, 5));  // restored with another CID
  settle(host.io);
  CHECK(watch1.revoked());
  CHECK(watch1.why() == "vm vm1 is no longer defined");
  CHECK(watch2.revoked());
  CHECK(watch2.why() == "vm vm2 changed its vsock CID from 4 to 5");
  ::close(p1.theirs);
  ::close(p2.theirs);
}

TEST_CASE("a paused VM keeps its channels in use") {
  Host host;
  host.directory.replace_all({vm("vm1", uuid1, 3)});
  auto p = make_pair(host.io);
  const auto key = ChannelKey::of(vm("vm1", uuid1, 3), 5986);
  ChannelWatch watch(&host.live, key, p.ours);
  host.directory.upsert(vm("vm1", uuid1, 3, VmState::paused));
  host.directory.upsert(vm("vm1", uuid1, 3, VmState::running));
  settle(host.io);
  CHECK_FALSE(watch.revoked());
  CHECK(p.ours.is_open());
  ::close(p.theirs);
}

TEST_CASE("a resynchronisation that no longer lists a VM closes its channels") {
  Host host;
  host.directory.replace_all({vm("vm1", uuid1, 3), vm("vm2", uuid2, 4)});
  auto p1 = make_pair(host.io);
  auto p2 = make_pair(host.io);
  const auto key1 = ChannelKey::of(vm("vm1", uuid1, 3), 5986);
  const auto key2 = ChannelKey::of(vm("vm2", uuid2, 4), 5986);
  ChannelWatch watch1(&host.live, key1, p1.ours);
  ChannelWatch watch2(&host.live, key2, p2.ours);
  // libvirtd came back without vm1 (undefined while hostd was away).
  host.directory.replace_all({vm("vm2", uuid2, 4)});
  settle(host.io);
  CHECK(watch1.revoked());
  CHECK_FALSE(watch2.revoked());
  ::close(p1.theirs);
  ::close(p2.theirs);
}

TEST_CASE("a channel watched after its VM stopped is closed at once") {
  // The request resolved the VM, then waited for a channel while it stopped.
  Host host;
  host.directory.replace_all({vm("vm1", uuid1, 3, VmState::shut_off)});
  auto p = make_pair(host.io);
  const auto key = ChannelKey::of(vm("vm1", uuid1, 3), 5986);
  ChannelWatch watch(&host.live, key, p.ours);
  CHECK(watch.revoked());
  CHECK_FALSE(p.ours.is_open());
  ::close(p.theirs);
}

TEST_CASE("a watch that ended before its close ran leaves the socket alone") {
  Host host;
  host.directory.replace_all({vm("vm1", uuid1, 3)});
  auto p = make_pair(host.io);
  const auto key = ChannelKey::of(vm("vm1", uuid1, 3), 5986);
  {
    ChannelWatch watch(&host.live, key, p.ours);
    host.directory.upsert(vm("vm1", uuid1, 3, VmState::shut_off));
    // The close is posted to the socket's thread, which has not run yet.
  }
  settle(host.io);
  CHECK(p.ours.is_open());  // e.g. now back in the pool, or closed by its owner
  CHECK(host.live.revoked() == 0);
  CHECK(host.live.watched() == 0);
  ::close(p.theirs);
}

TEST_CASE("idle pooled channels of a VM that stopped are dropped, others kept") {
  Host host;
  host.directory.replace_all({vm("vm1", uuid1, 3), vm("vm2", uuid2, 4)});
  auto p1 = make_pair(host.io);
  auto p2 = make_pair(host.io);
  const auto key1 = ChannelKey::of(vm("vm1", uuid1, 3), 5986);
  const auto key2 = ChannelKey::of(vm("vm2", uuid2, 4), 5986);
  host.pool.put(vmgate::hostd::Channel{std::move(p1.ours), {}, key1});
  host.pool.put(vmgate::hostd::Channel{std::move(p2.ours), {}, key2});
  REQUIRE(host.pool.idle() == 2);
  host.directory.upsert(vm("vm1", uuid1, 3, VmState::crashed));
  CHECK(host.pool.idle() == 1);
  CHECK(host.pool.stats().revoked == 1);
  CHECK_FALSE(host.pool.take(key1, host.io.get_executor()).has_value());
  CHECK(host.pool.take(key2, host.io.get_executor()).has_value());
  // guestd's end sees the channel close.
  char byte = 0;
  CHECK(::read(p1.theirs, &byte, 1) == 0);
  ::close(p1.theirs);
  ::close(p2.theirs);
}

TEST_CASE("why a channel no longer leads to its VM") {
  const auto key = ChannelKey::of(vm("vm1", uuid1, 3), 5986);
  const VmRecord running = vm("vm1", uuid1, 3);
  CHECK_FALSE(channel_gone(key, &running));
  const VmRecord suspended = vm("vm1", uuid1, 3, VmState::suspended);
  CHECK_FALSE(channel_gone(key, &suspended));
  const VmRecord crashed = vm("vm1", uuid1, 3, VmState::crashed);
  CHECK(channel_gone(key, &crashed) == "vm vm1 is crashed");
  const VmRecord renamed = vm("vm1-new", uuid1, 3);
  CHECK(channel_gone(key, &renamed) == "vm vm1 was renamed vm1-new");
  CHECK(channel_gone(key, nullptr) == "vm vm1 is no longer defined");
}
