// How long the libvirt inventory waits before it tries libvirt again:
// exponential backoff from reconnect_min_ms, doubling up to
// reconnect_max_ms, each wait drawn between half the delay and all of it
// ("equal jitter"). Hostds that lost a daemon together (a shared remote URI,
// hosts upgraded at once) so spread their reconnects instead of arriving in
// step at each doubling, and none waits less than half the delay.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>

namespace vmgate::hostd {

class ReconnectBackoff {
 public:
  ReconnectBackoff(std::chrono::milliseconds min, std::chrono::milliseconds max,
                   std::uint32_t seed = std::random_device{}())
      : min_(min), max_(std::max(min, max)), delay_(min), random_(seed) {}

  // The wait before the next attempt; the delay doubles for the one after.
  std::chrono::milliseconds next() {
    std::uniform_int_distribution<std::chrono::milliseconds::rep> spread(delay_.count() / 2,
                                                                         delay_.count());
    const std::chrono::milliseconds wait(spread(random_));
    delay_ = std::min(delay_ * 2, max_);
    return wait;
  }
  // After a connection that worked: the next loss starts from the minimum.
  void reset() { delay_ = min_; }

 private:
  const std::chrono::milliseconds min_;
  const std::chrono::milliseconds max_;
  std::chrono::milliseconds delay_;
  std::mt19937 random_;  // minstd_rand's first draws from nearby seeds are nearly equal
};

}  // namespace vmgate::hostd
