// The admin API: what hostd's admin listener answers (docs/architecture.md,
// "Admin API"). Plain functions from a request target to a response, so
// tests reach them without a socket; admin_server.cpp does the HTTP.
// /v1/resolve and /v1/check admit the target exactly as a request naming it
// in the VM header would be admitted (hostd/admission).
//
//   GET /healthz                      200 "ok"
//   GET /readyz                       200 "ready", or 503 with the reason
//   GET /metrics                      Prometheus text format 0.0.4
//   GET /v1/vms                       every VM the directory knows
//   GET /v1/groups                    every group: members, and where each came from
//   GET /v1/resolve?target=X          the directory's answer: 200 / 404 / 409; for a
//                                     target naming many VMs, each VM with the rule
//                                     that added it, and what was excluded (400 a
//                                     cycle, too deep or too many)
//   GET /v1/check?target=X[&port=N][&as=IDENTITY]
//                                     opens a channel end to end, hop by hop;
//                                     `as` (parse_identity: token:NAME,
//                                     cert:NAME, source:ADDRESS) asks for that
//                                     client instead of the operator, and the
//                                     answer's "acl" names the deciding rule
//   GET /v1/check?target=host:NAME&as=vm:VM
//                                     whether VM may reach host service NAME
//                                     and it accepts a connection, as the VM's
//                                     SEND to it is answered (hostd/guestside)
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/asio.hpp"
#include "hostd/admin/readiness.hpp"
#include "hostd/authz/access_policy.hpp"
#include "hostd/config/hostd_config.hpp"
#include "hostd/directory/directory.hpp"
#include "hostd/metrics/hostd_metrics.hpp"

namespace vmgate::hostd {

struct RunningConfig;

class PeerChannels;

struct AdminContext {
  const HostdConfig& config;
  const Directory& directory;
  HostdMetrics& metrics;
  const Readiness& readiness;
  const AccessPolicy& policy;
  // In a cluster: a VM on another host is checked through that host's peer
  // listener, as a request for it is delivered. Null: every VM is this host's.
  PeerChannels* peers = nullptr;
  // The snapshot `config` and `policy` come from: a host service's check
  // (target host:NAME) asks its compiled [host_services]. Null: not checked.
  const RunningConfig* running = nullptr;
};

struct AdminResponse {
  unsigned status = 200;
  std::string content_type = "application/json";
  std::string body;
};

// Answers one admin request. `client` names the caller in logs and in the
// preamble of channels /v1/check opens.
awaitable<AdminResponse> handle_admin_request(const AdminContext& context, std::string_view method,
                                              std::string_view target, std::string_view client);

// The pieces, for tests.
// {"name", "uuid", "cid" (null: none), "state", "host", "transport" (null
// when the template cannot be filled, with "transport_error", or when the VM
// runs on a host other than `local_host`, with "via_host"), "networks",
// "groups"}
nlohmann::json vm_json(const VmRecord& vm, const ChannelConfig& channel,
                       std::string_view local_host = {});
AdminResponse vms_response(const AdminContext& context);
AdminResponse groups_response(const AdminContext& context);
AdminResponse resolve_response(const AdminContext& context, std::string_view target);
// `port` empty: the first listener's guest port. `as` empty: the operator,
// a trusted client; else the identity to check for (parse_identity).
awaitable<AdminResponse> check_response(const AdminContext& context, const std::string& target,
                                        const std::string& port, std::string_view client,
                                        const std::string& as = {});
// The percent-decoded value of `key` in a request target's query.
std::optional<std::string> query_param(std::string_view request_target, std::string_view key);

}  // namespace vmgate::hostd
