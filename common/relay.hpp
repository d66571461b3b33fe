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
// An idle relay is two pending readiness waits, a timer and a small shared
// state: no coroutine frame, buffer or pipe. A coroutine runs only while
// bytes move, so a host keeps tens of thousands of idle tunnels open.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>

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
};

using RelayCallback = std::function<void(const RelayResult&)>;
// Relays until both directions have ended (EOF both ways), an error, or
// `idle` passes without a byte moving; does not close the streams. Started and
// left to run: `done` is called once, on the streams' executor, when it has
// ended. Nothing waits on it meanwhile, so the caller's coroutine frames can
// be gone; `a` and `b` must live until `done`. Call it on the streams'
// executor, which must be single-threaded (or a strand).
void start_relay(Stream& a, Stream& b, std::chrono::milliseconds idle, RelayCallback done);

}  // namespace vmgate
