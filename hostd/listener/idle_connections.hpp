// The client connections that wait, between requests, for the next one. On
// SIGTERM they are closed at once: nothing of theirs is in progress, and
// the stop need not wait its grace for them. A connection in the middle of
// a request is not here, and finishes it.
#pragma once

#include <list>
#include <memory>
#include <mutex>
#include <vector>

#include "common/asio.hpp"

namespace vmgate::hostd {

class IdleConnections {
 public:
  // Registered while it lives: `socket` waits for its next request on the
  // thread of its executor.
  class Waiting {
   public:
    Waiting(IdleConnections& idle, Stream& socket);
    Waiting(const Waiting&) = delete;
    Waiting& operator=(const Waiting&) = delete;
    ~Waiting();
    // False once the stop began: the connection should close instead of waiting.
    bool registered() const { return registered_; }

   private:
    IdleConnections& idle_;
    std::list<Stream*>::iterator entry_;
    bool registered_ = false;
  };

  // From now on no connection waits; those waiting now are closed, each on
  // its own thread (one of `executors`), where nothing else touches its socket.
  void stop(const std::vector<asio::any_io_executor>& executors);

 private:
  std::mutex mutex_;
  bool stopping_ = false;
  std::list<Stream*> waiting_;
};

}  // namespace vmgate::hostd
