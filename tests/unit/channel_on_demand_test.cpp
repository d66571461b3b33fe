#include "hostd/channel/channel_on_demand.hpp"

#include <chrono>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

using namespace std::chrono_literals;
using vmgate::awaitable;
using vmgate::hostd::ChannelConfig;
using vmgate::hostd::ChannelOnDemand;
using vmgate::hostd::Refusal;
using vmgate::hostd::VmRecord;
using vmgate::hostd::VsockAttacher;
using vmgate::hostd::VsockAttachOutcome;
namespace asio = vmgate::asio;

namespace {

// libvirt's thread, stood in for: each attach asked is kept, and answered
// from another thread when the test says so (or never).
class FakeAttacher final : public VsockAttacher {
 public:
  void attach_vsock(const std::string& uuid,
                    std::function<void(VsockAttachOutcome)> done) override {
    std::lock_guard lock(mutex_);
    asked_.push_back(uuid);
    pending_.push_back(std::move(done));
  }
  std::vector<std::string> asked() {
    std::lock_guard lock(mutex_);
    return asked_;
  }
  // Answers every attach asked so far, from a thread of its own.
  void answer(VsockAttachOutcome outcome) {
    std::vector<std::function<void(VsockAttachOutcome)>> pending;
    {
      std::lock_guard lock(mutex_);
      pending.swap(pending_);
    }
    std::thread([pending = std::move(pending), outcome] {
      for (auto& done : pending)
        done(outcome);
    }).join();
  }

 private:
  std::mutex mutex_;
  std::vector<std::string> asked_;
  std::vector<std::function<void(VsockAttachOutcome)>> pending_;
};

VmRecord vm_without_cid() {
  VmRecord vm;
  vm.uuid = "6f1c2a4e-0000-4000-8000-000000000001";
  vm.name = "web1";
  return vm;
}

using AttachResult = boost::system::result<std::uint32_t, Refusal>;

// Runs `count` attaches of `vm` at once on `io`, answers them with
// `outcome` once all wait (unless nothing), and gives their results.
std::vector<std::optional<AttachResult>> attach_together(
    ChannelOnDemand& on_demand, FakeAttacher& attacher, int count,
    std::optional<VsockAttachOutcome> outcome) {
  asio::io_context io;
  std::vector<std::optional<AttachResult>> results(static_cast<std::size_t>(count));
  const VmRecord vm = vm_without_cid();
  for (auto& slot : results) {
    asio::co_spawn(
        io, [&]() -> awaitable<void> { slot = co_await on_demand.attach(vm); }, asio::detached);
  }
  // Every coroutine runs up to its wait before the answer comes.
  io.poll();
  if (outcome) attacher.answer(*outcome);
  io.run();
  return results;
}

}  // namespace

TEST_CASE("a channel needs a vsock device when its template names the CID and the VM has none") {
  ChannelConfig config;  // vsock:{cid}:{port}
  VmRecord vm = vm_without_cid();
  CHECK(vmgate::hostd::needs_vsock_device(config, vm));
  vm.cid = 7;
  CHECK_FALSE(vmgate::hostd::needs_vsock_device(config, vm));
  vm.cid.reset();
  config.transport_template = "unix:/run/vmgate/{name}.sock";
  CHECK_FALSE(vmgate::hostd::needs_vsock_device(config, vm));
}

TEST_CASE("an attach on demand gives the CID libvirt assigned") {
  FakeAttacher attacher;
  ChannelOnDemand on_demand(attacher, 5s, 0ms);
  auto results = attach_together(on_demand, attacher, 1, VsockAttachOutcome(std::optional(42u)));
  REQUIRE(results[0].has_value());
  REQUIRE(results[0]->has_value());
  CHECK(**results[0] == 42u);
  CHECK(attacher.asked() == std::vector<std::string>{vm_without_cid().uuid});
}

TEST_CASE("requests for one VM that arrive during its attach wait for it: one attach in flight") {
  FakeAttacher attacher;
  ChannelOnDemand on_demand(attacher, 5s, 0ms);
  auto results = attach_together(on_demand, attacher, 5, VsockAttachOutcome(std::optional(9u)));
  CHECK(attacher.asked().size() == 1);
  CHECK(on_demand.attaches() == 1);
  for (auto& result : results) {
    REQUIRE(result.has_value());
    REQUIRE(result->has_value());
    CHECK(**result == 9u);
  }
  // Once it is over, the next request asks again (the device may have gone with a restart).
  attach_together(on_demand, attacher, 1, VsockAttachOutcome(std::optional(9u)));
  CHECK(attacher.asked().size() == 2);
}

TEST_CASE("an attach libvirt refuses is a 503 with libvirt's reason, for every waiter") {
  FakeAttacher attacher;
  ChannelOnDemand on_demand(attacher, 5s, 0ms);
  const std::string reason =
      "this function is not supported by the connection driver: virDomainAttachDeviceFlags";
  auto results = attach_together(on_demand, attacher, 2,
                                 VsockAttachOutcome(boost::system::in_place_error, reason));
  for (auto& result : results) {
    REQUIRE(result.has_value());
    REQUIRE_FALSE(result->has_value());
    CHECK(result->error().status == 503);
    CHECK(result->error().reason ==
          "vm web1 has no vsock device, and libvirt could not attach one: " + reason);
  }
}

TEST_CASE("a device libvirt attached without a CID is a 503 saying it has none") {
  FakeAttacher attacher;
  ChannelOnDemand on_demand(attacher, 5s, 0ms);
  auto results =
      attach_together(on_demand, attacher, 1, VsockAttachOutcome(std::optional<std::uint32_t>()));
  REQUIRE_FALSE(results[0]->has_value());
  CHECK(results[0]->error().status == 503);
  CHECK(results[0]->error().reason.find("libvirt assigned it no CID") != std::string::npos);
}

TEST_CASE("an attach libvirt never answers is a 503 after attach_timeout, not a hang") {
  FakeAttacher attacher;
  ChannelOnDemand on_demand(attacher, 50ms, 0ms);
  auto results = attach_together(on_demand, attacher, 2, std::nullopt);
  for (auto& result : results) {
    REQUIRE(result.has_value());
    REQUIRE_FALSE(result->has_value());
    CHECK(result->error().status == 503);
    CHECK(result->error().reason.find("did not attach one within 50 ms") != std::string::npos);
  }
  // Its late answer harms nobody.
  attacher.answer(VsockAttachOutcome(std::optional(3u)));
}

TEST_CASE("an attach libvirt refused is answered from memory for retry_after, libvirt not asked") {
  FakeAttacher attacher;
  ChannelOnDemand on_demand(attacher, 5s, 1h);
  const std::string reason = "this function is not supported by the connection driver";
  attach_together(on_demand, attacher, 1,
                  VsockAttachOutcome(boost::system::in_place_error, reason));
  // No answer is coming: a request that asked libvirt would wait out attach_timeout.
  auto results = attach_together(on_demand, attacher, 3, std::nullopt);
  CHECK(attacher.asked().size() == 1);
  for (auto& result : results) {
    REQUIRE(result.has_value());
    REQUIRE_FALSE(result->has_value());
    CHECK(result->error().status == 503);
    const std::string& said = result->error().reason;
    CHECK(said.starts_with(
        "vm web1 has no vsock device, and libvirt could not attach one: " + reason + " ("));
    CHECK(said.find("ms ago; libvirt is asked again 3600000 ms after a failed attach, "
                    "libvirt.attach_retry_after_ms)") != std::string::npos);
  }
}

TEST_CASE("a device libvirt gave no CID is remembered as a refusal is") {
  FakeAttacher attacher;
  ChannelOnDemand on_demand(attacher, 5s, 1h);
  attach_together(on_demand, attacher, 1, VsockAttachOutcome(std::optional<std::uint32_t>()));
  auto results = attach_together(on_demand, attacher, 1, std::nullopt);
  CHECK(attacher.asked().size() == 1);
  REQUIRE_FALSE(results[0]->has_value());
  CHECK(results[0]->error().reason.find("libvirt assigned it no CID") != std::string::npos);
  CHECK(results[0]->error().reason.find("libvirt.attach_retry_after_ms") != std::string::npos);
}

TEST_CASE("libvirt is asked again once retry_after has passed since a failed attach") {
  FakeAttacher attacher;
  ChannelOnDemand on_demand(attacher, 5s, 20ms);
  attach_together(on_demand, attacher, 1,
                  VsockAttachOutcome(boost::system::in_place_error, std::string("refused")));
  std::this_thread::sleep_for(60ms);
  auto results = attach_together(on_demand, attacher, 1, VsockAttachOutcome(std::optional(5u)));
  CHECK(attacher.asked().size() == 2);
  REQUIRE(results[0]->has_value());
  CHECK(**results[0] == 5u);
}
