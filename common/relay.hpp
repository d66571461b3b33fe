// The relay between two byte streams, used by both daemons: a CONNECT tunnel
// in hostd, the channel-to-agent leg in guestd.
//
// Two direction loops, both run to their end (not one cancelling the other:
// one direction finishing must not cut the other, or a response is truncated
// after the client half-closes). At EOF the opposite side gets
// shutdown(send), so half-close crosses the relay. An idle timeout closes
// both when neither direction moves.
//
// Bytes move with splice(2) where the kernel allows it (common/splice.hpp).
// The caller awaits one operation; inside (relay.cpp) an idle relay is two
// pending readiness waits, a deadline and a small shared state, not two
// suspended loops, so a host keeps tens of thousands of idle tunnels open.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <utility>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/bind_allocator.hpp>

#include "common/asio.hpp"

namespace vmgate {

struct RelayResult {
  std::uint64_t a_to_b = 0;
  std::uint64_t b_to_a = 0;
  bool idle_timeout = false;
  // Which directions moved bytes with splice(2), inside the kernel; a
  // direction that carried bytes and is not set here copied them.
  bool a_to_b_spliced = false;
  bool b_to_a_spliced = false;
  error_code error;  // the first error that was not an orderly EOF
  // Which stream that error came from (a read from it or a write to it
  // failed: reset, broken pipe): the side that went away mid-stream, for the
  // owner to say which end aborted. `none` without an error.
  enum class Side : unsigned char { none, a, b };
  Side failed = Side::none;
  // Which streams' reads ended in order (EOF): a side that failed after its
  // own end had only its other direction cut.
  bool a_ended = false;
  bool b_ended = false;
};

// Which streams are TCP sockets whose reads the relay acknowledges at once
// (transport::acknowledge_now, after each read): for a peer the relay's owner
// does not control, which may write one message in two pieces with Nagle's
// algorithm on (an HTTP agent writing its head, then its body) and so holds
// the second piece until the first is ACKed. Only for TCP: vsock and unix
// streams have no ACKs to hold.
struct AcknowledgeReads {
  bool from_a = false;
  bool from_b = false;
};

// Relays until both directions have ended (EOF both ways), an error, or
// `idle` passes without a byte moving; does not close the streams. Call it on
// the streams' executor, which must be single-threaded (or a strand).
// Cancelling the awaiting coroutine is not supported: close a stream instead.
awaitable<RelayResult> relay(Stream& a, Stream& b, std::chrono::milliseconds idle,
                             AcknowledgeReads acknowledge = {});

// The same relay for an owner that waits outside any coroutine: `done` runs
// once, on the streams' executor, when the relay has ended; the streams must
// outlive that call (its handler may own them). An idle relay so started is
// its two readiness waits and a small state, with no coroutine frame of its
// owner's held beside them.
using RelayDone = asio::any_completion_handler<void(RelayResult)>;
void start_relay(Stream& a, Stream& b, std::chrono::milliseconds idle, AcknowledgeReads acknowledge,
                 RelayDone done);

// The allocator of what an idle relay holds (its readiness waits, `done`):
// std::allocator by another name. Under std::allocator, or none, Asio puts an
// operation in a block from its per-thread recycling cache, which is
// whatever larger block the last operation left there (a read's, with a
// parser's handler), and an idle relay holds it for hours. (heaptrack, 2,000
// idle CONNECT tunnels: hostd held a 451-byte and a 221-byte recycled block
// per tunnel for operations of about 200 bytes; bench/idle_connections.py,
// hostd + guestd RSS per idle tunnel: 4.9 KiB before, 4.7 KiB with it.)
template <class T>
struct ExactAllocator {
  using value_type = T;
  ExactAllocator() = default;
  template <class U>
  ExactAllocator(const ExactAllocator<U>&) noexcept {}
  T* allocate(std::size_t n) { return std::allocator<T>().allocate(n); }
  void deallocate(T* p, std::size_t n) { std::allocator<T>().deallocate(p, n); }
  friend bool operator==(const ExactAllocator&, const ExactAllocator&) = default;
};

// `done` in an allocation of its own size (ExactAllocator).
template <class Handler>
RelayDone relay_done(Handler&& done) {
  return RelayDone(asio::bind_allocator(ExactAllocator<void>(), std::forward<Handler>(done)));
}

}  // namespace vmgate
