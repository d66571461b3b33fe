// hostd's admin listener: one coroutine per connection on the daemon's
// io_context, answering the admin API (admin_api.hpp) over HTTP/1.1.
#pragma once

#include <atomic>
#include <string>

#include "common/asio.hpp"
#include "hostd/admin/admin_api.hpp"
#include "hostd/config/hostd_config.hpp"
#include "hostd/reload/running_config.hpp"

namespace vmgate::hostd {

class AdminServer {
 public:
  // `context`'s config and policy are replaced, for each request, by
  // `current`'s snapshot when one is given (SIGHUP reloads).
  AdminServer(asio::io_context& io, const AdminConfig& config, AdminContext context,
              const CurrentConfig* current = nullptr);
  // Binds and starts accepting; throws std::runtime_error naming the address.
  void start();
  void stop_accepting();
  // "tcp:127.0.0.1:9090" (port 0 resolved to the bound port).
  const std::string& bound_address() const { return bound_; }

 private:
  awaitable<void> accept_loop();
  awaitable<void> session(Stream stream);

  asio::io_context& io_;
  const AdminConfig& config_;
  AdminContext context_;
  const CurrentConfig* current_;
  Acceptor acceptor_;
  std::string bound_;
  std::atomic<unsigned> connections_{0};
};

}  // namespace vmgate::hostd
