#include "hostd/channel/live_channels.hpp"

#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

namespace vmgate::hostd {

// Shared with the closes posted to the I/O threads: one may run after the
// registry is gone (hostd stopping).
struct LiveChannels::State {
  std::mutex mutex;
  // The serial tells a watch from a later one that reuses its address
  // between a revocation's decision and its close.
  std::unordered_map<ChannelWatch*, std::uint64_t> watches;
  std::uint64_t next_serial = 1;
  std::atomic<std::uint64_t>* revoked = nullptr;  // null once the registry is gone
};

void LiveChannels::close(ChannelWatch& watch, std::string why) {
  watch.revoked_ = true;
  watch.why_ = std::move(why);
  error_code ignored;
  watch.stream_.close(ignored);
  if (watch.client_) watch.client_->cancel(ignored);
}

LiveChannels::LiveChannels(GoneCheck gone)
    : gone_(std::move(gone)), state_(std::make_shared<State>()) {
  state_->revoked = &revoked_;
}

LiveChannels::~LiveChannels() {
  std::lock_guard lock(state_->mutex);
  state_->revoked = nullptr;
}

std::size_t LiveChannels::revoke_if(const GoneCheck& gone) {
  struct Doomed {
    ChannelWatch* watch;
    std::uint64_t serial;
    asio::any_io_executor executor;
    std::string why;
  };
  std::vector<Doomed> doomed;
  {
    std::lock_guard lock(state_->mutex);
    for (auto& [watch, serial] : state_->watches) {
      if (auto why = gone(watch->key_))
        doomed.push_back({watch, serial, watch->stream_.get_executor(), std::move(*why)});
    }
  }
  // Only the socket's own thread may close it: what waits on it there then
  // completes with operation_aborted.
  for (auto& d : doomed) {
    asio::post(d.executor, [state = state_, watch = d.watch, serial = d.serial,
                            why = std::move(d.why)]() mutable {
      std::lock_guard lock(state->mutex);
      auto it = state->watches.find(watch);
      if (it == state->watches.end() || it->second != serial) return;  // it ended meanwhile
      close(*watch, std::move(why));
      if (state->revoked) ++*state->revoked;
    });
  }
  return doomed.size();
}

std::size_t LiveChannels::watched() const {
  std::lock_guard lock(state_->mutex);
  return state_->watches.size();
}

void LiveChannels::add(ChannelWatch& watch) {
  {
    std::lock_guard lock(state_->mutex);
    watch.serial_ = state_->next_serial++;
    state_->watches.emplace(&watch, watch.serial_);
  }
  // After the watch is in: a revocation from now on finds it, and one that
  // ran before has already changed what `gone_` answers.
  if (auto why = gone_(watch.key_)) {
    close(watch, std::move(*why));
    ++revoked_;
  }
}

void LiveChannels::remove(ChannelWatch& watch) {
  std::lock_guard lock(state_->mutex);
  state_->watches.erase(&watch);
}

ChannelWatch::ChannelWatch(LiveChannels* channels, const ChannelKey& key, Stream& stream,
                           Stream* client)
    : channels_(channels), key_(key), stream_(stream), client_(client) {
  if (channels_) channels_->add(*this);
}

ChannelWatch::~ChannelWatch() {
  if (channels_) channels_->remove(*this);
}

}  // namespace vmgate::hostd
