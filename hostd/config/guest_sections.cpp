#include "hostd/config/config_sections.hpp"

#include <algorithm>
#include <charconv>

#include <fmt/format.h>

#include "hostd/authz/acl_pattern.hpp"
#include "hostd/route/target.hpp"

namespace vmgate::hostd::config_sections {

using namespace std::chrono_literals;
using config::Section;

namespace {

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

}  // namespace

ChannelConfig read_channel(const Section& s) {
  ChannelConfig c;
  c.guestd_port =
      static_cast<std::uint32_t>(s.get_int("guestd_port", c.guestd_port, 1, 0xFFFFFFFE));
  c.transport_template = s.get_string("transport", c.transport_template);
  // Its shape checked with sample values, so that a typo fails at start-up.
  const std::string sample = with_samples(c.transport_template);
  if (sample.find('{') != std::string::npos)
    s.fail("transport", "unknown placeholder (use {cid}, {name}, {uuid}, {port})");
  if (auto parsed = transport::parse(sample); !parsed) s.fail("transport", parsed.error());
  c.connect_timeout = s.get_ms("connect_timeout_ms", c.connect_timeout, 10ms, 600'000ms);
  c.connect_retry_min = s.get_ms("connect_retry_min_ms", c.connect_retry_min, 1ms, 60'000ms);
  c.connect_retry_max = s.get_ms("connect_retry_max_ms", c.connect_retry_max, 1ms, 600'000ms);
  if (c.connect_retry_max < c.connect_retry_min)
    s.fail("connect_retry_max_ms", "must not be smaller than connect_retry_min_ms");
  c.pool_max_idle =
      static_cast<std::uint32_t>(s.get_int("pool_max_idle", c.pool_max_idle, 0, 65536));
  c.pool_idle_timeout = s.get_ms("pool_idle_timeout_ms", c.pool_idle_timeout, 100ms, 3'600'000ms);
  c.max_per_vm = static_cast<std::uint32_t>(s.get_int("max_per_vm", c.max_per_vm, 1, 1'000'000));
  // Unset, it follows a smaller max_per_vm down.
  c.max_private_per_vm = static_cast<std::uint32_t>(
      s.get_int("max_private_per_vm", std::min(c.max_private_per_vm, c.max_per_vm), 0, 1'000'000));
  if (c.max_private_per_vm > c.max_per_vm)
    s.fail("max_private_per_vm", "must not be larger than max_per_vm");
  c.wait_timeout = s.get_ms("wait_timeout_ms", c.wait_timeout, 0ms, 600'000ms);
  c.max_waiting_per_vm = static_cast<std::uint32_t>(
      s.get_int("max_waiting_per_vm", c.max_waiting_per_vm, 0, 1'000'000));
  s.reject_unknown_keys();

  return c;
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

std::map<std::string, HostService> read_host_services(const Section& s) {
  constexpr std::string_view uri_form =
      "a transport URI (\"tcp:127.0.0.1:9000\", \"unix:/run/x.sock\")";
  // The URI at `key` of `section`, where an error is reported.
  auto address_at = [&](const Section& section, std::string_view key) {
    auto uri = section.optional_string(key);
    if (!uri) section.fail(key, fmt::format("is required: {}", uri_form));
    auto parsed = transport::parse(*uri);
    if (!parsed) section.fail(key, parsed.error());
    if (parsed->kind == transport::Kind::tcp && parsed->port == 0)
      section.fail(key, "tcp port must not be 0");
    return *parsed;
  };
  std::map<std::string, HostService> services;
  for (const auto& key : s.keys()) {
    if (!valid_vm_name(key))
      s.fail(key, "a service name is letters, digits, '-', '_' or '.' (guests send host:NAME)");
    HostService service;
    if (s.is_table(key)) {
      // [host_services.NAME]: for the calling VMs `vms` names.
      const Section entry = *s.section(key);
      service.address = address_at(entry, "address");
      service.vms = entry.get_string_array("vms", {});
      if (service.vms.empty())
        entry.fail("vms",
                   "is required and must not be empty: the calling VMs this service is for "
                   "([\"db*\"], a UUID; [\"*\"] for every VM)");
      for (const auto& text : service.vms)
        if (auto parsed = parse_vm_pattern(text); !parsed) entry.fail("vms", parsed.error());
      entry.reject_unknown_keys();
    } else {
      service.address = address_at(s, key);
    }
    services[key] = std::move(service);
  }
  s.reject_unknown_keys();
  return services;
}

}  // namespace vmgate::hostd::config_sections
