#include "hostd/admin/admin_api.hpp"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>

#include <fmt/format.h>

#include <boost/beast/http/message.hpp>

#include "common/log.hpp"
#include "hostd/admission/admission.hpp"
#include "hostd/channel/channel.hpp"
#include "hostd/cluster/peer_channels.hpp"
#include "hostd/guestside/guest_reach.hpp"
#include "hostd/reload/running_config.hpp"
#include "hostd/request_id.hpp"

namespace vmgate::hostd {
namespace {

using json = nlohmann::json;
using clock = std::chrono::steady_clock;

constexpr std::string_view text_plain = "text/plain; charset=utf-8";

// Milliseconds with microsecond resolution: enough to see a vsock round trip.
double ms_since(clock::time_point start) {
  double ms = std::chrono::duration<double, std::milli>(clock::now() - start).count();
  return std::round(ms * 1000) / 1000;
}

AdminResponse json_response(unsigned status, const json& body) {
  // Names come from libvirt and targets from callers: never fail on bad UTF-8.
  return AdminResponse{status, "application/json",
                       body.dump(-1, ' ', false, json::error_handler_t::replace) + "\n"};
}

AdminResponse text_response(unsigned status, std::string body) {
  return AdminResponse{status, std::string(text_plain), std::move(body) + "\n"};
}

AdminResponse missing_parameter(std::string_view endpoint, std::string_view usage) {
  return json_response(400, {{"error", fmt::format("{} needs {}", endpoint, usage)}});
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// application/x-www-form-urlencoded: '+' is a space, %XX a byte; a broken
// escape is kept as written.
std::string percent_decode(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '+') {
      out += ' ';
    } else if (in[i] == '%' && i + 2 < in.size() && hex_value(in[i + 1]) >= 0 &&
               hex_value(in[i + 2]) >= 0) {
      out += static_cast<char>(hex_value(in[i + 1]) * 16 + hex_value(in[i + 2]));
      i += 2;
    } else {
      out += in[i];
    }
  }
  return out;
}

// The admin API speaks for the operator on its own listener.
const Identity& operator_identity() {
  static const Identity identity{Identity::Kind::trusted_listener, "admin"};
  return identity;
}

// Admits `target` as a request naming it in the VM header, to `port`, from
// `identity`, would be.
std::string_view local_host_of(const AdminContext& context) {
  return context.peers ? std::string_view(context.peers->local_host()) : std::string_view();
}

boost::system::result<Admitted, Refused> admit_target(const AdminContext& context,
                                                      std::string_view target, std::uint16_t port,
                                                      const Identity& identity) {
  namespace http = boost::beast::http;
  http::request_header<> head;
  head.method(http::verb::get);
  head.target("/");
  head.version(11);
  head.set(context.config.routing.vm_header, target);
  const AdmissionContext admission{context.config.routing, context.config.channel,
                                   context.config.limits,  context.directory,
                                   context.policy,         local_host_of(context)};
  return admit(AdmissionRequest{.head = head, .guest_port = port, .identity = identity}, admission);
}

std::uint16_t first_guest_port(const HostdConfig& config) {
  return config.listeners.empty() ? 0 : config.listeners[0].guest_port;
}

// The parts of a check, in the order they happen; the first failure ends it.
struct CheckReport {
  json hops = json::array();
  unsigned status = 200;
  std::string reason;

  json& hop(std::string_view name, bool ok, double ms) {
    hops.push_back({{"hop", name}, {"ok", ok}, {"ms", ms}});
    return hops.back();
  }
  void fail(unsigned status_in, std::string reason_in) {
    status = status_in;
    reason = std::move(reason_in);
  }
};

// What a finished check was of, for its answer and its admin_check line.
struct CheckSubject {
  std::string_view target;
  std::optional<std::uint16_t> port;  // none: a host service
  std::string_view request_id;
  std::string_view client;
  std::string_view vm;  // "-" when none was found
  std::string identity;
  std::optional<AccessDecision> access;
};

AdminResponse check_answer(CheckReport& report, const CheckSubject& subject, double elapsed) {
  json out = {{"target", subject.target},
              {"port", subject.port ? json(*subject.port) : json(nullptr)},
              {"request_id", subject.request_id},
              {"ok", report.status == 200},
              {"status", report.status},
              {"elapsed_ms", elapsed},
              {"hops", std::move(report.hops)}};
  out["identity"] = subject.identity;
  const auto& access = subject.access;
  if (access) out["acl"] = {{"allowed", access->allowed}, {"rule", access->rule}};
  if (report.status != 200) out["reason"] = report.reason;
  auto line = report.status == 200 ? log::info("admin_check") : log::warn("admin_check");
  line.kv("req", subject.request_id)
      .kv("client", subject.client)
      .kv("target", subject.target)
      .kv("vm", subject.vm);
  if (subject.port) line.kv("port", static_cast<unsigned>(*subject.port));
  line.kv("identity", subject.identity)
      .kv("status", report.status)
      .kv("ms", static_cast<long long>(elapsed));
  if (access) line.kv("acl", access->allowed ? "allow" : "deny").kv("rule", access->rule);
  if (report.status != 200) line.kv("reason", report.reason);
  return json_response(report.status, out);
}

}  // namespace

std::optional<std::string> query_param(std::string_view request_target, std::string_view key) {
  auto q = request_target.find('?');
  if (q == std::string_view::npos) return std::nullopt;
  std::string_view query = request_target.substr(q + 1);
  while (!query.empty()) {
    auto amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    auto eq = pair.find('=');
    std::string_view name = pair.substr(0, eq);
    if (percent_decode(name) != key) continue;
    return eq == std::string_view::npos ? std::string() : percent_decode(pair.substr(eq + 1));
  }
  return std::nullopt;
}

json vm_json(const VmRecord& vm, const ChannelConfig& channel, std::string_view local_host) {
  json out = {{"name", vm.name},
              {"uuid", vm.uuid},
              {"cid", vm.cid ? json(*vm.cid) : json(nullptr)},
              {"state", state_name(vm.state)},
              {"host", vm.host},
              {"transport", nullptr},
              {"networks", vm.networks},
              {"groups", vm.groups}};
  if (!local_host.empty() && vm.host != local_host) {
    // Its channel is its own host's to make.
    out["via_host"] = vm.host;
  } else if (auto address = channel_address(channel, vm)) {
    out["transport"] = address->to_string();
  } else {
    out["transport_error"] = address.error().reason;
  }
  return out;
}

AdminResponse vms_response(const AdminContext& context) {
  auto vms = context.directory.snapshot();
  std::sort(vms.begin(), vms.end(), [](const VmRecord& a, const VmRecord& b) {
    return std::tie(a.name, a.uuid) < std::tie(b.name, b.uuid);
  });
  json out = json::array();
  for (const auto& vm : vms)
    out.push_back(vm_json(vm, context.config.channel, local_host_of(context)));
  return json_response(200, out);
}

namespace {

json provenance_json(const Provenance& provenance) {
  return {{"source", source_name(provenance.source)},
          {"rule", provenance.rule},
          {"via", provenance.via}};
}

std::string_view result_name(Selection::Status status) {
  switch (status) {
    case Selection::Status::found:
      return "found";
    case Selection::Status::not_found:
      return "not_found";
    case Selection::Status::ambiguous:
      return "ambiguous";
    case Selection::Status::invalid:
      return "invalid";
    case Selection::Status::unsupported:
      return "unsupported";
  }
  return "invalid";
}

unsigned resolution_status(Selection::Status status) {
  switch (status) {
    case Selection::Status::found:
      return 200;
    case Selection::Status::not_found:
      return 404;
    case Selection::Status::ambiguous:
      return 409;
    case Selection::Status::invalid:
      return 400;
    case Selection::Status::unsupported:
      return 501;
  }
  return 400;
}

// The set, each VM with the rule that added it, and what was excluded.
json resolution_json(const Resolution& resolution, const ChannelConfig& channel,
                     std::string_view local_host) {
  json out = {{"result", result_name(resolution.status)}};
  if (resolution.status != Selection::Status::found) out["error"] = resolution.reason;
  json vms = json::array();
  for (const ResolvedVm& resolved : resolution.vms) {
    json vm = vm_json(resolved.vm, channel, local_host);
    vm["added_by"] = provenance_json(resolved.added_by);
    vms.push_back(std::move(vm));
  }
  json excluded = json::array();
  for (const ExcludedVm& gone : resolution.excluded) {
    excluded.push_back({{"name", gone.vm.name},
                        {"uuid", gone.vm.uuid},
                        {"state", state_name(gone.vm.state)},
                        {"host", gone.vm.host},
                        {"excluded_by", gone.excluded_by},
                        {"reached_by", provenance_json(gone.added_by)}});
  }
  out["count"] = resolution.vms.size();
  out["vms"] = std::move(vms);
  out["excluded"] = std::move(excluded);
  out["unknown"] = resolution.unknown;
  if (!resolution.candidates.empty()) out["candidates"] = resolution.candidates;
  return out;
}

}  // namespace

AdminResponse groups_response(const AdminContext& context) {
  json out = json::array();
  for (const GroupReport& group : context.directory.groups()) {
    json members = json::array();
    for (const ResolvedVm& member : group.members.vms) {
      members.push_back({{"name", member.vm.name},
                         {"uuid", member.vm.uuid},
                         {"state", state_name(member.vm.state)},
                         {"host", member.vm.host},
                         {"from", source_name(member.added_by.source)},
                         {"rule", member.added_by.rule},
                         {"via", member.added_by.via}});
    }
    json entry = {{"name", group.name},
                  {"in_config", group.in_config},
                  {"config_members", group.config_members},
                  {"joinable", !group.may_join.empty()},
                  {"may_join", group.may_join},
                  {"members", std::move(members)},
                  {"unknown", group.members.unknown}};
    if (group.members.status != Selection::Status::found) entry["note"] = group.members.reason;
    out.push_back(std::move(entry));
  }
  return json_response(200, out);
}

AdminResponse resolve_response(const AdminContext& context, std::string_view target) {
  json out = {{"target", target}};
  // A target naming many VMs is shown in full, each VM with its rule; the
  // client connection delivers it as a fan-out (hostd/fanout).
  if (auto parsed = parse_target(target);
      parsed && !parsed->single_vm() && parsed->kind != Target::Kind::host_vm) {
    Resolution resolution = context.directory.resolve(*parsed);
    out.update(resolution_json(resolution, context.config.channel, local_host_of(context)));
    if (resolution.status == Selection::Status::found) out["routable"] = true;
    return json_response(resolution_status(resolution.status), out);
  }
  auto admitted =
      admit_target(context, target, first_guest_port(context.config), operator_identity());
  if (admitted) {
    out["result"] = "found";
    out["vm"] = vm_json(admitted->destination.vm, context.config.channel, local_host_of(context));
    out["routable"] = true;
    return json_response(200, out);
  }
  const Refused& refused = admitted.error();
  switch (refused.step) {
    case AdmissionStep::route:
      out["result"] = "invalid";
      break;
    case AdmissionStep::select:
      out["result"] = refused.refusal.status == 501   ? "unsupported"
                      : refused.refusal.status == 409 ? "ambiguous"
                                                      : "not_found";
      if (!refused.candidates.empty()) out["candidates"] = refused.candidates;
      break;
    default:
      // Found, but a request would not be served now: say why, as it would.
      out["result"] = "found";
      out["vm"] = vm_json(*refused.vm, context.config.channel, local_host_of(context));
      out["routable"] = false;
      out["reason"] = refused.refusal.reason;
      return json_response(200, out);
  }
  out["error"] = refused.refusal.reason;
  return json_response(refused.refusal.status, out);
}

// A host service is reached by a VM, never by a client, so its check names
// the calling VM (`as=vm:NAME`) and runs what that VM's SEND runs
// (guestside::reach_host_service: the decision, its guest_acl line, the
// connect), so it answers what the VM would get: a service listed but not
// for this VM is 404 unknown-service, as one that does not exist.
awaitable<AdminResponse> check_host_service(const AdminContext& context, const std::string& target,
                                            std::string_view service, std::string_view as,
                                            std::string_view client) {
  const auto start = clock::now();
  if (!as.starts_with("vm:") || as.size() == 3) {
    json error = {{"target", target},
                  {"error", "a host service is reached by a VM: name it with &as=vm:NAME"}};
    co_return json_response(400, error);
  }
  if (!context.running) {
    json error = {{"target", target}, {"error", "hostd has no running config to check against"}};
    co_return json_response(503, error);
  }
  const std::string caller_name(as.substr(3));
  const std::string request_id = new_request_id();
  CheckReport report;

  auto t = clock::now();
  const auto found = context.directory.find(caller_name);
  const VmRecord* caller = found.status == LookupStatus::found ? &*found.vm : nullptr;
  {
    json& hop = report.hop("caller", caller != nullptr, ms_since(t));
    if (caller) {
      hop["vm"] = vm_json(*caller, context.config.channel, local_host_of(context));
    } else {
      if (found.status == LookupStatus::ambiguous) {
        report.fail(409, fmt::format("vm name {} is ambiguous: name it by UUID", caller_name));
        hop["candidates"] = found.candidates;
      } else {
        report.fail(404, fmt::format("no vm is called {}", caller_name));
      }
      hop["error"] = report.reason;
    }
  }
  // Another host's VM reaches that host's services, under its config.
  if (caller && context.peers && context.peers->remote(*caller)) {
    report.fail(400, fmt::format("vm {} runs on host {}: its hostd answers for the host services "
                                 "it may reach",
                                 caller->name, caller->host));
    report.hops.back()["ok"] = false;
    report.hops.back()["error"] = report.reason;
    caller = nullptr;
  }

  std::optional<AccessDecision> access;
  if (caller) {
    access = context.running->services.decide(*caller, service);
    const bool listed = context.running->config.host_services.contains(std::string(service));
    t = clock::now();
    auto reached =
        co_await guestside::reach_host_service(*caller, service, *context.running, request_id);
    const double reach_ms = ms_since(t);
    const bool admitted = listed && access->allowed;
    {
      json& hop = report.hop("authorize", admitted, 0.0);
      hop["rule"] = access->rule;
      if (!admitted) {
        report.fail(reached ? 404 : reached.error().status,
                    reached ? "unknown-service" : reached.error().reason);
        hop["error"] = report.reason;
      }
    }
    if (admitted) {
      json& hop = report.hop("service", bool(reached), reach_ms);
      hop["address"] =
          context.running->config.host_services.at(std::string(service)).address.to_string();
      if (reached) {
        error_code ignored;
        reached->stream.close(ignored);
      } else {
        report.fail(reached.error().status, reached.error().reason);
        hop["error"] = report.reason;
      }
    }
  }

  const CheckSubject subject{.target = target,
                             .request_id = request_id,
                             .client = client,
                             .vm = caller_name,
                             .identity = fmt::format("vm:{}", caller_name),
                             .access = access};
  co_return check_answer(report, subject, ms_since(start));
}

awaitable<AdminResponse> check_response(const AdminContext& context, const std::string& target,
                                        const std::string& port_text, std::string_view client,
                                        const std::string& as) {
  const auto start = clock::now();
  Identity identity = operator_identity();
  if (!as.empty()) {
    auto parsed = parse_identity(as);
    if (!parsed) {
      json error = {{"target", target}, {"error", fmt::format("as: {}", parsed.error())}};
      co_return json_response(400, error);
    }
    identity = std::move(*parsed);
  }
  std::uint16_t port = first_guest_port(context.config);
  if (!port_text.empty()) {
    unsigned value = 0;
    auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), value);
    if (ec != std::errc() || end != port_text.data() + port_text.size() || value == 0 ||
        value > 65535) {
      // (Built before co_return: GCC 12 mishandles temporaries in coroutine expressions.)
      json error = {{"target", target},
                    {"error", fmt::format("port '{}' is not 1..65535", port_text)}};
      co_return json_response(400, error);
    }
    port = static_cast<std::uint16_t>(value);
  }
  if (port == 0) co_return missing_parameter("/v1/check", "a port (&port=N)");
  const std::string request_id = new_request_id();
  CheckReport report;
  std::string vm_name = "-";

  // 1. Admission, as the request path does it: the directory's answer, then
  //    whether a request would be let through, then the channel's transport.
  auto t = clock::now();
  auto admitted = admit_target(context, target, port, identity);
  if (admitted && admitted->fanout) {
    // A channel check is of one VM: /v1/resolve shows what a group names.
    json error = {{"target", target},
                  {"error", "check takes one VM; /v1/resolve shows the VMs this target names"}};
    co_return json_response(400, error);
  }
  const double admit_ms = ms_since(t);
  std::optional<Destination> destination;
  std::optional<Refused> refused;
  if (!admitted) refused = admitted.error();
  if (admitted) {
    destination = admitted->destination;
  } else {
    report.fail(refused->refusal.status, refused->refusal.reason);
  }
  const VmRecord* vm = destination ? &destination->vm : (refused->vm ? &*refused->vm : nullptr);
  auto refused_at = [&refused](AdmissionStep step) { return refused && refused->step == step; };
  {
    json& hop = report.hop("directory", vm && !refused_at(AdmissionStep::state), admit_ms);
    if (vm) {
      hop["result"] = "found";
      hop["vm"] = vm_json(*vm, context.config.channel, local_host_of(context));
      vm_name = vm->name;
    } else if (refused_at(AdmissionStep::select)) {
      hop["result"] = report.status == 409 ? "ambiguous" : "not_found";
      if (!refused->candidates.empty()) hop["candidates"] = refused->candidates;
    }
    if (!hop["ok"].get<bool>()) hop["error"] = report.reason;
  }
  const std::optional<AccessDecision> access =
      admitted ? std::optional(admitted->access) : refused->access;
  // A trusted client is not asked about: its hops stay what they were.
  if (access && access->rule != trusted_rule) {
    json& hop = report.hop("authorize", access->allowed, admit_ms);
    hop["rule"] = access->rule;
    if (!access->allowed) hop["error"] = report.reason;
  }

  // 2. The transport the channel template gives this VM, or, for a VM on
  //    another host, that host's peer link.
  const bool remote = destination && context.peers && context.peers->remote(destination->vm);
  if (destination || refused_at(AdmissionStep::channel)) {
    json& hop = report.hop("transport", bool(destination), admit_ms);
    if (remote) {
      hop["via_host"] = destination->vm.host;
    } else if (destination) {
      hop["address"] = destination->address.to_string();
    } else {
      hop["error"] = report.reason;
    }
  }

  // 3. Connect, preamble, guestd's answer: exactly what a request does
  //    (through the VM's host, whose guestd answers the same way).
  if (destination) {
    t = clock::now();
    // A named local: g++ 12 destroys a temporary in a co_await twice.
    const PeerRequest request{
        .client = client, .identity = identity.to_string(), .request_id = request_id};
    auto channel = co_await open_vm_channel(context.config.channel, context.peers, destination->vm,
                                            destination->address, port, request);
    json& hop = report.hop("channel", bool(channel), ms_since(t));
    if (channel) {
      hop["status"] = 200;
      hop["reason"] = "OK";
      error_code ignored;
      channel->stream.close(ignored);
    } else {
      hop["status"] = channel.error().status;
      hop["reason"] = channel.error().reason;
      report.fail(channel.error().status, channel.error().reason);
    }
  }

  const CheckSubject subject{.target = target,
                             .port = port,
                             .request_id = request_id,
                             .client = client,
                             .vm = vm_name,
                             .identity = identity.to_string(),
                             .access = access};
  co_return check_answer(report, subject, ms_since(start));
}

awaitable<AdminResponse> handle_admin_request(const AdminContext& context, std::string_view method,
                                              std::string_view target, std::string_view client) {
  if (method != "GET" && method != "HEAD")
    co_return text_response(405, "the admin API answers GET and HEAD only");
  std::string_view path = target.substr(0, target.find('?'));
  if (path == "/healthz") co_return text_response(200, "ok");
  if (path == "/readyz") {
    if (context.readiness.ready()) {
      // Still 200: the host routes from its cache (readiness.hpp).
      if (auto why = context.readiness.degraded(); !why.empty())
        co_return text_response(200, "degraded: " + why);
      co_return text_response(200, "ready");
    }
    std::string why = "not ready: " + context.readiness.reason();
    co_return text_response(503, std::move(why));
  }
  if (path == "/metrics") {
    co_return AdminResponse{200, std::string(metrics_content_type), context.metrics.render()};
  }
  if (path == "/v1/vms") co_return vms_response(context);
  if (path == "/v1/groups") co_return groups_response(context);
  if (path == "/v1/resolve") {
    auto vm = query_param(target, "target");
    if (!vm || vm->empty()) co_return missing_parameter("/v1/resolve", "?target=NAME");
    co_return resolve_response(context, *vm);
  }
  if (path == "/v1/check") {
    auto vm = query_param(target, "target");
    if (!vm || vm->empty())
      co_return missing_parameter("/v1/check", "?target=NAME[&port=N][&as=IDENTITY]");
    std::string port = query_param(target, "port").value_or("");
    std::string as = query_param(target, "as").value_or("");
    if (vm->starts_with("host:")) {
      if (!port.empty()) {
        json error = {{"target", *vm}, {"error", "a host service has no port: drop &port"}};
        co_return json_response(400, error);
      }
      const std::string service = vm->substr(5);
      AdminResponse response = co_await check_host_service(context, *vm, service, as, client);
      co_return response;
    }
    AdminResponse response = co_await check_response(context, *vm, port, client, as);
    co_return response;
  }
  co_return text_response(
      404,
      "no such endpoint; the admin API has /healthz /readyz /metrics /v1/vms "
      "/v1/groups /v1/resolve?target=NAME /v1/check?target=NAME&port=N&as=IDENTITY "
      "/v1/check?target=host:NAME&as=vm:NAME");
}

}  // namespace vmgate::hostd
