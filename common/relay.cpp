#include "common/relay.hpp"

#include <exception>
#include <memory>

#include "common/splice.hpp"

namespace vmgate {
namespace {

using clock = std::chrono::steady_clock;

// Shared by the relay, its second direction and the idle timer's handler,
// whichever ends last.
struct RelayState {
  RelayState(Stream& a_, Stream& b_, std::chrono::milliseconds idle_)
      : a(a_), b(b_), idle(idle_), idle_timer(a_.get_executor()), second_done(a_.get_executor()) {
    second_done.expires_at(clock::time_point::max());
  }

  void touch() { deadline = clock::now() + idle; }
  void cancel_both() {
    stopping = true;
    error_code ignored;
    a.cancel(ignored);
    b.cancel(ignored);
  }

  Stream& a;
  Stream& b;
  std::chrono::milliseconds idle;
  clock::time_point deadline;
  // A plain timer wait, not a coroutine: moving the deadline on every chunk
  // costs a clock read, and only an expired wait looks at it again.
  asio::steady_timer idle_timer;
  // Woken (cancelled) when the spawned direction ends.
  asio::steady_timer second_done;
  bool second_finished = false;
  bool finished = false;
  bool stopping = false;
  RelayResult result;
};

void watch_idle(std::shared_ptr<RelayState> state) {
  auto& timer = state->idle_timer;
  timer.expires_at(state->deadline);
  timer.async_wait([state = std::move(state)](error_code) mutable {
    if (state->finished) return;
    if (clock::now() >= state->deadline) {
      state->result.idle_timeout = true;
      state->cancel_both();
      return;
    }
    watch_idle(std::move(state));
  });
}

awaitable<void> relay_direction(RelayState& state, Stream& from, Stream& to, std::uint64_t& count,
                                bool& spliced) {
  SpliceDirection direction;
  auto moved = [&state, &count](std::size_t n) {
    count += n;
    state.touch();
  };
  for (;;) {
    // Waiting for readiness first keeps an idle direction free of pipes and buffers.
    auto [wait_ec] = co_await from.async_wait(Stream::wait_read, use_tuple);
    error_code ec = wait_ec;
    if (!ec && state.stopping) ec = asio::error::operation_aborted;
    if (!ec) {
      MoveResult step =
          co_await move_available(from, to, direction, unlimited_bytes, OnMoved(moved));
      ec = step.write_error ? step.write_error : step.read_error;
    }
    if (direction.spliced) spliced = true;
    if (ec == asio::error::eof) {
      error_code ignored;
      to.shutdown(asio::socket_base::shutdown_send, ignored);
      co_return;
    }
    if (ec) {
      if (!state.result.error && ec != asio::error::operation_aborted) state.result.error = ec;
      // The relay is broken: stop the other direction too.
      state.cancel_both();
      co_return;
    }
  }
}

}  // namespace

awaitable<RelayResult> relay(Stream& a, Stream& b, std::chrono::milliseconds idle) {
  auto state = std::make_shared<RelayState>(a, b, idle);
  state->touch();
  watch_idle(state);
  // b→a runs as its own coroutine, a→b in this one; no parallel group, so an
  // idle relay costs two frames rather than a tree of them.
  auto executor = co_await asio::this_coro::executor;
  auto on_second_done = [state](std::exception_ptr e) {
    if (e && !state->result.error)
      state->result.error = asio::error::make_error_code(asio::error::fault);
    state->second_finished = true;
    state->second_done.cancel();
  };
  asio::co_spawn(executor,
                 relay_direction(*state, b, a, state->result.b_to_a, state->result.b_to_a_spliced),
                 std::move(on_second_done));
  co_await relay_direction(*state, a, b, state->result.a_to_b, state->result.a_to_b_spliced);
  if (!state->second_finished) co_await state->second_done.async_wait(use_tuple);
  state->finished = true;
  state->idle_timer.cancel();
  co_return state->result;
}

}  // namespace vmgate
