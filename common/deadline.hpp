// A per-connection deadline. Phases set how long the next step may take
// (`expires_after`); `watch()` runs beside the work and, once the deadline
// passes, calls `on_expire` (which closes the sockets, so every pending
// operation finishes) and returns. Joined with the work through `||`:
//
//   auto outcome = co_await (work() || deadline.watch([&] { close_all(); }));
//
// Moving the deadline later costs no timer operation, which keeps the
// per-read cost of an idle timeout on a busy relay to one clock read.
#pragma once

#include <chrono>
#include <functional>

#include "common/asio.hpp"

namespace vmgate {

class Deadline {
 public:
  using clock = std::chrono::steady_clock;

  explicit Deadline(asio::any_io_executor executor) : timer_(std::move(executor)) {}

  void expires_after(clock::duration d) {
    deadline_ = clock::now() + d;
    // Only an earlier deadline needs the sleeping watcher woken.
    if (deadline_ < timer_.expiry()) timer_.expires_at(deadline_);
  }
  void expires_never() { deadline_ = clock::time_point::max(); }
  bool expired() const { return expired_; }

  awaitable<void> watch(std::function<void()> on_expire) {
    for (;;) {
      timer_.expires_at(deadline_);
      auto [ec] = co_await timer_.async_wait(use_tuple);
      auto cs = co_await asio::this_coro::cancellation_state;
      if (cs.cancelled() != asio::cancellation_type::none) co_return;
      if (ec && ec != asio::error::operation_aborted) co_return;
      if (clock::now() >= deadline_) {
        expired_ = true;
        if (on_expire) on_expire();
        co_return;
      }
    }
  }

 private:
  asio::steady_timer timer_;
  clock::time_point deadline_ = clock::time_point::max();
  bool expired_ = false;
};

}  // namespace vmgate
