// One channel connection from hostd, start to end (DESIGN.md, "The channel
// preamble"): read the preamble within its time and size limits, check the
// verb and the port allowlist, connect to the agent, answer, relay, log.
//
// A session always ends: every step has a deadline, and the server may
// close() it at shutdown. It logs exactly one `event=channel` line:
//   req       the Request-Id field ("-" when absent or never read)
//   peer      the channel peer ("vsock:2:1034", "unix")
//   port      the CONNECT port (0 when never read)
//   status    the answer sent (200, 400, ...), 0 when none was sent
//   reason    the answer's reason, or why the session ended without one
//             (preamble-timeout, peer-closed) or after a 200 (closed,
//             idle-timeout, relay-error, shutdown)
//   bytes_in  bytes from the channel to the agent (after the preamble)
//   bytes_out bytes from the agent to the channel (after the answer)
//   relay_in, relay_out  how the bytes moved: splice (inside the kernel) or copy
//   ms        session duration
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "common/asio.hpp"
#include "guestd/config/guestd_config.hpp"

namespace vmgate::guestd {

class ChannelSession {
 public:
  ChannelSession(Stream channel, std::shared_ptr<const GuestdConfig> config, std::uint64_t id);
  ChannelSession(const ChannelSession&) = delete;
  ChannelSession& operator=(const ChannelSession&) = delete;

  // Serves the connection to its end, closes it and logs it.
  awaitable<void> run();
  // Answers "503 busy" without reading the preamble, closes and logs: the
  // session limit is reached.
  awaitable<void> refuse_busy();

  // Ends the session promptly (shutdown): closes both streams, so every
  // pending operation completes.
  void close();
  // Whether the session has answered 200 and is relaying.
  bool relaying() const { return relaying_; }
  std::uint64_t id() const { return id_; }

 private:
  struct Outcome;
  // Everything up to the relay; true when the session is to relay.
  awaitable<bool> serve(Outcome& outcome);
  awaitable<void> refuse(Outcome& outcome, int status, std::string_view reason);
  void log_end(const Outcome& outcome) const;

  Stream channel_;
  std::optional<Stream> agent_;
  std::shared_ptr<const GuestdConfig> config_;
  std::uint64_t id_;
  bool relaying_ = false;
  bool closing_ = false;
};

}  // namespace vmgate::guestd
