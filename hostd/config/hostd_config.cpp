#include "hostd/config/hostd_config.hpp"

#include <algorithm>
#include <array>
#include <charconv>

#include <arpa/inet.h>

#include <fmt/format.h>

#include "common/config_reader.hpp"
#include "hostd/authz/access_policy.hpp"
#include "hostd/authz/acl_pattern.hpp"
#include "hostd/cluster/cluster_records.hpp"
#include "hostd/route/target.hpp"

namespace vmgate::hostd {
namespace {

using namespace std::chrono_literals;
using config::Section;

bool is_loopback(const transport::Address& a) {
  if (a.kind == transport::Kind::unix_socket) return true;
  if (a.kind != transport::Kind::tcp) return false;
  return a.host == "localhost" || a.host.starts_with("127.") || a.host == "::1";
}

bool valid_header_name(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    bool ok =
        (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
    if (!ok) return false;
  }
  return true;
}

bool valid_ip_address(const std::string& text) {
  unsigned char bytes[16];
  return inet_pton(AF_INET, text.c_str(), bytes) == 1 ||
         inet_pton(AF_INET6, text.c_str(), bytes) == 1;
}

// 0.0.0.0 or :: (any spelling): a wildcard to bind, not an address to reach.
bool unspecified_ip_address(const std::string& text) {
  unsigned char bytes[16] = {};
  const bool parsed =
      inet_pton(AF_INET, text.c_str(), bytes) == 1 || inet_pton(AF_INET6, text.c_str(), bytes) == 1;
  return parsed &&
         std::all_of(std::begin(bytes), std::end(bytes), [](unsigned char b) { return b == 0; });
}

// Lowercase hex without separators: "AB:cd:01..." and "abcd01..." name the
// same pin. Empty when `text` is not a SHA-256 fingerprint.
std::string normalized_fingerprint(std::string_view text) {
  std::array<char, 64> hex{};
  std::size_t n = 0;
  for (char c : text) {
    if (c == ':') continue;
    if (c >= 'A' && c <= 'F') c = static_cast<char>(c - 'A' + 'a');
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')) || n == hex.size()) return {};
    hex[n++] = c;
  }
  if (n != hex.size()) return {};
  return std::string(hex.data(), hex.size());
}

TlsConfig read_tls(const Section& s) {
  TlsConfig t;
  auto required = [&s](std::string_view key) {
    auto value = s.optional_string(key);
    if (!value || value->empty()) s.fail(key, "is required: a PEM file");
    return *value;
  };
  t.certificate = required("certificate");
  t.key = required("key");
  t.client_ca = s.get_string("client_ca", "");
  for (const auto& pin : s.get_string_array("pinned_sha256", {})) {
    const std::string& hex = t.pinned_sha256.emplace_back(normalized_fingerprint(pin));
    if (hex.empty()) {
      s.fail("pinned_sha256", fmt::format("'{}' is not a SHA-256 fingerprint (64 hex digits, "
                                          "':' allowed between them)",
                                          pin));
    }
  }
  if (!t.pinned_sha256.empty() && t.client_ca.empty())
    s.fail("pinned_sha256", "pins client certificates: set client_ca as well");
  t.handshake_timeout = s.get_ms("handshake_timeout_ms", t.handshake_timeout, 100ms, 600'000ms);
  s.reject_unknown_keys();
  return t;
}

ListenerIdentity read_identity(const Section& s) {
  auto identity = s.optional_string("identity");
  const bool trusted = s.get_bool("trusted", false);
  if (trusted && identity && *identity != "trusted")
    s.fail("identity", "a trusted listener has no identity to check: remove one of the two");
  if (trusted || identity == "trusted") return ListenerIdentity::trusted;
  if (!identity) {
    s.fail("identity",
           "this listener neither authenticates its clients nor is trusted: add identity = "
           "\"certificate\" (with [listener.tls] client_ca), \"token\" (with [auth] "
           "tokens_file) or \"source\" (with ACL rules on cidr:...), or trusted = true on a "
           "loopback address");
  }
  if (*identity == "certificate") return ListenerIdentity::certificate;
  if (*identity == "token") return ListenerIdentity::token;
  if (*identity == "source") return ListenerIdentity::source;
  s.fail("identity",
         fmt::format("'{}' is not one of certificate, token, source, trusted", *identity));
}

ListenerConfig read_listener(const Section& s, const AuthConfig& auth,
                             const RoutingConfig& routing) {
  ListenerConfig l;
  auto address = s.optional_string("address");
  if (!address) s.fail("address", "is required (tcp:HOST:PORT or unix:PATH)");
  auto parsed = transport::parse(*address);
  if (!parsed) s.fail("address", parsed.error());
  if (parsed->kind != transport::Kind::tcp && parsed->kind != transport::Kind::unix_socket)
    s.fail("address", "client listeners are tcp:HOST:PORT or unix:PATH");
  l.address = *parsed;
  l.where.text = s.where("");
  l.name = s.get_string("name", *address);
  if (l.name.empty()) s.fail("name", "must not be empty: logs and records name the listener");
  l.guest_port = static_cast<std::uint16_t>(
      s.get_int("guest_port", parsed->kind == transport::Kind::tcp ? parsed->port : 0, 1, 65535));
  // Requests that name no agent port go to guest_port, by default the
  // listener's own: a unix socket has none to give.
  if (l.guest_port == 0 && parsed->kind == transport::Kind::unix_socket)
    s.fail("guest_port", fmt::format("is required: {} has no port to default to", *address));
  const std::string mode = s.get_string("mode", "proxy");
  if (mode == "passthrough") {
    l.mode = ListenerMode::passthrough;
  } else if (mode != "proxy") {
    s.fail("mode", fmt::format("'{}' is not one of proxy, passthrough", mode));
  }
  l.identity = read_identity(s);
  l.trusted_remote = s.get_bool("trusted_remote", false);
  if (auto tls = s.section("tls")) l.tls = read_tls(*tls);

  if (l.trusted() && !is_loopback(l.address) && !l.trusted_remote) {
    s.fail("trusted",
           fmt::format("{} is not a loopback address: a trusted listener there lets anyone who "
                       "reaches it into your VMs; set trusted_remote = true as well if you mean it",
                       l.address.to_string()));
  }
  if (l.identity == ListenerIdentity::source && l.address.kind != transport::Kind::tcp)
    s.fail("identity", "a unix socket has no source address: use tcp:HOST:PORT");
  if (l.identity == ListenerIdentity::certificate && (!l.tls || l.tls->client_ca.empty()))
    s.fail("identity", "identity = \"certificate\" needs [listener.tls] with client_ca");
  if (l.identity != ListenerIdentity::certificate && l.tls && !l.tls->client_ca.empty())
    s.fail("identity",
           "tls.client_ca asks for client certificates: set identity = \"certificate\"");
  if (l.identity == ListenerIdentity::token && auth.tokens_file.empty())
    s.fail("identity", "identity = \"token\" needs [auth] tokens_file");
  if (l.mode == ListenerMode::passthrough) {
    // The TLS is the guest's: hostd sees no certificate and no request head.
    if (l.identity != ListenerIdentity::source && !l.trusted())
      s.fail("identity", "a passthrough listener sees no credentials: use \"source\" or trusted");
    if (l.tls)
      s.fail("tls", "a passthrough listener does not terminate TLS: remove [listener.tls]");
    if (routing.host_suffix.empty())
      s.fail("mode", "passthrough routes on SNI names: set [routing] host_suffix");
  }
  s.reject_unknown_keys();
  return l;
}

// One [[acl]] table. The patterns are parsed here only to be checked, so
// that a typo stops hostd at its line; authz/ compiles them again.
AclRule read_acl_rule(const Section& s, std::size_t index) {
  AclRule rule;
  rule.name = s.get_string("name", fmt::format("acl[{}]", index));
  if (rule.name.empty()) s.fail("name", "must not be empty");
  if (rule.name == default_rule || rule.name == trusted_rule)
    s.fail("name", fmt::format("'{}' is what records call a decision no rule made", rule.name));
  auto action = s.optional_string("action");
  if (!action) s.fail("action", "is required: \"allow\" or \"deny\"");
  if (*action == "deny") {
    rule.deny = true;
  } else if (*action != "allow") {
    s.fail("action", fmt::format("'{}' is not one of allow, deny", *action));
  }
  auto required_list = [&s](std::string_view key, std::string_view what) {
    auto list = s.get_string_array(key, {});
    if (list.empty()) s.fail(key, fmt::format("is required and must not be empty: {}", what));
    return list;
  };
  rule.identities = required_list(
      "identities", "[\"cert:GLOB\", \"token:GLOB\", \"cidr:NETWORK\", \"vm:GLOB\", ...]");
  for (const auto& text : rule.identities)
    if (auto parsed = parse_identity_pattern(text); !parsed) s.fail("identities", parsed.error());
  rule.vms = required_list("vms", "[\"NAME-GLOB\", \"UUID\", \"*\", ...]");
  for (const auto& text : rule.vms)
    if (auto parsed = parse_vm_pattern(text); !parsed) s.fail("vms", parsed.error());
  for (std::int64_t port : s.get_int_array("ports", {}, 1, 65535))
    rule.ports.push_back(static_cast<std::uint16_t>(port));
  s.reject_unknown_keys();
  return rule;
}

// Placeholders of a template replaced with sample values, to check its shape.
std::string with_samples(std::string text) {
  for (auto [key, value] :
       {std::pair{"{cid}", "3"}, std::pair{"{name}", "vm"},
        std::pair{"{uuid}", "00000000-0000-0000-0000-000000000000"}, std::pair{"{port}", "5500"}}) {
    for (auto pos = text.find(key); pos != std::string::npos; pos = text.find(key))
      text.replace(pos, std::string_view(key).size(), value);
  }
  return text;
}

InboundConfig read_inbound(const Section& s) {
  InboundConfig in;
  using namespace std::chrono_literals;
  if (auto uri = s.optional_string("listen")) {
    auto parsed = transport::parse(*uri);
    if (!parsed) s.fail("listen", parsed.error());
    // Only the kernel's peer CID says who a caller is; a tcp or unix
    // listener could not tell one VM from another (per_vm is for that).
    if (parsed->kind != transport::Kind::vsock)
      s.fail("listen",
             "is vsock:ANY:PORT (the peer CID names the VM); for unix sockets per VM "
             "use per_vm = \"unix:/run/vmgate/in/{name}.sock\"");
    if (parsed->port == 0) s.fail("listen", "vsock port must not be 0");
    in.listen = *parsed;
  }
  in.per_vm_template = s.get_string("per_vm", "");
  if (!in.per_vm_template.empty()) {
    const std::string sample = with_samples(in.per_vm_template);
    if (in.per_vm_template.find("{name}") == std::string::npos &&
        in.per_vm_template.find("{uuid}") == std::string::npos)
      s.fail("per_vm", "must name each VM's socket apart: use {name} or {uuid}");
    if (sample.find('{') != std::string::npos)
      s.fail("per_vm", "unknown placeholder (use {name}, {uuid})");
    auto parsed = transport::parse(sample);
    if (!parsed) s.fail("per_vm", parsed.error());
    if (parsed->kind != transport::Kind::unix_socket)
      s.fail("per_vm", "is a unix:PATH template (\"unix:/run/vmgate/in/{name}.sock\")");
  }
  in.hybrid_port = static_cast<std::uint32_t>(s.get_int("hybrid_port", 0, 0, 0xFFFFFFFE));
  if (auto cids = s.section("peer_cids")) {
    for (const auto& key : cids->keys()) {
      auto name = cids->optional_string(key);
      unsigned cid = 0;
      auto [p, ec] = std::from_chars(key.data(), key.data() + key.size(), cid);
      if (key.empty() || ec != std::errc() || p != key.data() + key.size())
        cids->fail(key, "must be a CID, a decimal number (\"1\" = \"labvm\")");
      if (!name || !valid_vm_name(*name)) cids->fail(key, "must name a VM (\"1\" = \"labvm\")");
      in.peer_cids[cid] = *name;
    }
    cids->reject_unknown_keys();
  }
  in.preamble_timeout = s.get_ms("preamble_timeout_ms", in.preamble_timeout, 10ms, 600'000ms);
  in.connect_timeout = s.get_ms("connect_timeout_ms", in.connect_timeout, 10ms, 600'000ms);
  in.header_timeout = s.get_ms("header_timeout_ms", in.header_timeout, 100ms, 3'600'000ms);
  in.linger = s.get_ms("linger_ms", in.linger, 0ms, 600'000ms);
  in.max_connections =
      static_cast<std::uint32_t>(s.get_int("max_connections", in.max_connections, 1, 1'000'000));
  s.reject_unknown_keys();
  return in;
}

std::map<std::string, transport::Address> read_host_services(const Section& s) {
  std::map<std::string, transport::Address> services;
  for (const auto& key : s.keys()) {
    auto uri = s.optional_string(key);
    if (!valid_vm_name(key))
      s.fail(key, "a service name is letters, digits, '-', '_' or '.' (guests send host:NAME)");
    if (!uri) s.fail(key, "must be a transport URI (\"tcp:127.0.0.1:9000\", \"unix:/run/x.sock\")");
    auto parsed = transport::parse(*uri);
    if (!parsed) s.fail(key, parsed.error());
    if (parsed->kind == transport::Kind::tcp && parsed->port == 0)
      s.fail(key, "tcp port must not be 0");
    services[key] = *parsed;
  }
  s.reject_unknown_keys();
  return services;
}

AdminConfig read_admin(const Section& s) {
  AdminConfig a;
  a.enabled = s.get_bool("enabled", a.enabled);
  if (auto address = s.optional_string("address")) {
    auto parsed = transport::parse(*address);
    if (!parsed) s.fail("address", parsed.error());
    if (parsed->kind != transport::Kind::tcp && parsed->kind != transport::Kind::unix_socket)
      s.fail("address", "the admin listener is tcp:HOST:PORT or unix:PATH");
    a.address = *parsed;
  }
  a.allow_remote = s.get_bool("allow_remote", a.allow_remote);
  if (a.enabled && !is_loopback(a.address) && !a.allow_remote) {
    s.fail("address",
           fmt::format("{} is not a loopback address: the admin API lists every VM and opens "
                       "channels to them; set allow_remote = true as well if you mean it",
                       a.address.to_string()));
  }
  s.reject_unknown_keys();
  return a;
}

ClusterConfig read_cluster(const Section& s) {
  ClusterConfig c;
  c.enabled = s.get_bool("enabled", c.enabled);
  c.host_name = s.get_string("host_name", "");
  if (!c.host_name.empty() && !valid_host_name(c.host_name))
    s.fail("host_name", "must be letters, digits, '.', '-' or '_' (it is part of etcd keys)");
  if (auto endpoints = s.get_string_array("etcd_endpoints", {}); !endpoints.empty()) {
    c.etcd_endpoints.clear();
    for (const auto& text : endpoints) {
      auto parsed = transport::parse(text);
      if (!parsed) s.fail("etcd_endpoints", parsed.error());
      if (parsed->kind != transport::Kind::tcp)
        s.fail("etcd_endpoints", fmt::format("'{}': etcd is reached at tcp:HOST:PORT", text));
      c.etcd_endpoints.push_back(*parsed);
    }
  }
  c.lease_ttl = std::chrono::seconds(s.get_int("lease_ttl_s", c.lease_ttl.count(), 2, 3600));
  c.etcd_timeout = s.get_ms("etcd_timeout_ms", c.etcd_timeout, 50ms, 60'000ms);
  c.reconcile_interval =
      s.get_ms("reconcile_interval_ms", c.reconcile_interval, 1000ms, 86'400'000ms);
  c.reconnect_min = s.get_ms("reconnect_min_ms", c.reconnect_min, 10ms, 600'000ms);
  c.reconnect_max = s.get_ms("reconnect_max_ms", c.reconnect_max, 10ms, 3'600'000ms);
  if (c.reconnect_max < c.reconnect_min)
    s.fail("reconnect_max_ms", "must not be smaller than reconnect_min_ms");
  if (auto listen = s.optional_string("peer_listen")) {
    auto parsed = transport::parse(*listen);
    if (!parsed) s.fail("peer_listen", parsed.error());
    if (parsed->kind != transport::Kind::tcp) s.fail("peer_listen", "is tcp:HOST:PORT");
    c.peer_listen = *parsed;
  }
  c.peer_address = s.get_string("peer_address", "");
  if (!c.peer_address.empty()) {
    auto parsed = transport::parse(c.peer_address);
    if (!parsed) s.fail("peer_address", parsed.error());
    if (parsed->kind != transport::Kind::tcp) s.fail("peer_address", "is tcp:HOST:PORT");
  }
  c.client_addresses = s.get_string_array("client_addresses", {});
  for (const std::string& address : c.client_addresses) {
    if (!valid_ip_address(address))
      s.fail("client_addresses", fmt::format("'{}' is not an IPv4 or IPv6 address", address));
    // A DNS answer of 0.0.0.0 or :: sends the client nowhere (or to itself).
    if (unspecified_ip_address(address))
      s.fail("client_addresses",
             fmt::format("'{}' is not an address a client can connect to", address));
  }
  c.peer_certificate = s.get_string("peer_certificate", "");
  c.peer_key = s.get_string("peer_key", "");
  c.peer_ca = s.get_string("peer_ca", "");
  c.peer_connect_timeout =
      s.get_ms("peer_connect_timeout_ms", c.peer_connect_timeout, 50ms, 600'000ms);
  c.peer_header_bytes = static_cast<std::uint32_t>(
      s.get_int("peer_header_bytes", c.peer_header_bytes, 1024, 1024 * 1024));
  if (c.enabled) {
    // Hosts trust each other's forwarded requests (the client's identity
    // and address ride in them): never without mutual TLS.
    for (auto [key, value] :
         {std::pair{"peer_certificate", &c.peer_certificate}, std::pair{"peer_key", &c.peer_key},
          std::pair{"peer_ca", &c.peer_ca}}) {
      if (value->empty())
        s.fail(key,
               "is required in cluster mode: hosts authenticate each other with TLS "
               "certificates from one cluster CA (PEM files)");
    }
    const bool wildcard =
        c.peer_listen.host == "0.0.0.0" || c.peer_listen.host == "::" || c.peer_listen.port == 0;
    if (c.peer_address.empty() && wildcard)
      s.fail("peer_address",
             fmt::format("is required when peer_listen ({}) is not an address other hosts can "
                         "connect to",
                         c.peer_listen.to_string()));
  }
  s.reject_unknown_keys();
  return c;
}

bool valid_group_name(std::string_view name) {
  auto parsed = parse_target(name);
  return parsed && parsed->kind == Target::Kind::vm && !parsed->exclude;
}

GroupsConfig read_groups(const Section& s) {
  GroupsConfig g;
  for (const std::string& name : s.keys()) {
    if (name == "joinable") continue;
    if (!valid_group_name(name))
      s.fail(name, "is not a group name (printable, no spaces, '/', ',', '[', '!' or quotes)");
    GroupDefinition group{
        .name = name, .members = s.get_string_array(name, {}), .where = {s.where(name)}};
    for (const std::string& member : group.members) {
      auto parsed = parse_target(member);
      if (!parsed) s.fail(name, fmt::format("'{}': {}", member, parsed.error()));
      if (parsed->kind == Target::Kind::list)
        s.fail(name, fmt::format("'{}': one member per string", member));
      if (parsed->exclude)
        s.fail(name, fmt::format("'{}': a group lists its members; exclude in the target that "
                                 "names the group",
                                 member));
      if (parsed->kind == Target::Kind::host_vm)
        s.fail(name, fmt::format("'{}': HOST/NAME members are not served yet", member));
    }
    g.groups.push_back(std::move(group));
  }
  if (auto joinable = s.section("joinable")) {
    for (const std::string& name : joinable->keys()) {
      if (!valid_group_name(name)) joinable->fail(name, "is not a group name");
      JoinableGroup group{.name = name, .vms = joinable->get_string_array(name, {})};
      if (group.vms.empty())
        joinable->fail(name, "names no VM that may join: [\"*\"] for any, or name globs");
      for (const std::string& vm : group.vms)
        if (auto parsed = parse_vm_pattern(vm); !parsed) joinable->fail(name, parsed.error());
      g.joinable.push_back(std::move(group));
    }
    joinable->reject_unknown_keys();
  }
  s.reject_unknown_keys();
  return g;
}

// "vms.example": labels of letters, digits, '-' and '_', each 1..63
// bytes, 253 in all (RFC 1035 §2.3.4), as the zone's SOA is written.
bool valid_dns_name(std::string_view name) {
  if (name.empty() || name.size() > 253) return false;
  std::size_t label = 0;
  for (char c : name) {
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
      continue;
    }
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '_';
    if (!ok || ++label > 63) return false;
  }
  return label != 0;
}

// "127.0.0.1:53", "[::1]:5353".
std::optional<DnsListen> parse_dns_listen(std::string_view text) {
  DnsListen l;
  std::string_view port;
  if (text.starts_with('[')) {
    const auto close = text.find("]:");
    if (close == std::string_view::npos) return std::nullopt;
    l.host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos || text.find(':') != colon) return std::nullopt;
    l.host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  unsigned value = 0;
  if (port.empty() || port.size() > 5) return std::nullopt;
  for (char c : port) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + static_cast<unsigned>(c - '0');
  }
  if (value > 65535 || !valid_ip_address(l.host)) return std::nullopt;
  l.port = static_cast<std::uint16_t>(value);
  return l;
}

DnsConfig read_dns(const Section& s, const RoutingConfig& routing) {
  DnsConfig d;
  for (const std::string& text : s.get_string_array("listen", {})) {
    auto listen = parse_dns_listen(text);
    if (!listen)
      s.fail("listen",
             fmt::format("'{}' is not a numeric HOST:PORT ('127.0.0.1:53', '[::1]:53')", text));
    d.listen.push_back(*listen);
  }
  d.addresses = s.get_string_array("addresses", {});
  for (const std::string& address : d.addresses)
    if (!valid_ip_address(address))
      s.fail("addresses", fmt::format("'{}' is not an IPv4 or IPv6 address", address));
  d.ttl_seconds = static_cast<std::uint32_t>(s.get_int("ttl_seconds", d.ttl_seconds, 0, 86'400));
  d.max_tcp_connections = static_cast<std::uint32_t>(
      s.get_int("max_tcp_connections", d.max_tcp_connections, 1, 65'536));
  d.tcp_idle_timeout = s.get_ms("tcp_idle_timeout_ms", d.tcp_idle_timeout, 100ms, 600'000ms);
  if (d.enabled()) {
    if (routing.host_suffix.empty())
      s.fail("listen", "DNS answers names under [routing] host_suffix: set it");
    if (!valid_dns_name(std::string_view(routing.host_suffix).substr(1)))
      s.fail("listen",
             fmt::format("[routing] host_suffix '{}' is not a DNS name", routing.host_suffix));
    if (d.addresses.empty())
      s.fail("addresses", "the addresses to answer for this host's VMs are needed");
  }
  s.reject_unknown_keys();
  return d;
}

HostdConfig read(const Section& root) {
  HostdConfig c;
  if (auto s = root.section("libvirt")) {
    c.libvirt.uri = s->get_string("uri", c.libvirt.uri);
    if (c.libvirt.uri.empty()) s->fail("uri", "must not be empty");
    c.libvirt.attach_vsock_on_demand =
        s->get_bool("attach_vsock_on_demand", c.libvirt.attach_vsock_on_demand);
    // Attaching a device is a write: read-only unless on demand asks for more.
    c.libvirt.read_only = s->get_bool("read_only", !c.libvirt.attach_vsock_on_demand);
    if (c.libvirt.attach_vsock_on_demand && c.libvirt.read_only)
      s->fail("attach_vsock_on_demand",
              "needs a read-write libvirt connection, and read_only = true makes it read-only");
    c.libvirt.attach_timeout =
        s->get_ms("attach_timeout_ms", c.libvirt.attach_timeout, 100ms, 600'000ms);
    c.libvirt.attached_guestd_timeout = s->get_ms(
        "attached_guestd_timeout_ms", c.libvirt.attached_guestd_timeout, 100ms, 600'000ms);
    c.libvirt.attach_retry_after =
        s->get_ms("attach_retry_after_ms", c.libvirt.attach_retry_after, 0ms, 3'600'000ms);
    c.libvirt.reconnect_min =
        s->get_ms("reconnect_min_ms", c.libvirt.reconnect_min, 10ms, 600'000ms);
    c.libvirt.reconnect_max =
        s->get_ms("reconnect_max_ms", c.libvirt.reconnect_max, 10ms, 3'600'000ms);
    if (c.libvirt.reconnect_max < c.libvirt.reconnect_min)
      s->fail("reconnect_max_ms", "must not be smaller than reconnect_min_ms");
    s->reject_unknown_keys();
  }
  if (auto s = root.section("routing")) {
    c.routing.vm_header = s->get_string("vm_header", c.routing.vm_header);
    if (!valid_header_name(c.routing.vm_header))
      s->fail("vm_header", "must be a header name (letters, digits, '-')");
    c.routing.host_suffix = s->get_string("host_suffix", "");
    if (!c.routing.host_suffix.empty() && c.routing.host_suffix.front() != '.')
      c.routing.host_suffix.insert(c.routing.host_suffix.begin(), '.');
    s->reject_unknown_keys();
  }
  if (auto s = root.section("channel")) {
    c.channel.guestd_port =
        static_cast<std::uint32_t>(s->get_int("guestd_port", c.channel.guestd_port, 1, 0xFFFFFFFE));
    c.channel.transport_template = s->get_string("transport", c.channel.transport_template);
    // Check the template's shape with sample values, so a typo fails at start-up.
    std::string sample = c.channel.transport_template;
    for (auto [key, value] : {std::pair{"{cid}", "3"}, std::pair{"{name}", "vm"},
                              std::pair{"{uuid}", "00000000-0000-0000-0000-000000000000"},
                              std::pair{"{port}", "5500"}}) {
      for (auto pos = sample.find(key); pos != std::string::npos; pos = sample.find(key))
        sample.replace(pos, std::string_view(key).size(), value);
    }
    if (sample.find('{') != std::string::npos)
      s->fail("transport", "unknown placeholder (use {cid}, {name}, {uuid}, {port})");
    if (auto parsed = transport::parse(sample); !parsed) s->fail("transport", parsed.error());
    c.channel.connect_timeout =
        s->get_ms("connect_timeout_ms", c.channel.connect_timeout, 10ms, 600'000ms);
    c.channel.connect_retry_min =
        s->get_ms("connect_retry_min_ms", c.channel.connect_retry_min, 1ms, 60'000ms);
    c.channel.connect_retry_max =
        s->get_ms("connect_retry_max_ms", c.channel.connect_retry_max, 1ms, 600'000ms);
    if (c.channel.connect_retry_max < c.channel.connect_retry_min)
      s->fail("connect_retry_max_ms", "must not be smaller than connect_retry_min_ms");
    c.channel.pool_max_idle =
        static_cast<std::uint32_t>(s->get_int("pool_max_idle", c.channel.pool_max_idle, 0, 65536));
    c.channel.pool_idle_timeout =
        s->get_ms("pool_idle_timeout_ms", c.channel.pool_idle_timeout, 100ms, 3'600'000ms);
    c.channel.max_per_vm =
        static_cast<std::uint32_t>(s->get_int("max_per_vm", c.channel.max_per_vm, 1, 1'000'000));
    // Unset, it follows a smaller max_per_vm down.
    c.channel.max_private_per_vm = static_cast<std::uint32_t>(
        s->get_int("max_private_per_vm",
                   std::min(c.channel.max_private_per_vm, c.channel.max_per_vm), 0, 1'000'000));
    if (c.channel.max_private_per_vm > c.channel.max_per_vm)
      s->fail("max_private_per_vm", "must not be larger than max_per_vm");
    c.channel.wait_timeout = s->get_ms("wait_timeout_ms", c.channel.wait_timeout, 0ms, 600'000ms);
    c.channel.max_waiting_per_vm = static_cast<std::uint32_t>(
        s->get_int("max_waiting_per_vm", c.channel.max_waiting_per_vm, 0, 1'000'000));
    s->reject_unknown_keys();
  }
  if (auto s = root.section("limits")) {
    c.limits.header_bytes = static_cast<std::uint32_t>(
        s->get_int("header_bytes", c.limits.header_bytes, 1024, 1024 * 1024));
    c.limits.request_line_bytes = static_cast<std::uint32_t>(
        s->get_int("request_line_bytes", c.limits.request_line_bytes, 64, 1024 * 1024));
    c.limits.header_fields =
        static_cast<std::uint32_t>(s->get_int("header_fields", c.limits.header_fields, 8, 10'000));
    c.limits.chunk_extension_bytes = static_cast<std::uint32_t>(
        s->get_int("chunk_extension_bytes", c.limits.chunk_extension_bytes, 0, 64 * 1024));
    c.limits.trailer_bytes = static_cast<std::uint32_t>(
        s->get_int("trailer_bytes", c.limits.trailer_bytes, 0, 1024 * 1024));
    c.limits.max_request_body = static_cast<std::uint64_t>(
        s->get_int("max_request_body", 0, 0, std::numeric_limits<std::int64_t>::max()));
    c.limits.header_timeout =
        s->get_ms("header_timeout_ms", c.limits.header_timeout, 100ms, 3'600'000ms);
    c.limits.idle_timeout =
        s->get_ms("idle_timeout_ms", c.limits.idle_timeout, 100ms, 86'400'000ms);
    c.limits.max_connections = static_cast<std::uint32_t>(
        s->get_int("max_connections", c.limits.max_connections, 1, 1'000'000));
    // Unset, each follows a smaller max_connections down.
    c.limits.max_connections_per_client = static_cast<std::uint32_t>(s->get_int(
        "max_connections_per_client",
        std::min(c.limits.max_connections_per_client, c.limits.max_connections), 1, 1'000'000));
    if (c.limits.max_connections_per_client > c.limits.max_connections)
      s->fail("max_connections_per_client", "must not be larger than max_connections");
    c.limits.max_tunnels = static_cast<std::uint32_t>(s->get_int(
        "max_tunnels", std::min(c.limits.max_tunnels, c.limits.max_connections), 1, 1'000'000));
    if (c.limits.max_tunnels > c.limits.max_connections)
      s->fail("max_tunnels", "must not be larger than max_connections");
    c.limits.client_hello_bytes = static_cast<std::uint32_t>(
        s->get_int("client_hello_bytes", c.limits.client_hello_bytes, 512, 1024 * 1024));
    c.limits.client_hello_timeout =
        s->get_ms("client_hello_timeout_ms", c.limits.client_hello_timeout, 100ms, 600'000ms);
    c.limits.stop_grace = s->get_ms("stop_grace_ms", c.limits.stop_grace, 0ms, 3'600'000ms);
    s->reject_unknown_keys();
  }
  if (auto s = root.section("inbound")) c.inbound = read_inbound(*s);
  if (auto s = root.section("host_services")) c.host_services = read_host_services(*s);
  if (auto s = root.section("fanout")) {
    c.fanout.max_body = static_cast<std::uint64_t>(s->get_int(
        "max_body", static_cast<std::int64_t>(c.fanout.max_body), 0, std::int64_t{1} << 32));
    c.fanout.max_parallel =
        static_cast<std::uint32_t>(s->get_int("max_parallel", c.fanout.max_parallel, 1, 65'536));
    c.fanout.vm_timeout = s->get_ms("vm_timeout_ms", c.fanout.vm_timeout, 10ms, 3'600'000ms);
    c.fanout.max_response = static_cast<std::uint64_t>(
        s->get_int("max_response", static_cast<std::int64_t>(c.fanout.max_response), 0,
                   std::int64_t{1} << 30));
    c.fanout.max_targets = static_cast<std::uint64_t>(
        s->get_int("max_targets", static_cast<std::int64_t>(c.fanout.max_targets), 1, 10'000'000));
    c.fanout.max_group_depth =
        static_cast<std::uint32_t>(s->get_int("max_group_depth", c.fanout.max_group_depth, 1, 64));
    s->reject_unknown_keys();
  }
  if (auto s = root.section("admin")) c.admin = read_admin(*s);
  if (auto s = root.section("cluster")) c.cluster = read_cluster(*s);
  if (auto s = root.section("dns")) c.dns = read_dns(*s, c.routing);
  // Where this host's DNS says its VMs are is where other hosts' DNS says so.
  if (c.cluster.client_addresses.empty()) c.cluster.client_addresses = c.dns.addresses;
  if (auto s = root.section("auth")) {
    c.auth.tokens_file = s->get_string("tokens_file", "");
    s->reject_unknown_keys();
  }
  if (auto s = root.section("groups")) c.groups = read_groups(*s);
  if (auto s = root.section("directory")) {
    c.directory.state_file = s->get_string("state_file", c.directory.state_file);
    if (c.directory.state_file.empty() || c.directory.state_file.front() != '/')
      s->fail("state_file", "must be an absolute path");
    s->reject_unknown_keys();
  }
  c.threads = static_cast<unsigned>(root.get_int("threads", 0, 0, 256));
  for (const auto& s : root.sections("listener")) {
    ListenerConfig l = read_listener(s, c.auth, c.routing);
    // An address names its listener on SIGHUP (hostd/listener/server.hpp):
    // two listeners on one could not both bind. Port 0 asks for a port each.
    const bool ephemeral = l.address.kind == transport::Kind::tcp && l.address.port == 0;
    for (const ListenerConfig& other : c.listeners)
      if (!ephemeral && other.address == l.address)
        s.fail("address", fmt::format("{} is the address of an earlier listener too ({})",
                                      l.address.to_string(), other.where.text));
    c.listeners.push_back(std::move(l));
  }
  for (const auto& s : root.sections("acl")) {
    AclRule rule = read_acl_rule(s, c.acl.size());
    for (const AclRule& other : c.acl)
      if (other.name == rule.name)
        s.fail("name", fmt::format("'{}' names an earlier rule too: records and /v1/check name "
                                   "the deciding rule, so names must be unique",
                                   rule.name));
    c.acl.push_back(std::move(rule));
  }
  if (c.listeners.empty()) {
    // The agent ports, on loopback, until authentication is configured.
    for (std::uint16_t port : {5986, 8114}) {
      ListenerConfig l;
      l.address =
          transport::Address{.kind = transport::Kind::tcp, .port = port, .host = "127.0.0.1"};
      l.name = l.address.to_string();
      l.guest_port = port;
      l.identity = ListenerIdentity::trusted;
      l.where.text = root.where("listener");
      c.listeners.push_back(l);
    }
  }
  root.reject_unknown_keys();
  return c;
}

}  // namespace

std::string_view identity_name(ListenerIdentity identity) {
  switch (identity) {
    case ListenerIdentity::certificate:
      return "certificate";
    case ListenerIdentity::token:
      return "token";
    case ListenerIdentity::source:
      return "source";
    case ListenerIdentity::trusted:
      break;
  }
  return "trusted";
}

HostdConfig load_hostd_config(const std::string& path) {
  return read(config::load_file(path));
}

HostdConfig parse_hostd_config(std::string_view text, const std::string& name) {
  return read(config::load_string(text, name));
}

}  // namespace vmgate::hostd
