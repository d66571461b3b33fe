// The host end of the channels guests start ([inbound] in hostd's config):
// the vsock listener, where the kernel's peer CID names the calling VM, and
// the unix sockets made one per VM (a stand-in template, or hybrid vsock's
// UDS_PATH_PORT), created and removed as the directory's VMs come and go,
// where the socket names it. Each connection is served by serve_guest().
//
// Everything runs on one executor: guest-started traffic is management
// traffic (reports, registrations), not the data plane's volume.
#pragma once

#include <memory>

#include "common/asio.hpp"
#include "hostd/directory/directory.hpp"
#include "hostd/guestside/guest_session.hpp"

namespace vmgate::hostd {

class GuestListeners {
 public:
  // `inbound` is the first snapshot's: what it binds changes only on restart.
  GuestListeners(asio::any_io_executor executor, Directory& directory, GuestServices services,
                 const InboundConfig& inbound);
  ~GuestListeners();
  GuestListeners(const GuestListeners&) = delete;
  GuestListeners& operator=(const GuestListeners&) = delete;

  // Binds the vsock listener (the error says which address failed) and
  // makes the per-VM sockets of the VMs the directory holds; later ones
  // follow its changes.
  error_code start();
  // Stops accepting and removes the per-VM socket files; connections in
  // progress go on (hostd's stop waits for them within limits.stop_grace).
  void stop();
  // Guest connections not yet ended. Read on the listeners' executor.
  std::uint32_t open_connections() const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

}  // namespace vmgate::hostd
