#include "hostd/channel/channel_pool.hpp"

#include <algorithm>
#include <functional>

#include "common/transport.hpp"

namespace vmgate::hostd {
namespace {

// Often enough that an entry outlives its timeout by at most half of it.
std::chrono::milliseconds sweep_interval(std::chrono::milliseconds idle_timeout) {
  return std::max(idle_timeout / 2, std::chrono::milliseconds(100));
}

// Closing gives each channel's ticket back, which may wake a request
// waiting for one: never under the pool's lock.
void close_all(std::vector<Channel>& channels) {
  for (auto& c : channels) {
    error_code ignored;
    c.stream.close(ignored);
  }
  channels.clear();
}

}  // namespace

std::size_t ChannelKeyHash::operator()(const ChannelKey& key) const noexcept {
  std::size_t h = std::hash<std::string>{}(key.uuid);
  h ^= std::hash<std::uint64_t>{}((std::uint64_t{key.port} << 33) |
                                  (key.cid ? (std::uint64_t{*key.cid} << 1) | 1 : 0)) +
       0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
  return h;
}

bool idle_channel_usable(Stream& stream) {
  return transport::read_would_block(stream);
}

ChannelPool::ChannelPool(asio::any_io_executor executor, const ChannelConfig& config)
    : max_idle_(config.pool_max_idle),
      idle_timeout_(config.pool_idle_timeout),
      sweep_timer_(std::move(executor)),
      self_(std::make_shared<ChannelPool*>(this)) {
  if (enabled()) arm_sweep();
}

ChannelPool::~ChannelPool() {
  self_.reset();
  sweep_timer_.cancel();
  std::lock_guard lock(mutex_);
  for (auto& [key, entries] : idle_) {
    for (auto& e : entries) {
      error_code ignored;
      e.channel.stream.close(ignored);
    }
  }
}

void ChannelPool::arm_sweep() {
  sweep_timer_.expires_after(sweep_interval(idle_timeout_));
  sweep_timer_.async_wait([weak = std::weak_ptr<ChannelPool*>(self_)](error_code ec) {
    auto self = weak.lock();
    if (ec || !self) return;
    (*self)->sweep();
    (*self)->arm_sweep();
  });
}

std::optional<Channel> ChannelPool::take(const ChannelKey& key,
                                         const asio::any_io_executor& executor,
                                         clock::time_point now) {
  if (!enabled()) return std::nullopt;
  auto& context = asio::query(executor, asio::execution::context);
  std::vector<Channel> dead;
  std::optional<Channel> found;
  // One candidate at a time under the lock; whether it is still alive is
  // asked outside it.
  while (!found) {
    std::optional<Channel> candidate;
    {
      std::lock_guard lock(mutex_);
      auto it = idle_.find(key);
      if (it == idle_.end()) break;
      auto& entries = it->second;
      const std::size_t before = entries.size();
      std::erase_if(entries, [&](Entry& e) {
        if (now - e.since < idle_timeout_) return false;
        ++stats_.expired;
        dead.push_back(std::move(e.channel));
        return true;
      });
      if (!entries.empty()) {
        // The newest on the taker's own thread if there is one (no hand-over
        // between reactors), else the newest.
        auto pick = std::prev(entries.end());
        for (auto e = entries.rbegin(); e != entries.rend(); ++e) {
          if (&asio::query(e->channel.stream.get_executor(), asio::execution::context) ==
              &context) {
            pick = std::prev(e.base());
            break;
          }
        }
        candidate.emplace(std::move(pick->channel));
        entries.erase(pick);
      }
      stats_.idle -= before - entries.size();
      // An emptied entry stays for the put() that follows the exchange (no
      // node and vector freed and made again per request); sweep() drops it.
    }
    if (!candidate) break;
    if (idle_channel_usable(candidate->stream)) {
      found = std::move(candidate);
      ++stats_.taken;
    } else {
      ++stats_.closed;
      dead.push_back(std::move(*candidate));
    }
  }
  close_all(dead);
  if (!found) return std::nullopt;
  return move_to(std::move(*found), executor);
}

void ChannelPool::put(Channel channel, clock::time_point now) {
  // Not asked whether it is alive: it comes from an exchange that just ended
  // cleanly, and take() asks anyway (one recv per request fewer).
  if (enabled()) {
    std::unique_lock lock(mutex_);
    auto& entries = idle_[channel.key];
    if (entries.size() < max_idle_) {
      entries.push_back(Entry{std::move(channel), now});
      ++stats_.idle;
      return;
    }
    lock.unlock();
    ++stats_.full;
  }
  error_code ignored;
  channel.stream.close(ignored);
}

bool ChannelPool::evict_one(const std::string& uuid) {
  std::optional<Channel> evicted;
  {
    std::lock_guard lock(mutex_);
    auto oldest = idle_.end();
    for (auto it = idle_.begin(); it != idle_.end(); ++it) {
      if (it->first.uuid != uuid || it->second.empty()) continue;
      if (oldest == idle_.end() || it->second.front().since < oldest->second.front().since)
        oldest = it;
    }
    if (oldest == idle_.end()) return false;
    evicted.emplace(std::move(oldest->second.front().channel));
    oldest->second.erase(oldest->second.begin());
    if (oldest->second.empty()) idle_.erase(oldest);
    --stats_.idle;
    ++stats_.evicted;
  }
  error_code ignored;
  evicted->stream.close(ignored);
  return true;
}

std::size_t ChannelPool::drop_if(
    const std::function<std::optional<std::string>(const ChannelKey&)>& gone) {
  std::vector<Channel> dropped;
  {
    std::lock_guard lock(mutex_);
    for (auto it = idle_.begin(); it != idle_.end();) {
      if (!gone(it->first)) {
        ++it;
        continue;
      }
      for (auto& e : it->second)
        dropped.push_back(std::move(e.channel));
      stats_.idle -= it->second.size();
      it = idle_.erase(it);
    }
  }
  stats_.revoked += dropped.size();
  const std::size_t n = dropped.size();
  close_all(dropped);
  return n;
}

void ChannelPool::sweep(clock::time_point now) {
  // Every entry leaves the pool for the check, made outside the lock; the
  // live ones go back in front of whatever was returned meanwhile, which is
  // newer. A take() in that moment may miss one and open a new channel.
  std::unordered_map<ChannelKey, std::vector<Entry>, ChannelKeyHash> checked;
  {
    std::lock_guard lock(mutex_);
    checked.swap(idle_);
  }
  std::vector<Channel> dead;
  std::size_t dropped = 0;
  for (auto& [key, entries] : checked) {
    std::erase_if(entries, [&](Entry& e) {
      bool expired = now - e.since >= idle_timeout_;
      bool closed = !expired && !idle_channel_usable(e.channel.stream);
      if (!expired && !closed) return false;
      ++(expired ? stats_.expired : stats_.closed);
      dead.push_back(std::move(e.channel));
      ++dropped;
      return true;
    });
  }
  {
    std::lock_guard lock(mutex_);
    for (auto& [key, entries] : checked) {
      if (entries.empty()) continue;
      auto& now_idle = idle_[key];
      now_idle.insert(now_idle.begin(), std::make_move_iterator(entries.begin()),
                      std::make_move_iterator(entries.end()));
      // Over the limit after the merge: the oldest go.
      while (now_idle.size() > max_idle_) {
        dead.push_back(std::move(now_idle.front().channel));
        now_idle.erase(now_idle.begin());
        ++stats_.full;
        ++dropped;
      }
    }
    stats_.idle -= dropped;
  }
  close_all(dead);
}

std::size_t ChannelPool::idle() const {
  return stats_.idle.load();
}

}  // namespace vmgate::hostd
