// libFuzzer target for guestd's TOML config loader
// (guestd/config/guestd_config.hpp): any text gives either a config or a
// config::ConfigError "FILE:LINE: KEY: reason" naming the file and one of its
// lines (config_error_shape.hpp), and nothing else escapes: no other
// exception type, no crash, no sanitizer report. Of a config that loads it
// checks what guestd then relies on without checking again:
//   - it listens on vsock (a port, and some peer CID allowed), unix or
//     tcp, never fcvsock; a tcp listener off loopback, or a unix socket
//     others may connect to, only with listen_remote;
//   - some port is allowed, and every [agents] entry is for one of them;
//   - the listen address, printed for the log, reads back as itself.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string_view>

#include "common/config_reader.hpp"
#include "guestd/config/guestd_config.hpp"
#include "tests/fuzz/config_error_shape.hpp"

using namespace vmgate::guestd;
namespace transport = vmgate::transport;

namespace {

void check(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "guestd config property violated: %s\n", what);
  std::abort();
}

constexpr const char* file_name = "guestd.toml";

void check_config(const GuestdConfig& c) {
  switch (c.listen.kind) {
    case transport::Kind::vsock:
      check(c.listen.port != 0, "a vsock listener has a port");
      check(!c.allowed_peer_cids.empty(), "a vsock listener lets some host connect");
      check(!c.listen_remote, "listen_remote is for unix and tcp listeners");
      break;
    case transport::Kind::tcp: {
      boost::system::error_code ec;
      auto ip = boost::asio::ip::make_address(c.listen.host, ec);
      check(!ec, "a tcp listener binds a numeric address");
      check(ip.is_loopback() || c.listen_remote, "off loopback only with listen_remote");
      break;
    }
    case transport::Kind::unix_socket:
      check((c.socket_mode & 0200) != 0, "guestd's own user can connect");
      check((c.socket_mode & 0022) == 0 || c.listen_remote,
            "others may connect only with listen_remote");
      break;
    case transport::Kind::fcvsock:
      check(false, "guestd never listens on fcvsock");
  }
  check(c.socket_mode <= 0777, "socket_mode is a file mode");
  check(!c.allowed_ports.empty(), "some port is allowed");
  for (const auto& [port, address] : c.agents)
    check(c.port_allowed(port), "every agent is for an allowed port");

  auto again = transport::parse(c.listen.to_string());
  check(again.has_value() && *again == c.listen, "the listen address reads back as itself");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    check_config(parse_guestd_config(text, file_name));
  } catch (const vmgate::config::ConfigError& e) {
    vmgate::fuzz::check_config_error(e.what(), file_name, text);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "guestd config: not a ConfigError escaped: %s\n", e.what());
    std::abort();
  }
  return 0;
}
