#include "hostd/channel/channel_budget.hpp"

#include <algorithm>
#include <deque>
#include <mutex>
#include <unordered_map>

#include <fmt/format.h>

namespace vmgate::hostd {
namespace {

// A request waiting for a channel. Shared with whoever gives it one (a
// finished channel to its key, or the place of one that closed), which wakes
// its timer on the waiter's own executor.
struct Waiter {
  Waiter(asio::any_io_executor executor, ChannelKey key_in)
      : timer(std::move(executor)), key(std::move(key_in)) {}
  asio::steady_timer timer;
  const ChannelKey key;
  // Under the budget's mutex:
  bool granted = false;           // a place to open a channel in
  std::optional<Channel> handed;  // or a channel ready for its key

  // Holds the waiter until its timer is woken, however the wait ends.
  static void wake(std::shared_ptr<Waiter> waiter) {
    auto executor = waiter->timer.get_executor();
    asio::post(executor, [waiter = std::move(waiter)] { waiter->timer.cancel(); });
  }
};

struct PerVm {
  std::uint32_t open = 0;
  std::uint32_t private_ = 0;
  std::deque<std::shared_ptr<Waiter>> waiters;
};

}  // namespace

struct ChannelTicket::State {
  explicit State(const ChannelConfig& config)
      : max_per_vm(config.max_per_vm),
        max_private_per_vm(config.max_private_per_vm),
        wait_timeout(config.wait_timeout),
        max_waiting_per_vm(config.max_waiting_per_vm) {}

  bool try_take(const std::string& uuid);
  void release(const std::string& uuid, bool was_private);

  const std::uint32_t max_per_vm;
  const std::uint32_t max_private_per_vm;
  const std::chrono::milliseconds wait_timeout;
  const std::uint32_t max_waiting_per_vm;
  std::mutex mutex;
  std::unordered_map<std::string, PerVm> vms;
  ChannelBudgetStats stats;
};

ChannelTicket& ChannelTicket::operator=(ChannelTicket&& other) noexcept {
  if (this != &other) {
    release();
    state_ = std::move(other.state_);
    uuid_ = std::move(other.uuid_);
    private_ = std::exchange(other.private_, false);
  }
  return *this;
}

void ChannelTicket::release() {
  if (auto state = std::move(state_)) state->release(uuid_, private_);
  state_.reset();
  private_ = false;
}

ChannelBudget::ChannelBudget(const ChannelConfig& config)
    : state_(std::make_shared<State>(config)) {}

ChannelBudget::~ChannelBudget() = default;

const ChannelBudgetStats& ChannelBudget::stats() const {
  return state_->stats;
}

bool ChannelTicket::State::try_take(const std::string& uuid) {
  std::lock_guard lock(mutex);
  auto& vm = vms[uuid];
  // Those already waiting go first.
  if (vm.open >= max_per_vm || !vm.waiters.empty()) return false;
  ++vm.open;
  ++stats.open;
  return true;
}

awaitable<boost::system::result<ChannelBudget::Grant, Refusal>> ChannelBudget::acquire(
    const VmRecord& vm, const ChannelKey& key, const std::function<bool()>& make_room) {
  State& s = *state_;
  if (s.try_take(vm.uuid)) co_return Grant{ChannelTicket(state_, vm.uuid), {}};
  if (make_room && make_room() && s.try_take(vm.uuid))
    co_return Grant{ChannelTicket(state_, vm.uuid), {}};

  const auto executor = co_await asio::this_coro::executor;
  auto waiter = std::make_shared<Waiter>(executor, key);
  {
    std::lock_guard lock(s.mutex);
    auto& per_vm = s.vms[vm.uuid];
    if (per_vm.open < s.max_per_vm && per_vm.waiters.empty()) {
      ++per_vm.open;  // one closed meanwhile
      ++s.stats.open;
      co_return Grant{ChannelTicket(state_, vm.uuid), {}};
    }
    if (per_vm.waiters.size() >= s.max_waiting_per_vm) {
      ++s.stats.waits_refused;
      co_return Refusal{503, fmt::format("all {} channels to vm {} are in use and {} requests "
                                         "wait for one already (channel.max_per_vm, "
                                         "channel.max_waiting_per_vm)",
                                         s.max_per_vm, vm.name, per_vm.waiters.size())};
    }
    per_vm.waiters.push_back(waiter);
    ++s.stats.waiting;
  }
  waiter->timer.expires_after(s.wait_timeout);
  co_await waiter->timer.async_wait(use_tuple);
  std::optional<Grant> grant;
  {
    std::lock_guard lock(s.mutex);
    if (waiter->handed) {
      grant.emplace(Grant{{}, std::move(waiter->handed)});
    } else if (waiter->granted) {
      grant.emplace(Grant{ChannelTicket(state_, vm.uuid), {}});  // counted when handed over
    } else {
      std::erase(s.vms[vm.uuid].waiters, waiter);
      --s.stats.waiting;
      ++s.stats.waits_timed_out;
    }
  }
  if (grant) {
    ++s.stats.waits_granted;
    if (grant->channel) {
      grant->channel = move_to(std::move(*grant->channel), executor);
      // Lost in the move (closed): its place came with it, and went back.
      if (!grant->channel) {
        auto again = co_await acquire(vm, key, make_room);
        co_return again;
      }
    }
    co_return std::move(*grant);
  }
  co_return Refusal{503, fmt::format("all {} channels to vm {} stayed in use for {} ms "
                                     "(channel.max_per_vm, channel.wait_timeout_ms)",
                                     s.max_per_vm, vm.name, s.wait_timeout.count())};
}

bool ChannelBudget::hand_over(Channel& channel) {
  if (!channel.ticket || channel.ticket.is_private()) return false;
  State& s = *state_;
  // The common case, nobody waiting anywhere, without the lock: this runs
  // after every exchange. (A waiter that queues just now is served by the
  // next channel of its VM to close or come back.)
  if (s.stats.waiting.load(std::memory_order_relaxed) == 0) return false;
  std::shared_ptr<Waiter> taker;
  {
    std::lock_guard lock(s.mutex);
    auto it = s.vms.find(channel.key.uuid);
    if (it == s.vms.end() || it->second.waiters.empty()) return false;
    auto& waiters = it->second.waiters;
    auto same_key = std::find_if(waiters.begin(), waiters.end(),
                                 [&](const auto& w) { return w->key == channel.key; });
    if (same_key != waiters.end()) {
      taker = std::move(*same_key);
      waiters.erase(same_key);
      --s.stats.waiting;
      taker->handed.emplace(std::move(channel));
    }
  }
  if (taker) {
    Waiter::wake(std::move(taker));
    return true;
  }
  // Only requests for other ports wait: this one closes, and its place goes
  // to the first of them.
  error_code ignored;
  channel.stream.close(ignored);
  channel.ticket = ChannelTicket();
  return true;
}

bool ChannelBudget::make_private(ChannelTicket& ticket) {
  if (!ticket || ticket.private_) return bool(ticket);
  State& s = *ticket.state_;
  std::lock_guard lock(s.mutex);
  auto& vm = s.vms[ticket.uuid_];
  if (vm.private_ >= s.max_private_per_vm) return false;
  ++vm.private_;
  ++s.stats.private_;
  ticket.private_ = true;
  return true;
}

void ChannelTicket::State::release(const std::string& uuid, bool was_private) {
  std::shared_ptr<Waiter> next;
  {
    std::lock_guard lock(mutex);
    auto it = vms.find(uuid);
    if (it == vms.end()) return;
    auto& vm = it->second;
    if (was_private) {
      --vm.private_;
      --stats.private_;
    }
    if (!vm.waiters.empty()) {
      // The place goes straight to the first waiter: the count stays.
      next = std::move(vm.waiters.front());
      vm.waiters.pop_front();
      next->granted = true;
      --stats.waiting;
    } else {
      --vm.open;
      --stats.open;
      if (vm.open == 0) vms.erase(it);
    }
  }
  if (next) Waiter::wake(std::move(next));
}

std::uint32_t ChannelBudget::open_for(const std::string& uuid) const {
  std::lock_guard lock(state_->mutex);
  auto it = state_->vms.find(uuid);
  return it == state_->vms.end() ? 0 : it->second.open;
}

std::vector<std::pair<std::string, std::uint32_t>> ChannelBudget::busiest(std::size_t n) const {
  std::vector<std::pair<std::string, std::uint32_t>> out;
  {
    std::lock_guard lock(state_->mutex);
    out.reserve(state_->vms.size());
    for (const auto& [uuid, vm] : state_->vms) {
      if (vm.open > 0) out.emplace_back(uuid, vm.open);
    }
  }
  const auto more = [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  };
  if (out.size() > n) {
    std::partial_sort(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(n), out.end(), more);
    out.resize(n);
  } else {
    std::sort(out.begin(), out.end(), more);
  }
  return out;
}

}  // namespace vmgate::hostd
