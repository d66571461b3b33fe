// What one client request did, logged as one `event=request` line (and
// counted in the metrics) when the record is destroyed: routed or refused,
// forwarded or tunnelled, whichever way it ended. It lives where the request
// does (a tunnel's, as long as the tunnel): moved there, and only the record
// it was moved to is logged.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "hostd/authz/access_policy.hpp"
#include "hostd/identity/identity.hpp"
#include "hostd/metrics/hostd_metrics.hpp"
#include "hostd/request_id.hpp"

namespace vmgate::hostd {

// Why a request that had reached its agent was cut short, logged as
// `aborted=VALUE`: its VM stopped, vanished or took a new CID under it.
inline constexpr std::string_view aborted_vm_stopped = "vm_stopped";

struct RequestRecord {
  using clock = std::chrono::steady_clock;

  RequestRecord() = default;
  RequestRecord(RequestRecord&& other) noexcept;
  RequestRecord(const RequestRecord&) = delete;
  RequestRecord& operator=(const RequestRecord&) = delete;
  ~RequestRecord();

  // Who asked, and what the ACL rules said if admission got that far
  // (Admitted::access, Refused::access).
  void note_access(const Identity& who, const std::optional<AccessDecision>& decision);

  std::string id = new_request_id();
  std::uint64_t conn = 0;     // the client connection that made it
  std::string_view listener;  // the listener's configured name: lives as long as hostd
  // Owned: a tunnel's record outlives the client connection's frames.
  std::string client;
  std::string method;
  std::string form = "-";
  std::string target = "-";
  std::string vm = "-";
  std::string identity = "-";            // Identity::to_string()
  std::optional<AccessDecision> access;  // logged as acl=allow|deny rule=NAME
  unsigned port = 0;
  unsigned status = 0;
  std::string reason;
  std::string_view aborted;  // empty, or one of the aborted_* values above
  bool reused_channel = false;
  std::uint64_t bytes_in = 0;
  std::uint64_t bytes_out = 0;
  HostdMetrics* metrics = nullptr;
  clock::time_point start = clock::now();

 private:
  bool moved_away_ = false;
};

}  // namespace vmgate::hostd
