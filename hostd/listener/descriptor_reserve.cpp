#include "hostd/listener/descriptor_reserve.hpp"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <vector>

#include "common/log.hpp"

namespace vmgate::hostd {

namespace {

// At most one line this often while descriptors stay exhausted.
constexpr std::chrono::seconds exhaustion_log_interval{10};

struct ExhaustionLog {
  std::atomic<bool> exhausted{false};
  std::atomic<std::int64_t> last_line_ns{0};
  std::atomic<unsigned long long> refused{0};  // since the last line
};

ExhaustionLog& exhaustion_log() {
  static ExhaustionLog log;
  return log;
}

unsigned long long descriptor_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
  return static_cast<unsigned long long>(limit.rlim_cur);
}

// The reserves of all acceptors. A reserve whose number another thread's
// accept took is missing from the pool, not from one acceptor: any accept
// can put it back, so the pool cannot stay short after descriptors free up
// just because the acceptor that lost it gets no more connections.
class ReservePool {
 public:
  void add_place() {
    std::lock_guard lock(mutex_);
    ++wanted_;
    refill();
  }
  void remove_place() {
    std::lock_guard lock(mutex_);
    --wanted_;
    while (fds_.size() > wanted_) {
      ::close(fds_.back());
      fds_.pop_back();
    }
    refill();
  }
  // The check on the way of every accept: no lock.
  bool short_of_reserves() const { return short_.load(std::memory_order_relaxed); }
  // Gives one reserve's number to `acceptor`'s next queued connection and
  // closes that at once; whether there was one to close. The lock keeps two
  // refusing acceptors from taking each other's freed numbers; a plain
  // accept on another thread still can (then the pool is short).
  bool refuse_one(Acceptor& acceptor) {
    std::lock_guard lock(mutex_);
    if (fds_.empty() && !take_one()) return false;
    ::close(fds_.back());
    fds_.pop_back();
    // Non-blocking: another thread's acceptor may have taken the connection.
    const int client = ::accept4(acceptor.native_handle(), nullptr, nullptr, SOCK_CLOEXEC);
    if (client >= 0) ::close(client);
    refill();
    return client >= 0;
  }
  // With the pool short and no descriptor free, `socket`'s number becomes a
  // reserve; whether it did.
  bool reclaim(Stream& socket) {
    std::lock_guard lock(mutex_);
    if (refill()) return false;
    error_code ignored;
    socket.close(ignored);
    refill();
    return true;
  }

 private:
  bool take_one() {
    const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    fds_.push_back(fd);
    return true;
  }
  // Opens reserves up to one per acceptor; whether the pool is full.
  bool refill() {
    while (fds_.size() < wanted_ && take_one()) {
    }
    const bool full = fds_.size() >= wanted_;
    short_.store(!full, std::memory_order_relaxed);
    return full;
  }

  std::mutex mutex_;
  std::vector<int> fds_;
  std::size_t wanted_ = 0;
  std::atomic<bool> short_{false};
};

ReservePool& reserve_pool() {
  static ReservePool pool;
  return pool;
}

}  // namespace

DescriptorReserve::DescriptorReserve() {
  reserve_pool().add_place();
}

DescriptorReserve::~DescriptorReserve() {
  reserve_pool().remove_place();
}

bool DescriptorReserve::exhausted(const error_code& ec) {
  return ec == asio::error::no_descriptors ||
         ec == error_code(ENFILE, asio::error::get_system_category());
}

namespace {

void note_descriptor_exhaustion(std::string_view listener, bool refused) {
  ExhaustionLog& log = exhaustion_log();
  if (refused) ++log.refused;
  const auto now = std::chrono::steady_clock::now().time_since_epoch();
  const std::int64_t now_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(now).count();
  std::int64_t last = log.last_line_ns.load();
  const bool starts = !log.exhausted.exchange(true);
  const std::int64_t interval_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(exhaustion_log_interval).count();
  if (!starts && now_ns - last < interval_ns) return;
  // One line per turn, whatever the threads: the acceptor that wins the
  // exchange writes it. One that starts the exhaustion and loses has been
  // beaten by a line written this very moment.
  if (!log.last_line_ns.compare_exchange_strong(last, now_ns)) return;
  log::warn("descriptors_exhausted")
      .kv("listener", listener)
      .kv("limit", descriptor_limit())
      .kv("refused", log.refused.exchange(0))
      .kv("action", "new connections are closed at accept until descriptors free up");
}

}  // namespace

bool DescriptorReserve::reclaim(Stream& socket) {
  ReservePool& pool = reserve_pool();
  if (!pool.short_of_reserves() || !pool.reclaim(socket)) return false;
  ++exhaustion_log().refused;
  return true;
}

bool DescriptorReserve::refuse_at_limit(const error_code& ec, Acceptor& acceptor,
                                        std::string_view listener) {
  if (!exhausted(ec)) return false;
  const bool refused = reserve_pool().refuse_one(acceptor);
  note_descriptor_exhaustion(listener, refused);
  return refused;
}

void DescriptorReserve::accepted() {
  ExhaustionLog& log = exhaustion_log();
  if (!log.exhausted.load(std::memory_order_relaxed)) return;
  if (reserve_pool().short_of_reserves()) return;
  // This connection may hold the very number a refusing acceptor freed a
  // moment ago, with the process still at its limit: free only if one more
  // number is. (Only while exhausted: never on the way of a normal accept.)
  const int probe = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (probe < 0) return;
  ::close(probe);
  if (!log.exhausted.exchange(false)) return;
  log::info("descriptors_available").kv("refused", log.refused.exchange(0));
}

bool DescriptorReserve::limit_reached() {
  return exhaustion_log().exhausted.load();
}

}  // namespace vmgate::hostd
