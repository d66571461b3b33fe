// hostd's listeners: accept loops that hand each client connection to its
// own session coroutine on its own strand.
#pragma once

#include <atomic>
#include <memory>
#include <vector>

#include "common/asio.hpp"
#include "hostd/channel/channel_pool.hpp"
#include "hostd/config/hostd_config.hpp"
#include "hostd/directory/directory.hpp"
#include "hostd/metrics/hostd_metrics.hpp"

namespace vmgate::hostd {

class Server {
 public:
  // Listeners accept on `io`; each client connection then runs on the next of
  // `session_executors` in turn (each an io_context run by one thread), or on
  // `io` when the list is empty.
  Server(asio::io_context& io, const HostdConfig& config, Directory& directory,
         HostdMetrics* metrics = nullptr, ChannelPool* pool = nullptr,
         std::vector<asio::any_io_executor> session_executors = {});
  ~Server();
  // Binds every listener; throws std::runtime_error naming the listener on failure.
  void start();
  // Stops accepting; sessions in progress continue until they end.
  void stop_accepting();
  // "tcp:127.0.0.1:41234" for each listener, in config order (resolves port 0).
  std::vector<std::string> bound_addresses() const;

 private:
  struct Listener;
  awaitable<void> accept_loop(Listener& listener);

  asio::io_context& io_;
  const HostdConfig& config_;
  Directory& directory_;
  HostdMetrics* metrics_;
  ChannelPool* pool_;
  std::vector<asio::any_io_executor> session_executors_;
  std::size_t next_executor_ = 0;  // only the accept loops, all on io_, touch it
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::atomic<std::uint32_t> connections_{0};
};

}  // namespace vmgate::hostd
