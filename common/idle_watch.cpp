#include "common/idle_watch.hpp"

#include <optional>
#include <vector>

namespace vmgate {

// One per io_context (an Asio service): the lists of watches, one per idle
// duration in use, and the timer for the earliest of their first watches.
class IdleClock : public asio::execution_context::service {
 public:
  using clock = IdleWatch::clock;
  static inline asio::execution_context::id id;

  explicit IdleClock(asio::execution_context& context) : service(context) {}

  // The clock of `executor`'s context, made with its first watch.
  static IdleClock& of(const asio::any_io_executor& executor) {
    asio::execution_context& context = asio::query(executor, asio::execution::context);
    if (!asio::has_service<IdleClock>(context)) {
      // The timer service first: a context shuts its services down newest
      // first, so this clock's timer ends (shutdown()) while its service is
      // still running.
      const asio::steady_timer first(executor);
    }
    IdleClock& idle_clock = asio::use_service<IdleClock>(context);
    if (!idle_clock.timer_) idle_clock.timer_.emplace(executor);
    return idle_clock;
  }

  void watch(IdleWatch& w, std::chrono::milliseconds idle) {
    w.line_ = line_for(idle);
    w.last_ = clock::now();
    append(w);
    if (stopped_) return;
    const clock::time_point expiry = w.last_ + idle;
    if (!waiting_) {
      arm(expiry);
    } else if (expiry < timer_->expiry()) {
      // Wakes the pending wait (operation_aborted), which arms again at the
      // earliest expiry.
      timer_->expires_at(expiry);
    }
  }

  void touch(IdleWatch& w) {
    w.last_ = clock::now();
    if (lines_[w.line_].last == &w) return;
    unlink(w);
    append(w);
  }

  void unwatch(IdleWatch& w) {
    unlink(w);
    // Nothing left to watch: a pending wait would keep the io_context's
    // run() from returning (a daemon that stops, waiting for its last
    // connections, would wait out the idle timeout of one already gone).
    if (watched_ == 0 && waiting_ && timer_) timer_->cancel();
  }

 private:
  // The watches of one idle duration, the least recently moved first.
  struct Line {
    std::chrono::milliseconds idle;
    IdleWatch* first = nullptr;
    IdleWatch* last = nullptr;
  };

  void shutdown() override {
    stopped_ = true;
    waiting_ = false;
    timer_.reset();
  }

  std::uint32_t line_for(std::chrono::milliseconds idle) {
    for (std::uint32_t i = 0; i < lines_.size(); ++i)
      if (lines_[i].idle == idle) return i;
    lines_.push_back(Line{idle});
    return static_cast<std::uint32_t>(lines_.size() - 1);
  }

  void append(IdleWatch& w) {
    Line& line = lines_[w.line_];
    w.prev_ = line.last;
    w.next_ = nullptr;
    (line.last ? line.last->next_ : line.first) = &w;
    line.last = &w;
    w.watched_ = true;
    ++watched_;
  }

  void unlink(IdleWatch& w) {
    if (!w.watched_) return;
    Line& line = lines_[w.line_];
    (w.prev_ ? w.prev_->next_ : line.first) = w.next_;
    (w.next_ ? w.next_->prev_ : line.last) = w.prev_;
    w.prev_ = w.next_ = nullptr;
    w.watched_ = false;
    --watched_;
  }

  std::optional<clock::time_point> earliest() const {
    std::optional<clock::time_point> soonest;
    for (const Line& line : lines_) {
      if (line.first == nullptr) continue;
      const clock::time_point expiry = line.first->last_ + line.idle;
      if (!soonest || expiry < *soonest) soonest = expiry;
    }
    return soonest;
  }

  void arm(clock::time_point expiry) {
    waiting_ = true;
    timer_->expires_at(expiry);
    timer_->async_wait([this](error_code) { fired(); });
  }

  // Ends every watch whose time has passed, then waits for the next.
  void fired() {
    waiting_ = false;
    if (stopped_) return;
    const clock::time_point now = clock::now();
    for (Line& line : lines_) {
      while (line.first != nullptr && line.first->last_ + line.idle <= now) {
        IdleWatch& expired = *line.first;
        unlink(expired);
        // It may end its owner, and so itself, later; never touched again here.
        expired.on_idle();
      }
    }
    if (auto next = earliest()) arm(*next);
  }

  std::vector<Line> lines_;
  std::size_t watched_ = 0;  // in all lines
  std::optional<asio::steady_timer> timer_;
  bool waiting_ = false;
  bool stopped_ = false;
};

IdleWatch::IdleWatch(const asio::any_io_executor& executor, std::chrono::milliseconds idle)
    : clock_(&IdleClock::of(executor)) {
  clock_->watch(*this, idle);
}

IdleWatch::~IdleWatch() {
  clock_->unwatch(*this);
}

void IdleWatch::touch() {
  if (watched_) clock_->touch(*this);
}

void IdleWatch::stop() {
  clock_->unwatch(*this);
}

}  // namespace vmgate
