#include "hostd/proxy/request_record.hpp"

#include "common/log.hpp"

namespace vmgate::hostd {

std::string_view to_string(Aborted aborted) {
  switch (aborted) {
    case Aborted::upstream:
      return "upstream";
    case Aborted::client:
      return "client";
    case Aborted::vm_stopped:
      return "vm_stopped";
    case Aborted::none:
      break;
  }
  return "-";
}

RequestRecord::RequestRecord(RequestRecord&& other) noexcept
    : id(std::move(other.id)),
      conn(other.conn),
      listener(other.listener),
      client(std::move(other.client)),
      method(std::move(other.method)),
      form(std::move(other.form)),
      target(std::move(other.target)),
      vm(std::move(other.vm)),
      identity(std::move(other.identity)),
      access(std::move(other.access)),
      port(other.port),
      status(other.status),
      reason(std::move(other.reason)),
      aborted(other.aborted),
      reused_channel(other.reused_channel),
      fanout_vms(other.fanout_vms),
      fanout_failed(other.fanout_failed),
      bytes_in(other.bytes_in),
      bytes_out(other.bytes_out),
      metrics(other.metrics),
      start(other.start) {
  other.moved_away_ = true;
}

RequestRecord::~RequestRecord() {
  if (moved_away_) return;
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - start).count();
  {
    // The line is written when `line` goes out of scope; it comes before the
    // count, so whoever sees the request counted can also find its record.
    auto line = (status >= 500 ? log::warn("request") : log::info("request"));
    line.kv("req", id)
        .kv("conn", static_cast<unsigned long long>(conn))
        .kv("listener", listener)
        .kv("client", client)
        .kv("method", method)
        .kv("form", form)
        .kv("target", target)
        .kv("vm", vm)
        .kv("identity", identity)
        .kv("port", port)
        .kv("status", status)
        .kv("bytes_in", bytes_in)
        .kv("bytes_out", bytes_out)
        .kv("ms", static_cast<long long>(ms));
    if (reused_channel) line.kv("channel", "reused");
    if (fanout_vms) line.kv("vms", fanout_vms).kv("failed", fanout_failed);
    if (access) line.kv("acl", access->allowed ? "allow" : "deny").kv("rule", access->rule);
    if (aborted != Aborted::none) line.kv("aborted", to_string(aborted));
    if (!reason.empty()) line.kv("reason", reason);
  }
  if (metrics) {
    metrics->request_done(form, status, bytes_in, bytes_out);
    if (access && access->rule != trusted_rule) metrics->acl_decided(access->allowed);
  }
}

void RequestRecord::note_access(const Identity& who,
                                const std::optional<AccessDecision>& decision) {
  identity = who.to_string();
  access = decision;
}

}  // namespace vmgate::hostd
