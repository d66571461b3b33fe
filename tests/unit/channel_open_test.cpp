#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>

#include <doctest/doctest.h>

#include "common/transport.hpp"
#include "hostd/channel/channel.hpp"

using namespace std::chrono_literals;
using vmgate::awaitable;
using vmgate::use_tuple;
using vmgate::hostd::AttachedDevice;
using vmgate::hostd::Channel;
using vmgate::hostd::ChannelConfig;
using vmgate::hostd::open_channel;
using vmgate::hostd::Refusal;
using vmgate::hostd::VmRecord;
namespace asio = vmgate::asio;

namespace {

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    char tmpl[] = "/tmp/vmgate-channel-open-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() { std::filesystem::remove_all(path); }
};

VmRecord vm1() {
  VmRecord vm;
  vm.uuid = "6f1c2a4e-0000-4000-8000-000000000001";
  vm.name = "vm1";
  vm.cid = 7;
  return vm;
}

ChannelConfig quick_config(std::chrono::milliseconds timeout) {
  ChannelConfig config;
  config.connect_timeout = timeout;
  config.connect_retry_min = 10ms;
  config.connect_retry_max = 40ms;
  return config;
}

// A stand-in guestd on `address`, from `after` on: answers each channel's
// preamble with `answer`, counting the channels.
awaitable<void> stand_in_guestd(vmgate::transport::Address address, std::chrono::milliseconds after,
                                std::string answer, int* channels) {
  auto executor = co_await asio::this_coro::executor;
  // Without a wait, listening before the channel's coroutine (spawned after this one) runs.
  if (after > 0ms) {
    asio::steady_timer wait(executor, after);
    co_await wait.async_wait(use_tuple);
  }
  vmgate::error_code ec;
  auto acceptor = vmgate::transport::listen(executor, address, ec);
  REQUIRE_FALSE(ec);
  for (;;) {
    auto [aec, peer] = co_await acceptor.async_accept(use_tuple);
    if (aec) co_return;
    ++*channels;
    std::string in;
    co_await asio::async_read_until(peer, asio::dynamic_buffer(in), "\r\n\r\n", use_tuple);
    co_await asio::async_write(peer, asio::buffer(answer), use_tuple);
  }
}

using ChannelResult = boost::system::result<Channel, Refusal>;

ChannelResult open(asio::io_context& io, const ChannelConfig& config,
                   const vmgate::transport::Address& address,
                   std::optional<AttachedDevice> attached = std::nullopt) {
  std::optional<ChannelResult> result;
  asio::co_spawn(
      io,
      [&]() -> awaitable<void> {
        result.emplace(
            co_await open_channel(config, vm1(), address, 5986, "client", "req1", attached));
        io.stop();  // the stand-in accepts forever
      },
      asio::detached);
  io.run();
  REQUIRE(result.has_value());
  return std::move(*result);
}

}  // namespace

TEST_CASE("a guestd that starts listening after the first attempt is reached within the bound") {
  TempDir dir;
  auto address = vmgate::transport::parse("unix:" + (dir.path / "vm1.sock").string());
  REQUIRE(address.has_value());
  asio::io_context io;
  int channels = 0;
  asio::co_spawn(io, stand_in_guestd(*address, 150ms, "VMGATE/1 200 OK\r\n\r\n", &channels),
                 asio::detached);
  auto channel = open(io, quick_config(3000ms), *address);
  CHECK(channel.has_value());
  CHECK(channels == 1);
}

TEST_CASE("a guestd refusal is passed on at once, never tried again") {
  TempDir dir;
  auto address = vmgate::transport::parse("unix:" + (dir.path / "vm1.sock").string());
  REQUIRE(address.has_value());
  asio::io_context io;
  int channels = 0;
  asio::co_spawn(io,
                 stand_in_guestd(*address, 0ms, "VMGATE/1 403 port-not-allowed\r\n\r\n", &channels),
                 asio::detached);
  auto channel = open(io, quick_config(3000ms), *address);
  REQUIRE_FALSE(channel.has_value());
  CHECK(channel.error().status == 403);
  CHECK(channels == 1);
}

TEST_CASE("a guestd that never comes up is a 502 naming the address, after several attempts") {
  TempDir dir;
  auto address = vmgate::transport::parse("unix:" + (dir.path / "vm1.sock").string());
  REQUIRE(address.has_value());
  asio::io_context io;
  auto channel = open(io, quick_config(300ms), *address);
  REQUIRE_FALSE(channel.has_value());
  CHECK(channel.error().status == 502);
  const std::string& reason = channel.error().reason;
  CHECK(reason.starts_with("guestd not answering on " + address->to_string() + " (vm vm1): "));
  CHECK(reason.find("No such file or directory") != std::string::npos);
  CHECK(reason.find(" attempts in ") != std::string::npos);
}

TEST_CASE("a guestd that never answers on a device attached on demand is a 503 saying so") {
  TempDir dir;
  auto address = vmgate::transport::parse("unix:" + (dir.path / "vm1.sock").string());
  REQUIRE(address.has_value());
  asio::io_context io;
  // The attached device's bound, not connect_timeout, is the one that counts.
  auto channel = open(io, quick_config(10ms), *address, AttachedDevice{300ms});
  REQUIRE_FALSE(channel.has_value());
  CHECK(channel.error().status == 503);
  CHECK(
      channel.error().reason.starts_with("vm vm1 was given a vsock device, but its guestd is "
                                         "not answering on " +
                                         address->to_string() + ": "));
  // It waited for the attached device's ~300 ms, not connect_timeout's 10.
  const std::string& reason = channel.error().reason;
  const auto in = reason.rfind(" in ");
  REQUIRE(in != std::string::npos);
  CHECK(std::stol(reason.substr(in + 4)) >= 250);
}
