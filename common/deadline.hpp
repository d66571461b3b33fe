// The one way vmgate bounds the time of an operation (docs/architecture.md,
// "Deadlines").
//
// A Deadline belongs to a connection and moves with it: each phase sets how
// long it may take (`expires_after`, with what to do if it passes), progress
// pushes it later (`extend`, a clock read and no timer operation, which keeps
// an idle timeout cheap on a busy stream), and `expires_never` clears it.
// When it passes it runs its action once — typically closing or cancelling
// the connection's streams, so that every pending operation finishes and the
// owner can still answer (a 504 after an agent timed out).
//
// `within()` bounds one operation with a Deadline: the operation is cancelled
// if the limit passes first.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>

#include "common/asio.hpp"

namespace vmgate {

class Deadline {
 public:
  using clock = std::chrono::steady_clock;

  // Watches on `executor` (the connection's; the action runs there).
  explicit Deadline(asio::any_io_executor executor);
  // The action never runs after this.
  ~Deadline();
  Deadline(const Deadline&) = delete;
  Deadline& operator=(const Deadline&) = delete;

  // Runs `on_expire` once if `d` passes before the deadline is moved again.
  void expires_after(clock::duration d, std::function<void()> on_expire);
  // Moves the deadline later without changing the action (progress on a stream).
  void extend(clock::duration d);
  void expires_never();
  // Whether the last action set has run.
  bool expired() const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

// Runs `work` for at most `limit`: empty when the limit passed first, and
// then `work`'s pending operation was cancelled.
template <class T>
awaitable<std::optional<T>> within(Deadline::clock::duration limit, awaitable<T> work) {
  using namespace asio::experimental::awaitable_operators;
  auto executor = co_await asio::this_coro::executor;
  // Waits until the deadline's action cancels it.
  asio::steady_timer expiry(executor, asio::steady_timer::time_point::max());
  Deadline deadline(executor);
  deadline.expires_after(limit, [&expiry] { expiry.cancel(); });
  auto outcome = co_await (std::move(work) || expiry.async_wait(use_tuple));
  if (outcome.index() != 0) co_return std::nullopt;
  co_return std::get<0>(std::move(outcome));
}

}  // namespace vmgate
