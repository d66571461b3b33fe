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
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "common/asio.hpp"
#include "guestd/config/guestd_config.hpp"

namespace vmgate::guestd {

class ChannelSession : public std::enable_shared_from_this<ChannelSession> {
 public:
  ChannelSession(Stream channel, std::shared_ptr<const GuestdConfig> config, std::uint64_t id);
  ChannelSession(const ChannelSession&) = delete;
  ChannelSession& operator=(const ChannelSession&) = delete;

  // Serves the connection: reads the preamble, answers, and either ends the
  // session (closed and logged) or hands the relay off and returns at once;
  // the relay then ends the session on its own. Either way on_end's callback
  // learns when it is over. Owned by a shared_ptr while it runs.
  awaitable<void> run();
  // Called once when the session is over, after run() or its relay.
  void on_end(std::function<void()> callback) { on_end_ = std::move(callback); }
  // For the caller when run() or refuse_busy() returned (or failed) without
  // handing off a relay: runs the on_end callback.
  void ended_without_relay() {
    if (!relaying_) notify_end();
  }
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
  void end(Outcome& outcome);
  void log_end(const Outcome& outcome) const;
  void notify_end() {
    if (auto callback = std::move(on_end_)) callback();
  }

  Stream channel_;
  std::optional<Stream> agent_;
  std::shared_ptr<const GuestdConfig> config_;
  std::uint64_t id_;
  std::function<void()> on_end_;
  bool relaying_ = false;
  bool closing_ = false;
};

}  // namespace vmgate::guestd
