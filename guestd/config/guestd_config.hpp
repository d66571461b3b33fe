// guestd's configuration: every limit and timeout a named field with its
// default here, in one place. guestd/guestd.toml documents each key.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>

#include "common/transport.hpp"

namespace vmgate::guestd {

inline constexpr std::uint32_t default_channel_port = 5500;
inline constexpr std::uint32_t vsock_host_cid = 2;  // VMADDR_CID_HOST
inline constexpr const char* default_config_path = "/etc/vmgate/guestd.toml";
// Connecting to a unix socket needs write permission on its file (unix(7)):
// by default only guestd's own user may.
inline constexpr std::uint32_t default_socket_mode = 0600;

struct LimitsConfig {
  std::chrono::milliseconds preamble_timeout{5'000};       // preamble must arrive within
  std::chrono::milliseconds agent_connect_timeout{3'000};  // → 504 agent-timeout
  std::chrono::milliseconds idle_timeout{300'000};         // relay closes when nothing moves
  std::chrono::milliseconds shutdown_grace{5'000};         // relays may finish after SIGTERM
  std::uint32_t max_connections = 1024;  // concurrent sessions; above → 503 busy
};

inline constexpr std::uint32_t default_hostd_inbound_port = 5501;

// The way out for guest apps (guestd/outbound): a loopback HTTP proxy whose
// requests go to hostd over a channel of their own, `SEND target`.
struct OutboundConfig {
  // tcp:127.0.0.1:PORT (loopback only: whoever reaches it speaks for this
  // VM); none: off.
  std::optional<transport::Address> listen;
  // Where hostd listens for its guests: the host is CID 2.
  transport::Address hostd{
      .kind = transport::Kind::vsock, .cid = vsock_host_cid, .port = default_hostd_inbound_port};
  // A proxy request for http://NAME<suffix>/ goes to host:NAME, a service
  // on the host; any other name is a VM.
  std::string host_suffix = ".host";
  std::chrono::milliseconds connect_timeout{5'000};  // to hostd, and its answer
  std::chrono::milliseconds header_timeout{30'000};  // an app's request head
  std::uint32_t header_bytes = 32 * 1024;            // an app's request head → 431
  std::uint32_t max_connections = 256;               // apps' connections at once → 503
};

struct GuestdConfig {
  transport::Address listen{.kind = transport::Kind::vsock,
                            .cid = transport::vsock_cid_any,
                            .port = default_channel_port};
  // The mode of the socket file of a unix listener, set before anyone can
  // connect. Group or other write bits let those users reach the agents.
  std::uint32_t socket_mode = default_socket_mode;
  // Checked against the kernel's peer address on vsock listeners only. unix
  // and tcp listeners trust every peer, so one that anyone but guestd's own
  // user on this machine can reach (tcp off loopback, or a socket_mode with
  // group or other write) is refused at load unless `listen_remote` says so.
  bool listen_remote = false;
  std::set<std::uint32_t> allowed_peer_cids{vsock_host_cid};
  std::set<std::uint16_t> allowed_ports{5986, 8114};
  // Ports whose agent is not tcp:127.0.0.1:PORT.
  std::map<std::uint16_t, transport::Address> agents;
  LimitsConfig limits;
  OutboundConfig outbound;

  // Where CONNECT PORT goes: the [agents] entry, or the port on loopback.
  transport::Address agent_for(std::uint16_t port) const;
  bool port_allowed(std::uint16_t port) const { return allowed_ports.contains(port); }
  // Whether a channel peer may talk to us. `peer_cid` is the kernel's peer
  // CID for AF_VSOCK connections and empty for other families.
  bool peer_allowed(std::optional<std::uint32_t> peer_cid) const;
};

// Throw config::ConfigError naming file, line and key.
GuestdConfig load_guestd_config(const std::string& path);
GuestdConfig parse_guestd_config(std::string_view text, const std::string& name);

}  // namespace vmgate::guestd
