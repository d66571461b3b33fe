// A connection's watchdog: one timer per connection, re-armed by phase.
//
// Unlike Deadline (joined with `||`, which cancels the work when it fires),
// the watchdog runs beside a connection's coroutine and only calls a
// callback, so the connection can still answer (a 504 after an upstream
// timeout) once it fires. Setting a later deadline costs no timer operation.
#pragma once

#include <chrono>
#include <exception>
#include <functional>
#include <memory>

#include "common/asio.hpp"
#include "common/log.hpp"

namespace vmgate {

class Watchdog : public std::enable_shared_from_this<Watchdog> {
 public:
  using clock = std::chrono::steady_clock;

  // Starts watching on `executor` (the connection's strand).
  static std::shared_ptr<Watchdog> start(asio::any_io_executor executor) {
    auto self = std::shared_ptr<Watchdog>(new Watchdog(executor));
    asio::co_spawn(executor, self->run(self), [](std::exception_ptr e) {
      if (e) log::error("watchdog_failed");
    });
    return self;
  }

  // Calls `on_expire` once if the deadline passes before it is moved again.
  void expires_after(clock::duration d, std::function<void()> on_expire) {
    on_expire_ = std::move(on_expire);
    deadline_ = clock::now() + d;
    if (deadline_ < timer_.expiry()) timer_.expires_at(deadline_);
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
    timer_.cancel();
  }

 private:
  explicit Watchdog(asio::any_io_executor executor) : timer_(std::move(executor)) {
    timer_.expires_at(clock::time_point::max());
  }

  awaitable<void> run(std::shared_ptr<Watchdog> keep_alive) {
    while (!stopped_) {
      timer_.expires_at(deadline_);
      co_await timer_.async_wait(use_tuple);
      if (stopped_) break;
      if (clock::now() >= deadline_) {
        deadline_ = clock::time_point::max();
        if (auto fire = std::exchange(on_expire_, nullptr)) fire();
      }
    }
    (void)keep_alive;
  }

  asio::steady_timer timer_;
  clock::time_point deadline_ = clock::time_point::max();
  std::function<void()> on_expire_;
  bool stopped_ = false;
};

}  // namespace vmgate
