// What one fan-out request gives back (docs/architecture.md, "Fan-out"): one
// result per VM, each in exactly one class, and a summary naming the VMs of
// every class, so that no VM the client may see is ever silently missing.
//
// The two ways a client reads them, both written here and nowhere else:
//  - multipart/mixed (RFC 2046 §5.1), the default: one part per VM with part
//    headers X-VM-Id, X-VM-Uuid, X-VM-Status and X-VM-Class, whose content is
//    the agent's response as an HTTP message (application/http, RFC 9112
//    §10.2), or the one hostd wrote for the VM when no agent answered; then a
//    last part, application/json, the summary;
//  - NDJSON (Accept: application/x-ndjson): one JSON object per line per VM,
//    then the summary's.
// Both are pure functions of the results, so they are tested without sockets.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "hostd/refusal.hpp"

namespace vmgate::hostd {

// Every VM a fan-out names ends in exactly one of these.
enum class VmClass : unsigned char {
  answered,     // the agent answered below 400
  refused,      // the ACL rules, or guestd (a port it does not allow), refused it: 403
  unreachable,  // no channel, guestd or the agent unreachable, the answer cut or malformed
  timed_out,    // no whole answer within fanout.vm_timeout_ms (or a guestd/agent timeout)
  not_running,  // the VM is not running: not tried
  not_found,    // a name the target lists that no VM has: 404
  agent_error,  // the agent answered 400 or above
  too_large,    // the agent's response body is over fanout.max_response: dropped
};
inline constexpr std::size_t vm_class_count = 8;
std::string_view class_name(VmClass c);

// The agent's response as hostd relays it in a part: its head (hop-by-hop
// fields removed) and its whole body, framed by Content-Length.
struct AgentResponse {
  unsigned status = 0;
  std::string reason;  // the reason phrase as the agent wrote it
  std::vector<std::pair<std::string, std::string>> fields;
  std::string body;
};

struct VmResult {
  std::string name;
  std::string uuid;
  VmClass vm_class = VmClass::unreachable;
  // X-VM-Status: the agent's status when it answered, else the status hostd
  // gives the VM (403, 502, 503, 504).
  unsigned status = 0;
  std::string reason;                     // hostd's, when no agent response is relayed
  std::optional<AgentResponse> response;  // answered, agent_error
  std::chrono::milliseconds elapsed{0};
};

// A VM the agent answered for: answered below 400, agent_error from 400 on.
VmResult agent_result(std::string name, std::string uuid, AgentResponse response);
// A VM no agent response is relayed for, from the refusal hostd would have
// answered a unicast request to it with: 403 refused, 404 not found, 504
// timed out, the rest unreachable. (not_running and too_large are set by who knows.)
VmResult refused_result(std::string name, std::string uuid, const Refusal& refusal);

// The last part or line: how many VMs, and which, in every class.
class FanoutSummary {
 public:
  void add(const VmResult& result);
  std::size_t total() const { return total_; }
  std::size_t count(VmClass c) const { return names_[static_cast<std::size_t>(c)].size(); }
  const std::vector<std::string>& names(VmClass c) const {
    return names_[static_cast<std::size_t>(c)];
  }
  std::size_t failed() const { return total_ - count(VmClass::answered); }
  // {"summary": true, "request_id", "vms", "answered", "failed", "ms",
  //  "classes": {CLASS: {"count", "vms": [NAME...]}...}}, every class present.
  std::string json(std::string_view request_id, std::chrono::milliseconds elapsed) const;

 private:
  std::size_t total_ = 0;
  std::array<std::vector<std::string>, vm_class_count> names_;
};

// Whether the client asked for NDJSON (Accept: application/x-ndjson, at a
// q-value above 0); anything else gets multipart/mixed.
bool wants_ndjson(std::string_view accept);

// A boundary no part can contain by chance: 30 random hex digits after a
// fixed prefix (RFC 2046 §5.1.1: at most 70 characters).
std::string new_boundary();
std::string multipart_content_type(std::string_view boundary);
inline constexpr std::string_view ndjson_content_type = "application/x-ndjson";

// One VM's part, with the delimiter that opens it and the line end that
// closes it; the summary's part; the close delimiter.
std::string multipart_part(const VmResult& result, std::string_view boundary);
std::string multipart_summary(const FanoutSummary& summary, std::string_view boundary,
                              std::string_view request_id, std::chrono::milliseconds elapsed);
std::string multipart_close(std::string_view boundary);

// One VM's line: {"vm", "uuid", "class", "status", "reason"?, "ms",
// "response"?: {"status", "reason", "headers": [[NAME, VALUE]...], "body",
// "body_encoding": "utf-8" | "base64"}}, and a line end.
std::string ndjson_line(const VmResult& result);
std::string ndjson_summary(const FanoutSummary& summary, std::string_view request_id,
                           std::chrono::milliseconds elapsed);

// What one NDJSON line read back is: a VM's result, as ndjson_line wrote it
// (a base64 body decoded), or the summary that ends the stream. How another
// host's results come back in a cross-host fan-out (fanout_part_reader.hpp).
struct ResultLine {
  std::optional<VmResult> result;  // empty: the summary
};
// Empty when the line is not one ndjson_line or ndjson_summary writes: not
// JSON, a member missing or of the wrong type, an unknown class, a status
// outside 100..599, a body that is not base64 when it says it is.
std::optional<ResultLine> parse_ndjson_line(std::string_view line);

// Whether `bytes` is well-formed UTF-8 (RFC 3629 §4): no overlongs, no
// surrogates, nothing past U+10FFFF.
bool valid_utf8(std::string_view bytes);

}  // namespace vmgate::hostd
