#include "hostd/config/hostd_config.hpp"

#include <algorithm>
#include <limits>

#include <fmt/format.h>

#include "common/config_reader.hpp"
#include "hostd/authz/acl_pattern.hpp"
#include "hostd/config/config_sections.hpp"
#include "hostd/route/target.hpp"

namespace vmgate::hostd {
namespace {

using namespace std::chrono_literals;
using config::Section;

bool valid_header_name(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    bool ok =
        (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
    if (!ok) return false;
  }
  return true;
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
  if (auto s = root.section("channel")) c.channel = config_sections::read_channel(*s);
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
  if (auto s = root.section("inbound")) c.inbound = config_sections::read_inbound(*s);
  if (auto s = root.section("host_services"))
    c.host_services = config_sections::read_host_services(*s);
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
  if (auto s = root.section("admin")) c.admin = config_sections::read_admin(*s);
  if (auto s = root.section("cluster")) c.cluster = config_sections::read_cluster(*s);
  if (auto s = root.section("dns")) c.dns = config_sections::read_dns(*s, c.routing);
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
    ListenerConfig l = config_sections::read_listener(s, c.auth, c.routing);
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
    AclRule rule = config_sections::read_acl_rule(s, c.acl.size());
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
