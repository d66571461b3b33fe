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

// Which end went away in the middle of a message, logged as `aborted=`:
// the message it was carrying was cut, and hostd cut it for the other end
// too rather than finish it as if complete. `upstream`: the agent, guestd
// or the channel ended or failed mid-response (or mid-tunnel); `client`: the
// client did, mid-request body, mid-response or mid-tunnel; `vm_stopped`: its
// VM stopped, vanished or took a new CID under it (this one overrides).
enum class Aborted : unsigned char { none, upstream, client, vm_stopped };

std::string_view to_string(Aborted aborted);

struct RequestRecord {
  using clock = std::chrono::steady_clock;

  RequestRecord() = default;
  RequestRecord(RequestRecord&& other) noexcept;
  RequestRecord(const RequestRecord&) = delete;
  RequestRecord& operator=(const RequestRecord&) = delete;
  ~RequestRecord();

  // Records the first end that went away; a later one is its consequence.
  void note_aborted(Aborted by) {
    if (aborted == Aborted::none) aborted = by;
  }

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
  Aborted aborted = Aborted::none;  // the first end that went away mid-message
  bool reused_channel = false;
  // A fan-out request: the VMs it named, and how many of them did not answer
  // below 400 (each VM has a line of its own, event=fanout_vm, with this id).
  std::uint32_t fanout_vms = 0;
  std::uint32_t fanout_failed = 0;
  std::uint64_t bytes_in = 0;
  std::uint64_t bytes_out = 0;
  HostdMetrics* metrics = nullptr;
  clock::time_point start = clock::now();

 private:
  bool moved_away_ = false;
};

}  // namespace vmgate::hostd
