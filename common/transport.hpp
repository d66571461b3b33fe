// Transports: how a channel end is reached or listened on, picked by URI.
//
//   vsock:CID:PORT             AF_VSOCK (CID "ANY" to listen on every CID)
//   fcvsock:/path/v.sock:PORT  Firecracker / Cloud Hypervisor hybrid vsock
//   unix:/path/to/sock         AF_UNIX stream socket (tests, development)
//   tcp:HOST:PORT              TCP (tests, hostd-to-hostd); HOST may be [v6]
//
// hostd and guestd both go through this file: there is one connect and one
// listen path whatever the transport.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/asio.hpp"

namespace vmgate::transport {

enum class Kind { vsock, fcvsock, unix_socket, tcp };

inline constexpr std::uint32_t vsock_cid_any = 0xFFFFFFFFu;  // VMADDR_CID_ANY

struct Address {
  Kind kind = Kind::tcp;
  std::uint32_t cid = 0;   // vsock
  std::uint32_t port = 0;  // vsock, fcvsock, tcp
  std::string host;        // tcp (numeric or a name resolved at connect time)
  std::string path;        // unix, fcvsock

  std::string to_string() const;
  friend bool operator==(const Address&, const Address&) = default;
};

// Parses a transport URI. On failure the error is a one-line reason naming
// the offending part, suitable for a config error or a 502 body.
boost::system::result<Address, std::string> parse(std::string_view uri);

// Connects; the caller bounds the time (Deadline). For fcvsock this includes
// the "CONNECT PORT\n" / "OK ...\n" handshake, whose failures are
// hybrid_vsock::Error codes (common/hybrid_vsock.hpp).
awaitable<std::tuple<error_code, Stream>> connect(const Address& address);

// Opens, binds and listens. On a unix path, a socket file left by an earlier
// run is replaced, but a live socket (something still accepts on it:
// address_in_use) or anything that is not a socket (file_exists) is left
// alone and refused. `unix_socket_mode`, when given, is the socket file's
// mode, exactly (whatever the umask) and before anyone can connect; without
// it the umask decides. Ignored for other kinds.
Acceptor listen(asio::any_io_executor executor, const Address& address, error_code& ec,
                std::optional<std::uint32_t> unix_socket_mode = std::nullopt);

// The local address an acceptor is bound to, as a URI (resolves port 0).
std::string local_uri(const Acceptor& acceptor, const Address& configured);

// The peer's vsock CID, or nothing if the socket is not AF_VSOCK.
std::optional<std::uint32_t> peer_vsock_cid(const Stream& stream);

// A short human-readable peer description for logs and `Forwarded`:
// "203.0.113.7:51514", "[2001:db8::1]:443", "vsock:3:1034", "unix".
std::string describe_peer(const Stream& stream);
// The peer's IP address on a TCP stream (IPv4-mapped IPv6 as IPv4); empty otherwise.
std::optional<asio::ip::address> peer_ip(const Stream& stream);

// Both of the above, from the address accept(2) gave: an acceptor asks no
// getpeername(2) (hostd's accept loop and connection set-up asked three
// times per connection).
struct PeerAddress {
  std::optional<asio::ip::address> ip;  // as peer_ip
  std::string text;                     // as describe_peer
};
PeerAddress peer_address(const asio::generic::stream_protocol::endpoint& endpoint);

// Sets TCP_NODELAY on a TCP socket; a no-op for other kinds. The caller names
// the kind it connected or accepted on, so no system call asks the socket.
void tune(Stream& stream, Kind kind);

// Whether a read would block now: nothing has arrived, and the peer has not
// closed (a recv with MSG_PEEK | MSG_DONTWAIT, which consumes nothing).
bool read_would_block(Stream& stream);
// How many bytes a read would find now (FIONREAD): 0 when none have arrived
// (or the peer has closed: a read says which), or on error.
std::size_t bytes_readable(Stream& stream);

// Sends the ACK of what was just read now rather than after the delayed-ACK
// timer (TCP_QUICKACK, which the kernel clears again by itself); a no-op for
// other kinds. For a reader that waits for more of a message whose sender
// may be holding the rest back until this ACK (Nagle's algorithm with a head
// and a body in two writes): without it, each such message waits ~40 ms.
void acknowledge_now(Stream& stream, Kind kind);

}  // namespace vmgate::transport
