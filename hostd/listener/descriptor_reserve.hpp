// What an acceptor does at the process's descriptor limit (EMFILE, or the
// system's, ENFILE).
//
// accept(2) failing with EMFILE leaves the connection in the listen queue, so
// the listening socket stays readable: retrying at once spins a core, and
// only pausing leaves every queued client hanging until descriptors free up.
// Instead the process keeps descriptors in reserve (/dev/null), one per
// acceptor, in one pool: at the limit an acceptor gives one back, accepts the
// waiting connection and closes it at once, and takes the reserve again. The
// client is refused promptly (a reset, since no HTTP can be spoken without a
// descriptor to speak it on), the queue drains, and the acceptor waits for
// readiness as usual — no spin. The freed number can be taken by another
// thread's accept in between: then the pool is short, and the next accept
// that finds no descriptor free either gives its own number to the pool;
// with the pool empty an acceptor pauses instead (accept_pause), which bounds
// the loop just the same. Accepting resumes by itself once descriptors are
// free again, and the pool is refilled by whichever acceptor accepts first.
#pragma once

#include <chrono>
#include <string_view>

#include "common/asio.hpp"

namespace vmgate::hostd {

// How long an acceptor waits after an accept error it could not handle
// otherwise (a transient network error, or no reserve to refuse with).
inline constexpr std::chrono::milliseconds accept_pause{100};

// One acceptor's place in the process's reserve: while it exists the pool
// keeps one descriptor more.
class DescriptorReserve {
 public:
  DescriptorReserve();
  ~DescriptorReserve();
  DescriptorReserve(const DescriptorReserve&) = delete;
  DescriptorReserve& operator=(const DescriptorReserve&) = delete;

  // Whether `ec` from accept means the process (or system) is out of descriptors.
  static bool exhausted(const error_code& ec);
  // After accept failed with `ec` on `listener`'s `acceptor`: at the
  // descriptor limit, accepts one queued connection on a reserve's
  // descriptor and closes it. True when it did: the acceptor may accept
  // again at once. False for any other error, or when there was no reserve
  // or nothing to accept: the caller pauses.
  //
  // Logged once for the process (the limit is the process's) when it
  // starts, then at most once every 10 s while it lasts, with the count
  // refused meanwhile.
  bool refuse_at_limit(const error_code& ec, Acceptor& acceptor, std::string_view listener);
  // After an accept of `socket` that succeeded: with the pool short (a
  // reserve's number was taken by another thread's accept while it refused a
  // client) and still no descriptor free, `socket` is closed and its number
  // taken as a reserve; the client is refused like the others. Without this,
  // an emptied pool could refuse no more, and clients would wait in the
  // queue. True when it refused.
  bool reclaim(Stream& socket);
  // After an accept that succeeded: refills the pool and, once it is full
  // and one more descriptor is free, logs once that descriptors are free again.
  static void accepted();
  // Whether acceptors are refusing at the descriptor limit: from the line
  // that says it started until the one that says descriptors are free again.
  static bool limit_reached();
};

}  // namespace vmgate::hostd
