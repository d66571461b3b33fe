// Moving bytes from one stream to another inside the kernel: splice(2) from
// the source socket into a pipe, then from the pipe into the destination
// socket, so a payload never crosses into userspace.
//
// Pipes are taken from a small per-thread pool only while bytes flow and
// handed back empty when the source has nothing more to give: an idle
// connection holds neither a pipe (two descriptors) nor a userspace buffer.
// Where the kernel refuses splice for a pair of sockets (EINVAL and kin) the
// bytes go through a short-lived userspace buffer instead; a
// SpliceDirection remembers the refusal so it is paid once.
//
// splice(2) into a socket cannot pass MSG_NOSIGNAL: a process that uses this
// must ignore SIGPIPE (each daemon's main does), or a peer that has gone
// kills it instead of giving EPIPE.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>

#include "common/asio.hpp"

namespace vmgate {

inline constexpr std::uint64_t unlimited_bytes = std::numeric_limits<std::uint64_t>::max();

// One direction of a transfer (source to destination); lives as long as that direction.
struct SpliceDirection {
  bool refused = false;  // the kernel said no once: copy from now on
  bool spliced = false;  // at least one chunk went through a pipe
};

// A borrowed callback, called after each chunk reaches the destination with
// its size (byte counts, idle deadlines). Trivially copyable, so it can be
// passed by value into a coroutine.
class OnMoved {
 public:
  OnMoved() = default;
  template <class F>
  explicit OnMoved(F& f)
      : context_(&f), call_([](void* c, std::size_t n) { (*static_cast<F*>(c))(n); }) {}
  void operator()(std::size_t n) const {
    if (call_) call_(context_, n);
  }

 private:
  void* context_ = nullptr;
  void (*call_)(void*, std::size_t) = nullptr;
};

struct MoveResult {
  std::uint64_t bytes = 0;  // that reached the destination
  error_code read_error;    // asio::error::eof when the source ended
  error_code write_error;
  // The source had nothing more a moment ago: it would block, or its last
  // read gave well under what was asked. Wait for readiness before reading
  // it again (false: the fair share or the limit was spent, more may be ready).
  bool source_drained = false;
  bool failed() const { return read_error || write_error; }
};

// Moves what `from` has ready to `to`, without waiting for `from`: returns
// when `from` would block or has just given well under what was asked (both
// source_drained), ends (read_error = eof), `limit` bytes have moved, a fair
// share has moved (so one busy stream does not starve the others on its
// thread), or on an error. Waits only for `to` to accept the bytes.
awaitable<MoveResult> move_available(Stream& from, Stream& to, SpliceDirection& direction,
                                     std::uint64_t limit, OnMoved on_moved);

// Moves exactly `length` bytes from `from` to `to` (an HTTP body of known
// length), waiting for them to arrive. A source that ends first gives
// read_error = eof. Cancelling either stream ends it with operation_aborted.
awaitable<MoveResult> move_exactly(Stream& from, Stream& to, std::uint64_t length,
                                   OnMoved on_moved);
// The same, when the first bytes of those `length` were already read from
// `from` (with an HTTP head): `already_read` is written first, and counts.
awaitable<MoveResult> move_exactly(Stream& from, Stream& to, std::uint64_t length,
                                   asio::const_buffer already_read, OnMoved on_moved);

namespace splice_testing {
// Pipes currently parked in this thread's pool (for tests).
std::size_t pooled_pipes();
}  // namespace splice_testing

}  // namespace vmgate
