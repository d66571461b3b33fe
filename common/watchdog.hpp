// A connection's watchdog: one timer per connection, re-armed by phase.
//
// Unlike Deadline (joined with `||`, which cancels the work when it fires),
// the watchdog runs beside a connection's coroutine and only calls a
// callback, so the connection can still answer (a 504 after an upstream
// timeout) once it fires. Setting a later deadline costs no timer operation.
//
// A plain timer wait, not a coroutine: a connection that makes one short
// request (a new connection per request) would otherwise pay for spawning and
// tearing down a coroutine just to watch it.
#pragma once

#include <chrono>
#include <functional>
#include <memory>

#include "common/asio.hpp"

namespace vmgate {

class Watchdog : public std::enable_shared_from_this<Watchdog> {
 public:
  using clock = std::chrono::steady_clock;

  // Watches on `executor` (the connection's executor; callbacks run there).
  static std::shared_ptr<Watchdog> start(asio::any_io_executor executor) {
    return std::shared_ptr<Watchdog>(new Watchdog(std::move(executor)));
  }

  // Calls `on_expire` once if the deadline passes before it is moved again.
  void expires_after(clock::duration d, std::function<void()> on_expire) {
    on_expire_ = std::move(on_expire);
    deadline_ = clock::now() + d;
    if (stopped_) return;
    if (!waiting_) {
      arm();
    } else if (deadline_ < timer_.expiry()) {
      // Wakes the pending wait (operation_aborted), which re-arms at the new deadline.
      timer_.expires_at(deadline_);
    }
  }
  // Moves the deadline later without changing the action (progress on a stream).
  void extend(clock::duration d) { deadline_ = clock::now() + d; }
  void expires_never() {
    deadline_ = clock::time_point::max();
    on_expire_ = nullptr;
  }
  // Ends the watcher; the callback is never called after this.
  void stop() {
    stopped_ = true;
    on_expire_ = nullptr;
    if (waiting_) timer_.cancel();
  }

 private:
  explicit Watchdog(asio::any_io_executor executor) : timer_(std::move(executor)) {}

  void arm() {
    waiting_ = true;
    timer_.expires_at(deadline_);
    // The handler holds the watchdog until it runs, however the connection ends.
    timer_.async_wait([self = shared_from_this()](error_code) { self->fired(); });
  }

  void fired() {
    waiting_ = false;
    if (stopped_ || deadline_ == clock::time_point::max()) return;
    if (clock::now() >= deadline_) {
      deadline_ = clock::time_point::max();
      if (auto fire = std::exchange(on_expire_, nullptr)) fire();
      return;
    }
    arm();  // moved later (or earlier) since the wait began
  }

  asio::steady_timer timer_;
  clock::time_point deadline_ = clock::time_point::max();
  std::function<void()> on_expire_;
  bool waiting_ = false;
  bool stopped_ = false;
};

}  // namespace vmgate
