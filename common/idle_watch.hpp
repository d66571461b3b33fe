// Idle timeouts for the many long-lived streams of one io_context, all kept
// by one timer.
//
// A relay that sits idle for hours (a CONNECT tunnel, a pooled channel) needs
// only to be told when its idle time has passed. A Deadline per relay is a
// timer, its shared state and its pending wait: ~400 bytes in each daemon for
// every idle tunnel. Here a watch is a few pointers: the watches of one idle
// duration are a list in the order they last moved, so the first is always
// the next to expire, progress (touch) moves a watch to the end of its list,
// and the io_context's one timer waits for the earliest first watch.
// (bench/idle_connections.py, 10,000 idle CONNECT tunnels, hostd + guestd
// RSS: 5.8 KiB per tunnel with a Deadline per relay, 4.9 KiB so.)
#pragma once

#include <chrono>
#include <cstdint>

#include "common/asio.hpp"

namespace vmgate {

class IdleClock;

// Watches one thing for as long as it lives: on_idle() runs once, on the
// executor's thread, when `idle` has passed without a touch(). The executor
// must be single-threaded (an io_context run by one thread), as the relay's
// is; a watch is made, touched and destroyed on that thread.
class IdleWatch {
 public:
  using clock = std::chrono::steady_clock;

  IdleWatch(const asio::any_io_executor& executor, std::chrono::milliseconds idle);
  virtual ~IdleWatch();
  IdleWatch(const IdleWatch&) = delete;
  IdleWatch& operator=(const IdleWatch&) = delete;

  // Progress: the idle time starts again from now.
  void touch();
  // on_idle() will not run (it may have already).
  void stop();

 protected:
  virtual void on_idle() = 0;

 private:
  friend class IdleClock;
  IdleClock* clock_;
  IdleWatch* prev_ = nullptr;
  IdleWatch* next_ = nullptr;
  clock::time_point last_;
  std::uint32_t line_;  // its clock's list for its idle duration
  bool watched_ = false;
};

}  // namespace vmgate
