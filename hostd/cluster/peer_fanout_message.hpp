// The one message a fan-out sends each other host it reaches
// (docs/architecture.md, "Cluster"): the VMs of that host the first host
// resolved and admitted, the head their agents are to get, and the body.
//
//   POST /vmgate/v1/fanout HTTP/1.1
//   Host: kvm2
//   Vmgate-Host: kvm2                 the host the sender means to reach
//   Vmgate-Client: 203.0.113.7:51514  the original client (as for CONNECT)
//   Vmgate-Identity: token:alice
//   Vmgate-Request-Id: 5b2c0e9a
//   Vmgate-Port: 5986                 the agent port
//   Vmgate-Vms: 2                     UUID lines opening the body
//   Vmgate-Head-Bytes: 187            the agent head right after them
//   Content-Type: application/vnd.vmgate.fanout
//   Content-Length: 74 + 187 + BODY
//
//   6f1c...\n 0b7e...\n POST /wsman HTTP/1.1\r\n...\r\n\r\n BODY
//
// An origin-form POST to a path of vmgate's, never confusable with the
// CONNECT UUID:PORT of a unicast link (peer_channels.hpp). The UUIDs travel
// in the body, not in a field, because a fan-out may name fanout.max_targets
// VMs and a head is bounded by cluster.peer_header_bytes. The answer is a
// chunked 200 of NDJSON, one line per VM, then the summary
// (fanout_part_reader.hpp), or the receiver's refusal of the whole message.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <boost/beast/http/message.hpp>
#include <boost/system/result.hpp>

#include "hostd/refusal.hpp"

namespace vmgate::hostd {

inline constexpr std::string_view peer_fanout_path = "/vmgate/v1/fanout";
inline constexpr std::string_view peer_port_field = "Vmgate-Port";
inline constexpr std::string_view peer_vms_field = "Vmgate-Vms";
inline constexpr std::string_view peer_head_bytes_field = "Vmgate-Head-Bytes";
inline constexpr std::string_view peer_fanout_content_type = "application/vnd.vmgate.fanout";

// A VM line is a UUID; a receiver reads at most this much of one, so that a
// sender's mistake (a name) is refused per VM rather than mistaken for data.
inline constexpr std::size_t max_peer_vm_line = 255;

struct PeerFanoutMessage {
  std::string_view target_host;
  std::string_view client;
  std::string identity;
  std::string_view request_id;
  std::uint16_t port = 0;
  std::vector<std::string> vms;  // UUIDs
  std::string_view agent_head;   // rewritten once by the first host, ends with an empty line
  std::string_view body;
};

// The message's head and the start of its body (the VM lines); the agent
// head and the body follow as they are. Fields that would break a line are
// dropped, as for CONNECT.
std::string encode_peer_fanout(const PeerFanoutMessage& message);

// What the receiver reads the whole message within.
struct PeerFanoutLimits {
  std::uint64_t max_vms = 0;         // fanout.max_targets
  std::uint64_t max_head_bytes = 0;  // limits.header_bytes
  std::uint64_t max_body = 0;        // fanout.max_body
};

// What the head declares, checked against the limits before the body is read.
struct PeerFanoutHead {
  std::uint16_t port = 0;
  std::uint64_t vms = 0;
  std::uint64_t head_bytes = 0;
  std::uint64_t content_length = 0;
};

// Whether a head read on the peer listener is a fan-out message at all.
bool is_peer_fanout(const boost::beast::http::request_header<>& head);

// 400 for a field missing or malformed, 413 for a count or size over a limit.
boost::system::result<PeerFanoutHead, Refusal> parse_peer_fanout_head(
    const boost::beast::http::request_header<>& head, const PeerFanoutLimits& limits);

struct PeerFanoutBody {
  std::vector<std::string> vms;  // as the sender wrote them; not yet checked as UUIDs
  std::string_view agent_head;
  std::string_view body;
};

// The body split as the head declared it; 400 when it is not.
boost::system::result<PeerFanoutBody, Refusal> split_peer_fanout_body(std::string_view whole,
                                                                      const PeerFanoutHead& head);

}  // namespace vmgate::hostd
