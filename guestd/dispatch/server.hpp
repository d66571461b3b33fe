// guestd's channel listener: accepts connections from the host, refuses
// peers that are not allowed, and runs one ChannelSession per connection.
//
// Runs on a single-threaded executor (guestd needs no more): sessions and the
// server's bookkeeping share it, so nothing here locks.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "common/asio.hpp"
#include "guestd/config/guestd_config.hpp"

namespace vmgate::guestd {

class Server {
 public:
  Server(asio::any_io_executor executor, GuestdConfig config);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds the listener and starts accepting. The error names the step.
  error_code start();
  // The bound address as a URI (a tcp port 0 resolved).
  std::string local_uri() const;

  // Stops accepting. Sessions still setting up are closed now; relaying ones
  // may finish within `grace`, then they are closed too. Calling it again
  // (a second signal) with a shorter grace shortens it.
  void stop(std::chrono::milliseconds grace);
  // Called once, after stop(), when the listener and every session are gone.
  void on_stopped(std::function<void()> callback);

  std::size_t active_sessions() const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

}  // namespace vmgate::guestd
