#include "hostd/config/config_sections.hpp"

#include <array>

#include <fmt/format.h>

#include "hostd/authz/access_policy.hpp"
#include "hostd/authz/acl_pattern.hpp"

namespace vmgate::hostd::config_sections {

using namespace std::chrono_literals;
using config::Section;

namespace {

bool is_loopback(const transport::Address& a) {
  if (a.kind == transport::Kind::unix_socket) return true;
  if (a.kind != transport::Kind::tcp) return false;
  return a.host == "localhost" || a.host.starts_with("127.") || a.host == "::1";
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

}  // namespace

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

}  // namespace vmgate::hostd::config_sections
