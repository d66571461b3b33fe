// guestd's way out for the guest's own apps: a loopback-only HTTP proxy
// ([outbound] listen, off by default). Each request an app sends it goes to
// hostd over a channel of its own (host_channel.hpp), `SEND target`:
//
//   curl -x http://127.0.0.1:5580 http://monitor.host/report    → host:monitor
//   curl -x http://127.0.0.1:5580 http://web2:8080/status       → vm web2, port 8080
//   CONNECT monitor.host:443 / CONNECT web2:5986                → a tunnel, raw bytes
//
// A name under [outbound] host_suffix (".host") is a host-side service,
// anything else a VM; hostd decides whether this VM may reach it. A refusal
// comes back to the app as an HTTP error whose body says hostd's reason.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "common/asio.hpp"
#include "guestd/config/guestd_config.hpp"

namespace vmgate::guestd {

// The SEND target an app's authority host names ("monitor.host" → "host:monitor").
std::string send_target(const OutboundConfig& config, std::string_view host);

class OutboundProxy {
 public:
  OutboundProxy(asio::any_io_executor executor, GuestdConfig config);
  ~OutboundProxy();
  OutboundProxy(const OutboundProxy&) = delete;
  OutboundProxy& operator=(const OutboundProxy&) = delete;

  // Binds [outbound] listen and accepts.
  error_code start();
  std::string local_uri() const;
  // Stops accepting; the apps' connections get `grace` to finish (0: closed now).
  void stop(std::chrono::milliseconds grace);

 private:
  struct State;
  std::shared_ptr<State> state_;
};

}  // namespace vmgate::guestd
