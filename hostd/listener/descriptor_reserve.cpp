#include "hostd/listener/descriptor_reserve.hpp"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>

#include "common/log.hpp"

namespace vmgate::hostd {

namespace {

// At most one line this often while descriptors stay exhausted.
constexpr std::chrono::seconds exhaustion_log_interval{10};

struct ExhaustionLog {
  std::atomic<bool> exhausted{false};
  std::atomic<std::int64_t> last_line_ns{0};
  std::atomic<unsigned long long> refused{0};  // since the last line
  // Reserves whose number another accept took: while any is, an accept that
  // succeeds got a number freed for a moment, not a free one.
  std::atomic<int> lost{0};
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

}  // namespace

DescriptorReserve::DescriptorReserve() {
  take();
}

DescriptorReserve::~DescriptorReserve() {
  if (fd_ >= 0) ::close(fd_);
  if (lost_) --exhaustion_log().lost;
}

void DescriptorReserve::take() {
  if (fd_ >= 0) return;
  fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if ((fd_ >= 0) == lost_) {
    lost_ = fd_ < 0;
    exhaustion_log().lost += lost_ ? 1 : -1;
  }
}

bool DescriptorReserve::exhausted(const error_code& ec) {
  return ec == asio::error::no_descriptors ||
         ec == error_code(ENFILE, asio::error::get_system_category());
}

bool DescriptorReserve::refuse_one(Acceptor& acceptor) {
  if (fd_ < 0) {
    take();  // freed since: next time
    return false;
  }
  ::close(fd_);
  fd_ = -1;
  // Non-blocking: another thread's acceptor may have taken the connection.
  const int client = ::accept4(acceptor.native_handle(), nullptr, nullptr, SOCK_CLOEXEC);
  const bool refused = client >= 0;
  if (refused) ::close(client);
  take();
  return refused;
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
  if (held()) return false;
  take();
  if (held()) return false;
  error_code ignored;
  socket.close(ignored);
  take();
  ++exhaustion_log().refused;
  return true;
}

bool DescriptorReserve::refuse_at_limit(const error_code& ec, Acceptor& acceptor,
                                        std::string_view listener) {
  if (!exhausted(ec)) return false;
  const bool refused = refuse_one(acceptor);
  note_descriptor_exhaustion(listener, refused);
  return refused;
}

void DescriptorReserve::accepted() {
  ExhaustionLog& log = exhaustion_log();
  if (!log.exhausted.load(std::memory_order_relaxed)) return;
  if (log.lost.load() > 0) return;
  // This connection may hold the very number a refusing acceptor freed a
  // moment ago, with the process still at its limit: free only if one more
  // number is. (Only while exhausted: never on the way of a normal accept.)
  const int probe = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (probe < 0) return;
  ::close(probe);
  if (!log.exhausted.exchange(false)) return;
  log::info("descriptors_available").kv("refused", log.refused.exchange(0));
}

}  // namespace vmgate::hostd
