#include "guestd/config/guestd_config.hpp"

#include <charconv>

#include <fmt/format.h>

#include "common/config_reader.hpp"

namespace vmgate::guestd {
namespace {

using namespace std::chrono_literals;
using config::Section;

std::optional<std::uint16_t> parse_port_key(std::string_view key) {
  unsigned value = 0;
  auto [p, ec] = std::from_chars(key.data(), key.data() + key.size(), value);
  if (key.empty() || ec != std::errc() || p != key.data() + key.size() || value < 1 ||
      value > 65535)
    return std::nullopt;
  return static_cast<std::uint16_t>(value);
}

transport::Address read_listen(const Section& root, const transport::Address& fallback) {
  auto uri = root.optional_string("listen");
  if (!uri) return fallback;
  auto parsed = transport::parse(*uri);
  if (!parsed) root.fail("listen", parsed.error());
  if (parsed->kind == transport::Kind::fcvsock)
    root.fail("listen", "guestd listens on vsock:ANY:PORT, unix:PATH or tcp:HOST:PORT");
  if (parsed->kind == transport::Kind::vsock && parsed->port == 0)
    root.fail("listen", "vsock port must not be 0");
  return *parsed;
}

// "0600", "660": octal, as chmod(1) and systemd's SocketMode= take it.
std::optional<std::uint32_t> parse_octal_mode(std::string_view text) {
  unsigned value = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), value, 8);
  if (text.size() < 3 || text.size() > 4 || ec != std::errc() || p != text.data() + text.size() ||
      value > 0777)
    return std::nullopt;
  return value;
}

std::uint32_t read_socket_mode(const Section& root, const transport::Address& listen) {
  auto text = root.optional_string("socket_mode");
  if (!text) return default_socket_mode;
  if (listen.kind != transport::Kind::unix_socket)
    root.fail("socket_mode", fmt::format("applies to a unix: listener only, and listen is {}",
                                         listen.to_string()));
  auto mode = parse_octal_mode(*text);
  if (!mode)
    root.fail("socket_mode", fmt::format("'{}' is not a file mode 0000..0777 (\"0600\")", *text));
  if ((*mode & 0200) == 0)
    root.fail("socket_mode", fmt::format("{:04o} would not let even guestd's own user connect "
                                         "(connecting needs write permission): use \"0600\"",
                                         *mode));
  return *mode;
}

// Whether only this machine can reach a tcp listener. Names are not resolved
// (transport::listen binds numeric addresses only), so a name is refused.
bool is_loopback_tcp(const Section& root, const transport::Address& listen) {
  error_code ec;
  auto ip = asio::ip::make_address(listen.host, ec);
  if (ec)
    root.fail("listen", fmt::format("{}: a tcp listener binds a numeric address (127.0.0.1, ::1)",
                                    listen.to_string()));
  return ip.is_loopback();
}

// A unix or tcp listener trusts every peer, unlike a vsock one (peers are
// checked by CID there). One that anyone but guestd's own user on this
// machine can reach makes guestd an open door to its agents: asked for twice,
// as hostd asks for a trusted listener off loopback.
void check_listen_exposure(const Section& root, const GuestdConfig& c) {
  constexpr std::string_view again = "set listen_remote = true as well if you mean it";
  switch (c.listen.kind) {
    case transport::Kind::vsock:
      if (c.listen_remote)
        root.fail("listen_remote",
                  "a vsock listener admits peers by allowed_peer_cids: remove listen_remote");
      return;
    case transport::Kind::tcp:
      if (!is_loopback_tcp(root, c.listen) && !c.listen_remote)
        root.fail("listen", fmt::format("{} is not a loopback address: anyone who reaches it "
                                        "could use guestd to reach this VM's agents; {}",
                                        c.listen.to_string(), again));
      return;
    case transport::Kind::unix_socket:
      if ((c.socket_mode & 0022) != 0 && !c.listen_remote) {
        const char* who = (c.socket_mode & 0022) == 0022 ? "group members and other users"
                          : (c.socket_mode & 0020)       ? "group members"
                                                         : "other users";
        root.fail("socket_mode", fmt::format("{:04o} lets {} connect to {} and so reach this VM's "
                                             "agents; {}",
                                             c.socket_mode, who, c.listen.to_string(), again));
      }
      return;
    case transport::Kind::fcvsock:
      return;  // refused by read_listen
  }
}

void read_agents(const Section& s, GuestdConfig& c) {
  for (const auto& key : s.keys()) {
    auto uri = s.optional_string(key);  // also rejects non-string values
    auto port = parse_port_key(key);
    if (!port) s.fail(key, "must be a port number 1..65535 (\"5986\" = \"tcp:127.0.0.1:15986\")");
    auto parsed = transport::parse(*uri);
    if (!parsed) s.fail(key, parsed.error());
    if (!c.port_allowed(*port))
      s.fail(key,
             fmt::format("port {} is not in allowed_ports, so this agent is never used", *port));
    c.agents[*port] = *parsed;
  }
  s.reject_unknown_keys();
}

void read_limits(const Section& s, LimitsConfig& l) {
  l.preamble_timeout = s.get_ms("preamble_timeout_ms", l.preamble_timeout, 10ms, 600'000ms);
  l.agent_connect_timeout =
      s.get_ms("agent_connect_timeout_ms", l.agent_connect_timeout, 10ms, 600'000ms);
  l.idle_timeout = s.get_ms("idle_timeout_ms", l.idle_timeout, 100ms, 86'400'000ms);
  l.shutdown_grace = s.get_ms("shutdown_grace_ms", l.shutdown_grace, 0ms, 3'600'000ms);
  l.max_connections =
      static_cast<std::uint32_t>(s.get_int("max_connections", l.max_connections, 1, 1'000'000));
  s.reject_unknown_keys();
}

void read_outbound(const Section& s, OutboundConfig& o) {
  if (auto uri = s.optional_string("listen")) {
    auto parsed = transport::parse(*uri);
    if (!parsed) s.fail("listen", parsed.error());
    error_code ec;
    auto ip = parsed->kind == transport::Kind::tcp ? asio::ip::make_address(parsed->host, ec)
                                                   : asio::ip::address{};
    // Whoever reaches this listener sends as this VM: only its own apps may.
    if (parsed->kind != transport::Kind::tcp || ec || !ip.is_loopback())
      s.fail("listen", fmt::format("{} is not a loopback address: the outbound proxy is for this "
                                   "VM's own apps (tcp:127.0.0.1:PORT or tcp:[::1]:PORT)",
                                   *uri));
    o.listen = *parsed;
  }
  if (auto uri = s.optional_string("hostd")) {
    auto parsed = transport::parse(*uri);
    if (!parsed) s.fail("hostd", parsed.error());
    o.hostd = *parsed;
  }
  o.host_suffix = s.get_string("host_suffix", o.host_suffix);
  if (o.host_suffix.size() < 2 || o.host_suffix.front() != '.')
    s.fail("host_suffix", "must be a DNS suffix starting with '.' (\".host\")");
  o.connect_timeout = s.get_ms("connect_timeout_ms", o.connect_timeout, 10ms, 600'000ms);
  o.header_timeout = s.get_ms("header_timeout_ms", o.header_timeout, 100ms, 3'600'000ms);
  o.header_bytes =
      static_cast<std::uint32_t>(s.get_int("header_bytes", o.header_bytes, 1024, 1024 * 1024));
  o.max_connections =
      static_cast<std::uint32_t>(s.get_int("max_connections", o.max_connections, 1, 100'000));
  s.reject_unknown_keys();
}

GuestdConfig read(const Section& root) {
  GuestdConfig c;
  c.listen = read_listen(root, c.listen);
  c.socket_mode = read_socket_mode(root, c.listen);
  c.listen_remote = root.get_bool("listen_remote", c.listen_remote);
  check_listen_exposure(root, c);

  auto cids = root.get_int_array("allowed_peer_cids", {vsock_host_cid}, 0, 0xFFFFFFFE);
  c.allowed_peer_cids.clear();
  for (auto cid : cids)
    c.allowed_peer_cids.insert(static_cast<std::uint32_t>(cid));
  if (c.listen.kind == transport::Kind::vsock && c.allowed_peer_cids.empty())
    root.fail("allowed_peer_cids", "is empty, so no host could ever connect (the host is CID 2)");

  auto ports = root.get_int_array("allowed_ports", {5986, 8114}, 1, 65535);
  c.allowed_ports.clear();
  for (auto port : ports)
    c.allowed_ports.insert(static_cast<std::uint16_t>(port));
  if (c.allowed_ports.empty())
    root.fail("allowed_ports", "is empty, so every CONNECT would be refused");

  if (auto s = root.section("agents")) read_agents(*s, c);
  if (auto s = root.section("limits")) read_limits(*s, c.limits);
  if (auto s = root.section("outbound")) read_outbound(*s, c.outbound);
  root.reject_unknown_keys();
  return c;
}

}  // namespace

transport::Address GuestdConfig::agent_for(std::uint16_t port) const {
  if (auto it = agents.find(port); it != agents.end()) return it->second;
  return transport::Address{.kind = transport::Kind::tcp, .port = port, .host = "127.0.0.1"};
}

bool GuestdConfig::peer_allowed(std::optional<std::uint32_t> peer_cid) const {
  if (listen.kind != transport::Kind::vsock) return true;
  return peer_cid && allowed_peer_cids.contains(*peer_cid);
}

GuestdConfig load_guestd_config(const std::string& path) {
  return read(config::load_file(path));
}

GuestdConfig parse_guestd_config(std::string_view text, const std::string& name) {
  return read(config::load_string(text, name));
}

}  // namespace vmgate::guestd
