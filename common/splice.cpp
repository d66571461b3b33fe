#include "common/splice.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <vector>

namespace vmgate {
namespace {

// Bigger than the default 64 KiB pipe: fewer splice calls per byte on a bulk
// transfer. The kernel charges pipe pages to the user whether used or not,
// which the pool bounds (pipes exist only for streams moving bytes now).
constexpr int wanted_pipe_bytes = 256 * 1024;
// Pipes one thread keeps for reuse; beyond that an idle pipe is closed.
constexpr std::size_t pool_limit = 16;
// The copy path's buffer, allocated for one call and freed on return.
constexpr std::size_t copy_buffer_bytes = 64 * 1024;
// What one call moves before returning to let the thread serve other streams.
constexpr std::uint64_t fair_share_bytes = 1024 * 1024;

// What the kernel answers when it cannot splice this pair (a socket type
// without splice support, a destination opened O_APPEND, no splice at all).
bool refusal(int err) {
  return err == EINVAL || err == ENOSYS || err == EOPNOTSUPP || err == ENOTSUP;
}

error_code errno_code(int err) {
  return error_code(err, boost::system::system_category());
}

struct Pipe {
  int read_end = -1;
  int write_end = -1;
  std::size_t capacity = 0;
  explicit operator bool() const { return read_end >= 0; }
};

void close_pipe(Pipe& p) {
  if (p.read_end >= 0) ::close(p.read_end);
  if (p.write_end >= 0) ::close(p.write_end);
  p = Pipe{};
}

class PipePool {
 public:
  ~PipePool() {
    for (auto& p : free_)
      close_pipe(p);
  }
  // An empty pipe; none when the process is out of descriptors (the caller copies).
  Pipe acquire() {
    if (!free_.empty()) {
      Pipe p = free_.back();
      free_.pop_back();
      return p;
    }
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) return {};
    Pipe p{fds[0], fds[1], 0};
    // Best effort: over the user's pipe quota the kernel keeps the default.
    ::fcntl(p.write_end, F_SETPIPE_SZ, wanted_pipe_bytes);
    int size = ::fcntl(p.write_end, F_GETPIPE_SZ);
    p.capacity = size > 0 ? static_cast<std::size_t>(size) : 64 * 1024;
    return p;
  }
  // Only empty pipes come back: bytes left in one would leak into the next stream.
  void release(Pipe& p, bool empty) {
    if (!p) return;
    if (empty && free_.size() < pool_limit) {
      free_.push_back(p);
      p = Pipe{};
    } else {
      close_pipe(p);
    }
  }
  std::size_t size() const { return free_.size(); }

 private:
  std::vector<Pipe> free_;
};

// Per thread, so taking and returning a pipe needs no lock; a coroutine that
// resumes on another thread simply returns it to that thread's pool.
PipePool& pool() {
  thread_local PipePool instance;
  return instance;
}

// Holds a pipe for one call; what is left in it when the call ends is dropped with it.
struct PipeLease {
  Pipe pipe;
  std::size_t buffered = 0;
  PipeLease() : pipe(pool().acquire()) {}
  ~PipeLease() { pool().release(pipe, buffered == 0); }
  PipeLease(const PipeLease&) = delete;
  PipeLease& operator=(const PipeLease&) = delete;
};

// A read that returned well under what was asked found the socket's queue
// about empty: reading again at once would almost always fail with EAGAIN,
// a syscall per message for nothing (a WS-Man request and its response pass
// guestd as two messages: it made 6 splice calls per request where 4 move
// the bytes, strace). The caller waits for readiness instead, which reports
// at once if more came meanwhile. Only "well under": a bulk transfer's read
// can stop short of the ask when the pipe's slots fill, and must go on
// without a wait.
bool read_was_short(std::size_t got, std::size_t asked) {
  return got < asked / 2;
}

// Sockets must be non-blocking at the file level: splice(2) consults the
// socket's O_NONBLOCK, not SPLICE_F_NONBLOCK (which only concerns the pipe).
error_code make_non_blocking(Stream& s) {
  error_code ec;
  if (!s.native_non_blocking()) s.native_non_blocking(true, ec);
  return ec;
}

awaitable<error_code> write_all(Stream& to, const char* data, std::size_t size) {
  auto [ec, n] = co_await asio::async_write(to, asio::buffer(data, size), use_tuple);
  co_return ec;
}

}  // namespace

awaitable<MoveResult> move_available(Stream& from, Stream& to, SpliceDirection& direction,
                                     std::uint64_t limit, OnMoved on_moved) {
  MoveResult result;
  const std::uint64_t budget = std::min(limit, fair_share_bytes);
  if (auto ec = make_non_blocking(from)) {
    result.read_error = ec;
    co_return result;
  }
  if (auto ec = make_non_blocking(to)) {
    result.write_error = ec;
    co_return result;
  }
  std::unique_ptr<char[]> buffer;  // the copy path's, for this call only

  if (!direction.refused) {
    PipeLease lease;
    while (lease.pipe && result.bytes < budget) {
      const std::size_t want = static_cast<std::size_t>(
          std::min<std::uint64_t>(lease.pipe.capacity, budget - result.bytes));
      ssize_t in = ::splice(from.native_handle(), nullptr, lease.pipe.write_end, nullptr, want,
                            SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (in == 0) {
        result.read_error = asio::error::eof;
        co_return result;
      }
      if (in < 0) {
        const int err = errno;
        if (err == EINTR) continue;
        // The pipe is always drained before the next read, so EAGAIN is the socket's.
        if (err == EAGAIN || err == EWOULDBLOCK) {
          result.source_drained = true;
          co_return result;
        }
        if (refusal(err)) {
          direction.refused = true;
          break;
        }
        result.read_error = errno_code(err);
        co_return result;
      }
      lease.buffered = static_cast<std::size_t>(in);
      while (lease.buffered > 0) {
        ssize_t out = ::splice(lease.pipe.read_end, nullptr, to.native_handle(), nullptr,
                               lease.buffered, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (out > 0) {
          lease.buffered -= static_cast<std::size_t>(out);
          result.bytes += static_cast<std::size_t>(out);
          direction.spliced = true;
          on_moved(static_cast<std::size_t>(out));
          continue;
        }
        const int err = out < 0 ? errno : EPIPE;
        if (err == EINTR) continue;
        if (err == EAGAIN || err == EWOULDBLOCK) {
          auto [wait_ec] = co_await to.async_wait(Stream::wait_write, use_tuple);
          if (wait_ec) {
            result.write_error = wait_ec;
            co_return result;
          }
          continue;
        }
        if (!refusal(err)) {
          result.write_error = errno_code(err);
          co_return result;
        }
        // The destination refuses splice with bytes already in the pipe:
        // they leave through userspace, then this direction copies.
        direction.refused = true;
        buffer = std::make_unique_for_overwrite<char[]>(copy_buffer_bytes);
        while (lease.buffered > 0) {
          ssize_t got = ::read(lease.pipe.read_end, buffer.get(),
                               std::min(lease.buffered, copy_buffer_bytes));
          if (got <= 0) {
            if (got < 0 && errno == EINTR) continue;
            result.write_error = errno_code(got < 0 ? errno : EIO);
            co_return result;
          }
          lease.buffered -= static_cast<std::size_t>(got);
          if (auto ec = co_await write_all(to, buffer.get(), static_cast<std::size_t>(got))) {
            result.write_error = ec;
            co_return result;
          }
          result.bytes += static_cast<std::size_t>(got);
          on_moved(static_cast<std::size_t>(got));
        }
      }
      if (direction.refused) break;
      if (read_was_short(static_cast<std::size_t>(in), want)) {
        result.source_drained = true;
        co_return result;
      }
    }
    if (!direction.refused && lease.pipe) co_return result;  // the budget is spent
  }

  // Copy path: splice refused, or no pipe to be had (out of descriptors).
  if (!buffer) buffer = std::make_unique_for_overwrite<char[]>(copy_buffer_bytes);
  while (result.bytes < budget) {
    const std::size_t want =
        static_cast<std::size_t>(std::min<std::uint64_t>(copy_buffer_bytes, budget - result.bytes));
    ssize_t got = ::recv(from.native_handle(), buffer.get(), want, MSG_DONTWAIT);
    if (got == 0) {
      result.read_error = asio::error::eof;
      break;
    }
    if (got < 0) {
      const int err = errno;
      if (err == EINTR) continue;
      if (err != EAGAIN && err != EWOULDBLOCK) result.read_error = errno_code(err);
      result.source_drained = true;
      break;
    }
    if (auto ec = co_await write_all(to, buffer.get(), static_cast<std::size_t>(got))) {
      result.write_error = ec;
      break;
    }
    result.bytes += static_cast<std::size_t>(got);
    on_moved(static_cast<std::size_t>(got));
    if (read_was_short(static_cast<std::size_t>(got), want)) {
      result.source_drained = true;
      break;
    }
  }
  co_return result;
}

awaitable<MoveResult> move_exactly(Stream& from, Stream& to, std::uint64_t length,
                                   OnMoved on_moved) {
  SpliceDirection direction;
  MoveResult total;
  while (total.bytes < length) {
    MoveResult step = co_await move_available(from, to, direction, length - total.bytes, on_moved);
    total.bytes += step.bytes;
    total.read_error = step.read_error;
    total.write_error = step.write_error;
    if (step.failed() || total.bytes >= length) break;
    if (!step.source_drained) continue;  // the fair share was spent, more may be ready
    auto [ec] = co_await from.async_wait(Stream::wait_read, use_tuple);
    if (ec) {
      total.read_error = ec;
      break;
    }
  }
  co_return total;
}

awaitable<MoveResult> move_exactly(Stream& from, Stream& to, std::uint64_t length,
                                   asio::const_buffer already_read, OnMoved on_moved) {
  MoveResult total;
  if (already_read.size() > length) already_read = asio::const_buffer(already_read.data(), length);
  if (already_read.size() > 0) {
    auto [ec, n] = co_await asio::async_write(to, already_read, use_tuple);
    total.bytes = n;
    if (n > 0) on_moved(n);
    if (ec) {
      total.write_error = ec;
      co_return total;
    }
  }
  if (total.bytes == length) co_return total;
  MoveResult rest = co_await move_exactly(from, to, length - total.bytes, on_moved);
  rest.bytes += total.bytes;
  co_return rest;
}

namespace splice_testing {
std::size_t pooled_pipes() {
  return pool().size();
}
}  // namespace splice_testing

}  // namespace vmgate
