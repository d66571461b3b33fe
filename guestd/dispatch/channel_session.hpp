// One channel connection from hostd, start to end (docs/architecture.md,
// "guestd"): read the preamble within its time and size limits, check the
// verb and the port allowlist, connect to the agent, answer, relay, log.
//
// A session is one coroutine and always ends: every step has a deadline,
// and the server may close it at shutdown through its SessionHandle. It logs
// exactly one `event=channel` line:
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

#include "common/asio.hpp"
#include "guestd/config/guestd_config.hpp"

namespace vmgate::guestd {

// What the server sees of a running session, to end it at shutdown. The
// session keeps it current; both run on the server's one executor.
struct SessionHandle {
  Stream* channel = nullptr;
  Stream* agent = nullptr;  // once connected
  bool relaying = false;    // answered 200, bytes flowing
  bool closing = false;     // close() was called

  // Ends the session promptly: closes both streams, so every pending
  // operation completes.
  void close();
};

// Where a session is registered for as long as it runs: the server, which
// closes it at shutdown and counts it against max_connections.
class SessionRegistry {
 public:
  virtual ~SessionRegistry() = default;
  virtual void add(std::uint64_t id, SessionHandle& handle) = 0;
  // `counted`: it counted against max_connections (a busy refusal did not).
  virtual void remove(std::uint64_t id, bool counted) = 0;
};

// Serves one channel connection to its end (answered, relayed, closed and
// logged), registered with `registry` meanwhile, which it keeps alive; or,
// when `busy`, answers "503 busy" without reading the preamble (the session
// limit is reached). Never throws for anything the peer or the agent does.
awaitable<void> serve_channel(Stream channel, std::shared_ptr<SessionRegistry> registry,
                              const GuestdConfig& config, std::uint64_t id, bool busy);

}  // namespace vmgate::guestd
