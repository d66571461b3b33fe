#include "common/relay.hpp"

#include <exception>
#include <memory>

#include "common/splice.hpp"

namespace vmgate {
namespace {

using clock = std::chrono::steady_clock;

struct RelayState;

// One direction. While it waits for its source it is a pending readiness
// wait and nothing else: a coroutine runs only while bytes move.
struct Direction {
  struct Counter {
    RelayState* state;
    std::uint64_t* count;
    void operator()(std::size_t n) const;
  };
  Direction(RelayState& state, Stream& from_, Stream& to_, std::uint64_t& count)
      : from(from_), to(to_), counter{&state, &count} {}

  Stream& from;
  Stream& to;
  Counter counter;
  SpliceDirection splice;
  bool done = false;
};

// Shared by both directions and the idle timer's handler, whichever ends last.
struct RelayState {
  RelayState(Stream& a_, Stream& b_, std::chrono::milliseconds idle_, RelayCallback done_)
      : a(a_),
        b(b_),
        idle(idle_),
        idle_timer(a_.get_executor()),
        a_to_b(*this, a_, b_, result.a_to_b),
        b_to_a(*this, b_, a_, result.b_to_a),
        on_done(std::move(done_)) {}

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
  // A plain timer wait: moving the deadline on every chunk costs a clock
  // read, and only an expired wait looks at it again.
  asio::steady_timer idle_timer;
  RelayResult result;
  Direction a_to_b;
  Direction b_to_a;
  RelayCallback on_done;
  bool stopping = false;
  bool finished = false;
};

void Direction::Counter::operator()(std::size_t n) const {
  *count += n;
  state->touch();
}

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

void end_direction(const std::shared_ptr<RelayState>& state, Direction& d, error_code ec) {
  if (ec == asio::error::eof) {
    error_code ignored;
    d.to.shutdown(asio::socket_base::shutdown_send, ignored);
  } else if (ec) {
    if (!state->result.error && ec != asio::error::operation_aborted) state->result.error = ec;
    // The relay is broken: stop the other direction too.
    state->cancel_both();
  }
  d.done = true;
  if (!state->a_to_b.done || !state->b_to_a.done) return;
  state->finished = true;
  state->idle_timer.cancel();
  state->result.a_to_b_spliced = state->a_to_b.splice.spliced;
  state->result.b_to_a_spliced = state->b_to_a.splice.spliced;
  auto on_done = std::move(state->on_done);
  on_done(state->result);
}

void wait_readable(std::shared_ptr<RelayState> state, Direction& d) {
  // Waiting for readiness first keeps an idle direction free of pipes,
  // buffers and coroutine frames.
  d.from.async_wait(Stream::wait_read, [state = std::move(state), &d](error_code ec) mutable {
    if (!ec && state->stopping) ec = asio::error::operation_aborted;
    if (ec) {
      end_direction(state, d, ec);
      return;
    }
    auto executor = d.from.get_executor();
    asio::co_spawn(executor,
                   move_available(d.from, d.to, d.splice, unlimited_bytes, OnMoved(d.counter)),
                   [state = std::move(state), &d](std::exception_ptr e, MoveResult step) mutable {
                     error_code end = step.write_error ? step.write_error : step.read_error;
                     if (e && !end) end = asio::error::make_error_code(asio::error::fault);
                     if (!end && state->stopping) end = asio::error::operation_aborted;
                     if (end) {
                       end_direction(state, d, end);
                       return;
                     }
                     wait_readable(std::move(state), d);
                   });
  });
}

}  // namespace

void start_relay(Stream& a, Stream& b, std::chrono::milliseconds idle, RelayCallback done) {
  auto state = std::make_shared<RelayState>(a, b, idle, std::move(done));
  state->touch();
  watch_idle(state);
  wait_readable(state, state->a_to_b);
  wait_readable(state, state->b_to_a);
}

}  // namespace vmgate
