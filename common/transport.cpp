#include "common/transport.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <optional>

#include <fmt/format.h>

#include "common/hybrid_vsock.hpp"

namespace vmgate::transport {
namespace {

using boost::system::result;

std::optional<std::uint32_t> parse_u32(std::string_view s, std::uint64_t max) {
  std::uint64_t value = 0;
  if (s.empty()) return std::nullopt;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || p != s.data() + s.size() || value > max) return std::nullopt;
  return static_cast<std::uint32_t>(value);
}

Endpoint endpoint_from(const void* sa, std::size_t len) {
  return Endpoint(sa, len, 0);
}

Endpoint vsock_endpoint(std::uint32_t cid, std::uint32_t port) {
  sockaddr_vm sa{};
  sa.svm_family = AF_VSOCK;
  sa.svm_cid = cid;
  sa.svm_port = port;
  return endpoint_from(&sa, sizeof sa);
}

std::optional<Endpoint> unix_endpoint(const std::string& path) {
  sockaddr_un sa{};
  if (path.size() >= sizeof sa.sun_path) return std::nullopt;
  sa.sun_family = AF_UNIX;
  std::memcpy(sa.sun_path, path.data(), path.size());
  return endpoint_from(&sa, offsetof(sockaddr_un, sun_path) + path.size() + 1);
}

std::optional<Endpoint> numeric_tcp_endpoint(const std::string& host, std::uint32_t port) {
  error_code ec;
  auto ip = asio::ip::make_address(host, ec);
  if (ec) return std::nullopt;
  asio::ip::tcp::endpoint ep(ip, static_cast<std::uint16_t>(port));
  return endpoint_from(ep.data(), ep.size());
}

std::string format_ip_port(const asio::ip::address& ip, unsigned port) {
  if (ip.is_v6()) return fmt::format("[{}]:{}", ip.to_string(), port);
  return fmt::format("{}:{}", ip.to_string(), port);
}

}  // namespace

std::string Address::to_string() const {
  switch (kind) {
    case Kind::vsock:
      return cid == vsock_cid_any ? fmt::format("vsock:ANY:{}", port)
                                  : fmt::format("vsock:{}:{}", cid, port);
    case Kind::fcvsock:
      return fmt::format("fcvsock:{}:{}", path, port);
    case Kind::unix_socket:
      return fmt::format("unix:{}", path);
    case Kind::tcp:
      return host.find(':') != std::string::npos ? fmt::format("tcp:[{}]:{}", host, port)
                                                 : fmt::format("tcp:{}:{}", host, port);
  }
  return "?";
}

boost::system::result<Address, std::string> parse(std::string_view uri) {
  auto colon = uri.find(':');
  if (colon == std::string_view::npos)
    return fmt::format("transport '{}' has no scheme (vsock:, fcvsock:, unix:, tcp:)", uri);
  std::string_view scheme = uri.substr(0, colon);
  std::string_view rest = uri.substr(colon + 1);
  Address a;
  if (scheme == "unix") {
    if (rest.empty() || rest.front() != '/')
      return fmt::format("unix transport '{}' needs an absolute path", uri);
    if (rest.size() >= sizeof(sockaddr_un{}.sun_path))
      return fmt::format("unix socket path in '{}' is longer than {} bytes", uri,
                         sizeof(sockaddr_un{}.sun_path) - 1);
    a.kind = Kind::unix_socket;
    a.path = std::string(rest);
    return a;
  }
  // The remaining schemes end in ":PORT".
  auto last = rest.rfind(':');
  if (last == std::string_view::npos) return fmt::format("transport '{}' has no port", uri);
  std::string_view head = rest.substr(0, last);
  auto port = parse_u32(rest.substr(last + 1), scheme == "tcp" ? 65535 : 0xFFFFFFFEull);
  if (!port || (scheme == "tcp" && *port == 0 && head.empty()))
    return fmt::format("transport '{}' has an invalid port '{}'", uri, rest.substr(last + 1));
  a.port = *port;
  if (scheme == "vsock") {
    a.kind = Kind::vsock;
    if (head == "ANY" || head == "any" || head == "-1") {
      a.cid = vsock_cid_any;
    } else {
      auto cid = parse_u32(head, 0xFFFFFFFEull);
      if (!cid) return fmt::format("vsock transport '{}' has an invalid CID '{}'", uri, head);
      a.cid = *cid;
    }
    return a;
  }
  if (scheme == "fcvsock") {
    if (head.empty() || head.front() != '/')
      return fmt::format("fcvsock transport '{}' needs an absolute socket path", uri);
    a.kind = Kind::fcvsock;
    a.path = std::string(head);
    return a;
  }
  if (scheme == "tcp") {
    if (head.size() >= 2 && head.front() == '[' && head.back() == ']')
      head = head.substr(1, head.size() - 2);
    if (head.empty()) return fmt::format("tcp transport '{}' has no host", uri);
    a.kind = Kind::tcp;
    a.host = std::string(head);
    return a;
  }
  return fmt::format("unknown transport scheme '{}' in '{}' (vsock:, fcvsock:, unix:, tcp:)",
                     scheme, uri);
}

namespace {

awaitable<error_code> connect_endpoint(Stream& socket, const Endpoint& ep) {
  error_code ec;
  socket.open(asio::generic::stream_protocol(ep.protocol().family(), 0), ec);
  if (ec) co_return ec;
  auto [cec] = co_await socket.async_connect(ep, use_tuple);
  co_return cec;
}

// Hybrid vsock (common/hybrid_vsock.hpp): "CONNECT PORT\n", then the VMM's
// answer line. Read byte by byte: what follows the '\n' is the guest's, and
// stays in the socket for whoever reads the channel next.
awaitable<error_code> fcvsock_handshake(Stream& socket, std::uint32_t port) {
  const std::string request = hybrid_vsock::connect_line(port);
  auto [wec, n] = co_await asio::async_write(socket, asio::buffer(request), use_tuple);
  if (wec) co_return wec;
  std::string line;
  for (;;) {
    char c = 0;
    auto [rec, got] = co_await asio::async_read(socket, asio::buffer(&c, 1), use_tuple);
    // A VMM with nothing accepting on the port closes the socket: that is its refusal.
    if (rec == asio::error::eof || rec == asio::error::connection_reset)
      co_return hybrid_vsock::make_error_code(hybrid_vsock::Error::closed);
    if (rec) co_return rec;
    if (c == '\n') break;
    if (line.size() == hybrid_vsock::max_answer_bytes)
      co_return hybrid_vsock::make_error_code(hybrid_vsock::Error::too_long);
    line.push_back(c);
  }
  auto answer = hybrid_vsock::parse_answer(line);
  co_return answer ? error_code{} : answer.error();
}

}  // namespace

awaitable<std::tuple<error_code, Stream>> connect(const Address& a) {
  auto executor = co_await asio::this_coro::executor;
  Stream socket(io_executor_of(executor));
  error_code ec;
  switch (a.kind) {
    case Kind::vsock:
      ec = co_await connect_endpoint(socket, vsock_endpoint(a.cid, a.port));
      break;
    case Kind::unix_socket:
    case Kind::fcvsock: {
      auto ep = unix_endpoint(a.path);
      if (!ep) {
        ec = asio::error::make_error_code(asio::error::name_too_long);
        break;
      }
      ec = co_await connect_endpoint(socket, *ep);
      if (!ec && a.kind == Kind::fcvsock) ec = co_await fcvsock_handshake(socket, a.port);
      break;
    }
    case Kind::tcp: {
      if (auto ep = numeric_tcp_endpoint(a.host, a.port)) {
        ec = co_await connect_endpoint(socket, *ep);
        break;
      }
      asio::ip::tcp::resolver resolver(executor);
      auto [rec, results] =
          co_await resolver.async_resolve(a.host, std::to_string(a.port), use_tuple);
      if (rec) {
        ec = rec;
        break;
      }
      ec = asio::error::make_error_code(asio::error::host_not_found);
      for (const auto& entry : results) {
        error_code close_ec;
        socket.close(close_ec);
        auto tcp_ep = entry.endpoint();
        ec = co_await connect_endpoint(socket, endpoint_from(tcp_ep.data(), tcp_ep.size()));
        if (!ec) break;
      }
      break;
    }
  }
  if (!ec) tune(socket, a.kind);
  co_return std::make_tuple(ec, std::move(socket));
}

namespace {

error_code last_error() {
  return error_code(errno, boost::system::system_category());
}

// What is at `path` before a unix listener binds it. A socket file nobody
// accepts on is what an earlier run left (it cannot remove its file if it
// was killed): removed. Anything else stays: a live socket belongs to a
// running process whose clients would silently move to us, and a file that
// is not a socket is a mistyped path, not ours to delete.
error_code clear_stale_socket(const std::string& path, const Endpoint& ep) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return errno == ENOENT ? error_code{} : last_error();
  if (!S_ISSOCK(st.st_mode)) return make_error_code(boost::system::errc::file_exists);
  // Non-blocking, so a live listener whose queue is full answers EAGAIN
  // rather than holding us.
  int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (probe < 0) return last_error();
  const int rc =
      ::connect(probe, static_cast<const sockaddr*>(ep.data()), static_cast<socklen_t>(ep.size()));
  const int connect_errno = errno;
  ::close(probe);
  if (rc == 0 || connect_errno == EAGAIN || connect_errno == EINPROGRESS)
    return asio::error::make_error_code(asio::error::address_in_use);
  if (connect_errno == ENOENT) return {};  // removed in the meantime
  if (connect_errno != ECONNREFUSED)
    return error_code(connect_errno, boost::system::system_category());
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) return last_error();
  return {};
}

// Between bind() and listen() nobody can connect (connect() is refused), so
// a mode set here holds from the first connection on. Without following a
// symlink: if the path was swapped after bind, the chmod fails rather than
// reach another file.
error_code set_socket_mode(const std::string& path, std::uint32_t mode) {
  if (::fchmodat(AT_FDCWD, path.c_str(), static_cast<mode_t>(mode), AT_SYMLINK_NOFOLLOW) != 0)
    return last_error();
  return {};
}

}  // namespace

Acceptor listen(asio::any_io_executor executor, const Address& a, error_code& ec,
                std::optional<std::uint32_t> unix_socket_mode) {
  Acceptor acceptor(io_executor_of(executor));
  std::optional<Endpoint> ep;
  switch (a.kind) {
    case Kind::vsock:
      ep = vsock_endpoint(a.cid, a.port);
      break;
    case Kind::unix_socket:
      ep = unix_endpoint(a.path);
      if (ep) ec = clear_stale_socket(a.path, *ep);
      if (ec) return acceptor;
      break;
    case Kind::tcp:
      ep = numeric_tcp_endpoint(a.host, a.port);
      break;
    case Kind::fcvsock:
      ec = asio::error::make_error_code(asio::error::operation_not_supported);
      return acceptor;
  }
  if (!ep) {
    ec = asio::error::make_error_code(asio::error::invalid_argument);
    return acceptor;
  }
  acceptor.open(asio::generic::stream_protocol(ep->protocol().family(), 0), ec);
  if (ec) return acceptor;
  if (a.kind == Kind::tcp) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (ec) return acceptor;
  // A unix socket's file appears at bind(), but a connect() is refused until
  // listen(): a peer that waits for the file to appear (a VMM, a guest's
  // relay, a test) and connects at once would be refused. So the socket is
  // bound under a name of its own beside the path and renamed onto it once
  // listening (rename(2) is atomic): where the path exists, it accepts.
  std::string bound_path = a.path;
  if (a.kind == Kind::unix_socket) {
    static std::atomic<unsigned> next_temp{0};
    std::string temp = fmt::format("{}.{}-{}.new", a.path, ::getpid(), next_temp++);
    if (auto temp_ep = unix_endpoint(temp)) {  // too long a name: bound in place
      ::unlink(temp.c_str());
      ep = temp_ep;
      bound_path = std::move(temp);
    }
  }
  acceptor.bind(*ep, ec);
  if (ec) return acceptor;
  auto discard = [&] {
    if (bound_path != a.path) ::unlink(bound_path.c_str());
  };
  if (a.kind == Kind::unix_socket && unix_socket_mode)
    ec = set_socket_mode(bound_path, *unix_socket_mode);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (!ec && bound_path != a.path && ::rename(bound_path.c_str(), a.path.c_str()) != 0)
    ec = last_error();
  if (ec) discard();
  return acceptor;
}

std::string local_uri(const Acceptor& acceptor, const Address& configured) {
  error_code ec;
  auto ep = acceptor.local_endpoint(ec);
  if (ec) return configured.to_string();
  Address actual = configured;
  if (ep.protocol().family() == AF_INET || ep.protocol().family() == AF_INET6) {
    asio::ip::tcp::endpoint tcp_ep;
    std::memcpy(tcp_ep.data(), ep.data(), std::min<std::size_t>(ep.size(), sizeof(sockaddr_in6)));
    actual.port = tcp_ep.port();
  } else if (ep.protocol().family() == AF_VSOCK) {
    const auto* sa = reinterpret_cast<const sockaddr_vm*>(ep.data());
    actual.port = sa->svm_port;
  }
  return actual.to_string();
}

std::optional<std::uint32_t> peer_vsock_cid(const Stream& stream) {
  sockaddr_vm sa{};
  socklen_t len = sizeof sa;
  if (::getpeername(const_cast<Stream&>(stream).native_handle(), reinterpret_cast<sockaddr*>(&sa),
                    &len) != 0)
    return std::nullopt;
  if (sa.svm_family != AF_VSOCK) return std::nullopt;
  return sa.svm_cid;
}

namespace {

// The IP address in a peer's socket address (IPv4-mapped IPv6 as IPv4).
std::optional<asio::ip::address> ip_of(const sockaddr_storage& ss) {
  if (ss.ss_family == AF_INET) {
    const auto* sa = reinterpret_cast<const sockaddr_in*>(&ss);
    return asio::ip::address_v4(ntohl(sa->sin_addr.s_addr));
  }
  if (ss.ss_family == AF_INET6) {
    const auto* sa = reinterpret_cast<const sockaddr_in6*>(&ss);
    asio::ip::address_v6::bytes_type bytes;
    std::memcpy(bytes.data(), &sa->sin6_addr, bytes.size());
    asio::ip::address_v6 v6(bytes, sa->sin6_scope_id);
    if (v6.is_v4_mapped()) return asio::ip::make_address_v4(asio::ip::v4_mapped, v6);
    return v6;
  }
  return std::nullopt;
}

std::string text_of(const sockaddr_storage& ss) {
  switch (ss.ss_family) {
    case AF_INET: {
      // Every client connection asks: formatted directly, as inet_ntop's
      // sprintf and a temporary string cost more than the rest of this call.
      const auto* sa = reinterpret_cast<const sockaddr_in*>(&ss);
      const auto* b = reinterpret_cast<const unsigned char*>(&sa->sin_addr.s_addr);
      return fmt::format("{}.{}.{}.{}:{}", unsigned{b[0]}, unsigned{b[1]}, unsigned{b[2]},
                         unsigned{b[3]}, ntohs(sa->sin_port));
    }
    case AF_INET6: {
      const auto* sa = reinterpret_cast<const sockaddr_in6*>(&ss);
      asio::ip::address_v6::bytes_type bytes;
      std::memcpy(bytes.data(), &sa->sin6_addr, bytes.size());
      return format_ip_port(asio::ip::address_v6(bytes, sa->sin6_scope_id), ntohs(sa->sin6_port));
    }
    case AF_VSOCK: {
      const auto* sa = reinterpret_cast<const sockaddr_vm*>(&ss);
      return fmt::format("vsock:{}:{}", sa->svm_cid, sa->svm_port);
    }
    case AF_UNIX:
      return "unix";
  }
  return "unknown";
}

bool peer_of(const Stream& stream, sockaddr_storage& ss) {
  socklen_t len = sizeof ss;
  return ::getpeername(const_cast<Stream&>(stream).native_handle(),
                       reinterpret_cast<sockaddr*>(&ss), &len) == 0;
}

}  // namespace

std::optional<asio::ip::address> peer_ip(const Stream& stream) {
  sockaddr_storage ss{};
  if (!peer_of(stream, ss)) return std::nullopt;
  return ip_of(ss);
}

std::string describe_peer(const Stream& stream) {
  sockaddr_storage ss{};
  if (!peer_of(stream, ss)) return "unknown";
  return text_of(ss);
}

PeerAddress peer_address(const asio::generic::stream_protocol::endpoint& endpoint) {
  sockaddr_storage ss{};
  std::memcpy(&ss, endpoint.data(), std::min<std::size_t>(endpoint.size(), sizeof ss));
  // An unnamed unix client's address is only its family, or nothing at all.
  if (endpoint.size() < sizeof ss.ss_family) ss.ss_family = AF_UNSPEC;
  return PeerAddress{.ip = ip_of(ss), .text = text_of(ss)};
}

void tune(Stream& stream, Kind kind) {
  if (kind != Kind::tcp) return;
  int one = 1;
  ::setsockopt(stream.native_handle(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

bool read_would_block(Stream& stream) {
  char byte;
  auto n = ::recv(stream.native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

std::size_t bytes_readable(Stream& stream) {
  int n = 0;
  if (::ioctl(stream.native_handle(), FIONREAD, &n) != 0 || n < 0) return 0;
  return static_cast<std::size_t>(n);
}

void acknowledge_now(Stream& stream, Kind kind) {
  if (kind != Kind::tcp) return;
  int one = 1;
  ::setsockopt(stream.native_handle(), IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
}

}  // namespace vmgate::transport
