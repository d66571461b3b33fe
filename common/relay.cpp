#include "common/relay.hpp"

#include <exception>
#include <memory>

#include "common/idle_watch.hpp"
#include "common/splice.hpp"
#include "common/transport.hpp"

namespace vmgate {
namespace {

// Why a relay is a small state machine rather than two coroutine loops joined
// with `&&`: an idle tunnel then holds two pending readiness waits and this
// state, and a coroutine runs only while bytes move. Measured with
// bench/idle_connections.py (10,000 idle CONNECT tunnels, hostd + guestd RSS):
// awaitable operators ((a && b) || deadline) cost 28 KiB per tunnel, two
// suspended direction loops 11.6 KiB, readiness callbacks 9.3 KiB.

struct RelayState;

// One direction. While it waits for its source it is a pending readiness
// wait and nothing else: a coroutine runs only while bytes move.
struct Direction {
  struct Counter {
    RelayState* state;
    std::uint64_t* count;
    void operator()(std::size_t n) const;
  };
  Direction(RelayState& state, Stream& from_, Stream& to_, std::uint64_t& count, bool acknowledge)
      : from(from_), to(to_), counter{&state, &count}, acknowledge_reads(acknowledge) {}

  Stream& from;
  Stream& to;
  Counter counter;
  const bool acknowledge_reads;  // `from` is TCP: ACK what each read took at once
  SpliceDirection splice;
  bool done = false;
};

// Shared by both directions, whichever ends last. Its idle watch stops both
// when neither has moved a byte for `idle`.
struct RelayState : IdleWatch {
  RelayState(Stream& a_, Stream& b_, std::chrono::milliseconds idle, AcknowledgeReads acknowledge,
             RelayDone done_)
      : IdleWatch(a_.get_executor(), idle),
        a(a_),
        b(b_),
        a_to_b(*this, a_, b_, result.a_to_b, acknowledge.from_a),
        b_to_a(*this, b_, a_, result.b_to_a, acknowledge.from_b),
        on_done(std::move(done_)) {}

  void on_idle() override {
    result.idle_timeout = true;
    cancel_both();
  }
  void cancel_both() {
    stopping = true;
    error_code ignored;
    a.cancel(ignored);
    b.cancel(ignored);
  }

  Stream& a;
  Stream& b;
  RelayResult result;
  Direction a_to_b;
  Direction b_to_a;
  RelayDone on_done;
  bool stopping = false;
};

void Direction::Counter::operator()(std::size_t n) const {
  *count += n;
  state->touch();
}

// `culprit`: the stream whose read or write gave `ec`.
void end_direction(const std::shared_ptr<RelayState>& state, Direction& d, error_code ec,
                   const Stream& culprit) {
  if (ec == asio::error::eof) {
    (&d == &state->a_to_b ? state->result.a_ended : state->result.b_ended) = true;
    error_code ignored;
    d.to.shutdown(asio::socket_base::shutdown_send, ignored);
  } else if (ec) {
    if (!state->result.error && ec != asio::error::operation_aborted) {
      state->result.error = ec;
      state->result.failed = &culprit == &state->a ? RelayResult::Side::a : RelayResult::Side::b;
    }
    // The relay is broken: stop the other direction too.
    state->cancel_both();
  }
  d.done = true;
  if (!state->a_to_b.done || !state->b_to_a.done) return;
  state->stop();
  state->result.a_to_b_spliced = state->a_to_b.splice.spliced;
  state->result.b_to_a_spliced = state->b_to_a.splice.spliced;
  auto on_done = std::move(state->on_done);
  std::move(on_done)(state->result);
}

// After a read that emptied a TCP source (move_available returns when the
// source is drained), sends the ACK of those bytes now. Without it the
// kernel, in its "interactive" mode since our side last sent (the request
// went the other way), holds the ACK for up to 40 ms hoping to ride on data;
// a peer with Nagle on that wrote a head and then a body holds the body as
// long. Setting TCP_QUICKACK leaves that mode and, the receive queue being
// empty, sends the pending ACK at once; the kernel enters the mode again
// when we next send, hence once per read, not once per connection.
// Measured (python3-winrm run_cmd, five POSTs, through hostd and guestd to
// wsman_agent.py --nagle, 30 calls): 228 ms per call without, 6.2 ms with
// (header form; the same agent with Nagle off: 4.1 ms). The cost: one
// setsockopt(2) per read that moved bytes, 0.5 µs when no ACK is pending and
// 5 µs when it sends one (loopback, where that includes the peer receiving
// it), and a bare ACK segment that would otherwise have ridden on the next
// request: beside two splice(2) calls and a readiness wait per read.
void acknowledge_read(Stream& from) {
  transport::acknowledge_now(from, transport::Kind::tcp);
}

void wait_readable(std::shared_ptr<RelayState> state, Direction& d) {
  // Waiting for readiness first keeps an idle direction free of pipes,
  // buffers and coroutine frames.
  // In an allocation of its own size (ExactAllocator).
  d.from.async_wait(
      Stream::wait_read, asio::bind_allocator(ExactAllocator<void>(), [state = std::move(state),
                                                                       &d](error_code ec) mutable {
        if (!ec && state->stopping) ec = asio::error::operation_aborted;
        if (ec) {
          end_direction(state, d, ec, d.from);
          return;
        }
        auto executor = d.from.get_executor();
        asio::co_spawn(
            executor, move_available(d.from, d.to, d.splice, unlimited_bytes, OnMoved(d.counter)),
            [state = std::move(state), &d](std::exception_ptr e, MoveResult step) mutable {
              error_code end = step.write_error ? step.write_error : step.read_error;
              if (e && !end) end = asio::error::make_error_code(asio::error::fault);
              if (!end && state->stopping) end = asio::error::operation_aborted;
              if (end) {
                end_direction(state, d, end, step.write_error ? d.to : d.from);
                return;
              }
              if (d.acknowledge_reads && step.bytes > 0) acknowledge_read(d.from);
              wait_readable(std::move(state), d);
            });
      }));
}

}  // namespace

void start_relay(Stream& a, Stream& b, std::chrono::milliseconds idle, AcknowledgeReads acknowledge,
                 RelayDone done) {
  auto state = std::make_shared<RelayState>(a, b, idle, acknowledge, std::move(done));
  wait_readable(state, state->a_to_b);
  wait_readable(state, state->b_to_a);
}

// Not a coroutine itself: the awaitable async_initiate makes is the one frame
// an idle relay adds to its caller's.
awaitable<RelayResult> relay(Stream& a, Stream& b, std::chrono::milliseconds idle,
                             AcknowledgeReads acknowledge) {
  return asio::async_initiate<decltype(asio::use_awaitable), void(RelayResult)>(
      [&a, &b, idle, acknowledge](auto handler) {
        start_relay(a, b, idle, acknowledge, std::move(handler));
      },
      asio::use_awaitable);
}

}  // namespace vmgate
