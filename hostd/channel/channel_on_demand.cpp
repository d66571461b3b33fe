#include "hostd/channel/channel_on_demand.hpp"

#include <optional>
#include <utility>

#include <fmt/format.h>

#include "common/log.hpp"

namespace vmgate::hostd {

bool needs_vsock_device(const ChannelConfig& config, const VmRecord& vm) {
  return !vm.cid && config.transport_template.find("{cid}") != std::string::npos;
}

// One request's wait. Its timer runs on the request's own I/O thread, and
// so does everything that touches `outcome`: the outcome is posted there.
struct ChannelOnDemand::Waiter {
  explicit Waiter(const asio::any_io_executor& executor) : timer(executor) {}
  asio::steady_timer timer;
  std::optional<VsockAttachOutcome> outcome;
};

namespace {

// An attach that did not give a CID, as the requests waiting for it are told.
Refusal failed_attach(const VmRecord& vm, const VsockAttachOutcome& outcome) {
  if (!outcome)
    return Refusal{503, fmt::format("vm {} has no vsock device, and libvirt could not attach "
                                    "one: {}",
                                    vm.name, outcome.error())};
  return Refusal{503, fmt::format("vm {} has a vsock device now, but libvirt assigned it no "
                                  "CID (its live XML has no <cid address=...>)",
                                  vm.name)};
}

}  // namespace

ChannelOnDemand::ChannelOnDemand(VsockAttacher& attacher, std::chrono::milliseconds attach_timeout,
                                 std::chrono::milliseconds retry_after)
    : attacher_(attacher), attach_timeout_(attach_timeout), retry_after_(retry_after) {}

std::uint64_t ChannelOnDemand::attaches() const {
  std::lock_guard lock(mutex_);
  return attaches_;
}

awaitable<boost::system::result<std::uint32_t, Refusal>> ChannelOnDemand::attach(
    const VmRecord& vm) {
  auto waiter = std::make_shared<Waiter>(co_await asio::this_coro::executor);
  waiter->timer.expires_after(attach_timeout_);
  bool first = false;
  {
    std::lock_guard lock(mutex_);
    if (auto failed = failed_.find(vm.uuid); failed != failed_.end()) {
      const auto ago =
          std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - failed->second.at);
      if (ago < retry_after_) {
        Refusal refusal = failed_attach(vm, failed->second.outcome);
        refusal.reason += fmt::format(
            " ({} ms ago; libvirt is asked again {} ms after a failed attach, "
            "libvirt.attach_retry_after_ms)",
            ago.count(), retry_after_.count());
        co_return refusal;
      }
      failed_.erase(failed);
    }
    auto [entry, added] = in_flight_.try_emplace(vm.uuid);
    first = added;
    entry->second.push_back(waiter);
    if (first) ++attaches_;
  }
  if (first) {
    log::info("vsock_attach").kv("vm", vm.name).kv("uuid", vm.uuid);
    attacher_.attach_vsock(
        vm.uuid, [this, uuid = vm.uuid](VsockAttachOutcome outcome) { finish(uuid, outcome); });
  }
  // Cancelled by the outcome's arrival, or expired.
  co_await waiter->timer.async_wait(use_tuple);
  if (!waiter->outcome) {
    // Off the list, so that the outcome, when it comes, is not posted to a
    // request that is gone; the attach stays in flight for the others.
    {
      std::lock_guard lock(mutex_);
      if (auto entry = in_flight_.find(vm.uuid); entry != in_flight_.end())
        std::erase(entry->second, waiter);
    }
    co_return Refusal{503, fmt::format("vm {} has no vsock device, and libvirt did not attach "
                                       "one within {} ms (libvirt.attach_timeout_ms)",
                                       vm.name, attach_timeout_.count())};
  }
  const VsockAttachOutcome& outcome = *waiter->outcome;
  if (!outcome || !*outcome) co_return failed_attach(vm, outcome);
  // In place: a Refusal, an aggregate, could be made from the number as well.
  co_return boost::system::result<std::uint32_t, Refusal>(boost::system::in_place_value, **outcome);
}

// On the attacher's thread: hands the outcome to each waiter on its own.
void ChannelOnDemand::finish(const std::string& uuid, const VsockAttachOutcome& outcome) {
  std::vector<std::shared_ptr<Waiter>> waiters;
  {
    std::lock_guard lock(mutex_);
    auto found = in_flight_.find(uuid);
    if (found == in_flight_.end()) return;
    waiters.swap(found->second);
    in_flight_.erase(found);
    if ((!outcome || !*outcome) && retry_after_.count() > 0) {
      const auto now = clock::now();
      std::erase_if(failed_,
                    [&](const auto& entry) { return now - entry.second.at >= retry_after_; });
      failed_.insert_or_assign(uuid, Failure{now, outcome});
    }
  }
  if (outcome && *outcome)
    log::info("vsock_attached")
        .kv("uuid", uuid)
        .kv("cid", static_cast<unsigned long long>(**outcome));
  else
    log::warn("vsock_attach_failed")
        .kv("uuid", uuid)
        .kv("error", outcome ? std::string("no CID assigned") : outcome.error());
  for (auto& waiter : waiters) {
    // One that timed out after this was taken finds its outcome too late, and ignores it.
    asio::post(waiter->timer.get_executor(), [waiter, outcome] {
      waiter->outcome = outcome;
      waiter->timer.cancel();
    });
  }
}

}  // namespace vmgate::hostd
