#include "hostd/listener/idle_connections.hpp"

namespace vmgate::hostd {

IdleConnections::Waiting::Waiting(IdleConnections& idle, Stream& socket) : idle_(idle) {
  std::lock_guard lock(idle_.mutex_);
  if (idle_.stopping_) return;
  entry_ = idle_.waiting_.insert(idle_.waiting_.end(), &socket);
  registered_ = true;
}

IdleConnections::Waiting::~Waiting() {
  if (!registered_) return;
  std::lock_guard lock(idle_.mutex_);
  idle_.waiting_.erase(entry_);
}

void IdleConnections::stop(const std::vector<asio::any_io_executor>& executors) {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  // A socket is closed by the thread that runs its connection: while that
  // thread runs this, its connections are not resuming, so an entry found
  // here is a socket still waiting (the others' entries are left alone).
  for (const auto& executor : executors) {
    asio::post(executor, [this, executor] {
      std::lock_guard lock(mutex_);
      for (Stream* socket : waiting_) {
        if (socket->get_executor() != executor) continue;
        error_code ignored;
        socket->close(ignored);
      }
    });
  }
}

}  // namespace vmgate::hostd
