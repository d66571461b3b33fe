#include "common/deadline.hpp"

namespace vmgate {

// A plain timer wait, not a coroutine: a connection that makes one short
// request would otherwise pay for spawning and tearing down a coroutine just
// to watch it. The pending wait holds the state, so it may outlive the
// Deadline; `stopped` keeps the action from running after the Deadline is gone.
struct Deadline::State : std::enable_shared_from_this<State> {
  explicit State(asio::any_io_executor executor) : timer(std::move(executor)) {}

  void arm() {
    waiting = true;
    timer.expires_at(deadline);
    timer.async_wait([self = shared_from_this()](error_code) { self->fired(); });
  }

  void fired() {
    waiting = false;
    if (stopped || deadline == clock::time_point::max()) return;
    if (clock::now() < deadline) {
      arm();  // moved since the wait began
      return;
    }
    deadline = clock::time_point::max();
    expired = true;
    if (auto action = std::exchange(on_expire, nullptr)) action();
  }

  asio::steady_timer timer;
  clock::time_point deadline = clock::time_point::max();
  std::function<void()> on_expire;
  bool waiting = false;
  bool stopped = false;
  bool expired = false;
};

Deadline::Deadline(asio::any_io_executor executor)
    : state_(std::make_shared<State>(std::move(executor))) {}

Deadline::~Deadline() {
  state_->stopped = true;
  state_->on_expire = nullptr;
  if (state_->waiting) state_->timer.cancel();
}

void Deadline::expires_after(clock::duration d, std::function<void()> on_expire) {
  auto& s = *state_;
  s.on_expire = std::move(on_expire);
  s.expired = false;
  s.deadline = clock::now() + d;
  if (!s.waiting) {
    s.arm();
  } else if (s.deadline < s.timer.expiry()) {
    // Wakes the pending wait (operation_aborted), which re-arms at the new deadline.
    s.timer.expires_at(s.deadline);
  }
}

void Deadline::extend(clock::duration d) {
  state_->deadline = clock::now() + d;
}

void Deadline::expires_never() {
  state_->deadline = clock::time_point::max();
  state_->on_expire = nullptr;
}

bool Deadline::expired() const {
  return state_->expired;
}

}  // namespace vmgate
