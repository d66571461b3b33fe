#include "hostd/cluster/peer_fanout_message.hpp"

#include <charconv>

#include <fmt/format.h>
#include <boost/beast/http/field.hpp>

namespace vmgate::hostd {
namespace http = boost::beast::http;

namespace {

// Printable ASCII only, as for CONNECT (peer_channels.cpp).
bool safe_field_value(std::string_view value) {
  if (value.size() > 1024) return false;
  for (unsigned char c : value)
    if (c < 0x20 || c > 0x7e) return false;
  return true;
}

// A decimal count, digits only (RFC 9110 §8.6's form for Content-Length).
std::optional<std::uint64_t> count_of(std::string_view text) {
  if (text.empty() || text.size() > 19) return std::nullopt;
  std::uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

std::optional<std::uint64_t> count_field(const http::request_header<>& head,
                                         std::string_view name) {
  auto it = head.find(name);
  if (it == head.end()) return std::nullopt;
  // One field of a kind: a second could make two readers disagree.
  if (head.count(name) != 1) return std::nullopt;
  return count_of(it->value());
}

}  // namespace

std::string encode_peer_fanout(const PeerFanoutMessage& m) {
  std::string lines;
  for (const std::string& vm : m.vms) {
    lines += vm;
    lines += '\n';
  }
  const std::uint64_t length = lines.size() + m.agent_head.size() + m.body.size();
  std::string head = fmt::format("POST {} HTTP/1.1\r\n", peer_fanout_path);
  auto field = [&head](std::string_view name, std::string_view value) {
    if (!value.empty() && safe_field_value(value)) head += fmt::format("{}: {}\r\n", name, value);
  };
  field("Host", m.target_host);
  field("Vmgate-Host", m.target_host);
  field("Vmgate-Client", m.client);
  field("Vmgate-Identity", m.identity);
  field("Vmgate-Request-Id", m.request_id);
  head += fmt::format(
      "{}: {}\r\n{}: {}\r\n{}: {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n"
      "Accept: application/x-ndjson\r\n\r\n",
      peer_port_field, m.port, peer_vms_field, m.vms.size(), peer_head_bytes_field,
      m.agent_head.size(), peer_fanout_content_type, length);
  head += lines;
  return head;
}

bool is_peer_fanout(const http::request_header<>& head) {
  return head.method() == http::verb::post && head.target() == peer_fanout_path;
}

boost::system::result<PeerFanoutHead, Refusal> parse_peer_fanout_head(
    const http::request_header<>& head, const PeerFanoutLimits& limits) {
  PeerFanoutHead out;
  auto port = count_field(head, peer_port_field);
  if (!port || *port == 0 || *port > 65535)
    return Refusal{400, fmt::format("a fan-out message names its agent port in {} (1..65535)",
                                    peer_port_field)};
  out.port = static_cast<std::uint16_t>(*port);
  auto vms = count_field(head, peer_vms_field);
  if (!vms || *vms == 0)
    return Refusal{400, fmt::format("a fan-out message counts its VMs in {}", peer_vms_field)};
  if (*vms > limits.max_vms)
    return Refusal{413, fmt::format("a fan-out message of {} VMs exceeds fanout.max_targets ({})",
                                    *vms, limits.max_vms)};
  out.vms = *vms;
  auto head_bytes = count_field(head, peer_head_bytes_field);
  if (!head_bytes || *head_bytes == 0)
    return Refusal{
        400, fmt::format("a fan-out message sizes its agent head in {}", peer_head_bytes_field)};
  if (*head_bytes > limits.max_head_bytes)
    return Refusal{413, fmt::format("an agent head of {} bytes exceeds limits.header_bytes ({})",
                                    *head_bytes, limits.max_head_bytes)};
  out.head_bytes = *head_bytes;
  if (head.count(http::field::transfer_encoding) != 0)
    return Refusal{400, "a fan-out message is framed by Content-Length only"};
  auto length = count_field(head, "Content-Length");
  if (!length) return Refusal{411, "a fan-out message is framed by Content-Length"};
  // Each VM line: a UUID and its line end, at most max_peer_vm_line + 1.
  const std::uint64_t most = out.vms * (max_peer_vm_line + 1) + out.head_bytes + limits.max_body;
  if (*length > most)
    return Refusal{413, fmt::format("a fan-out message of {} bytes exceeds what {} VMs, its head "
                                    "and fanout.max_body ({}) can take",
                                    *length, out.vms, limits.max_body)};
  if (*length < out.vms * 2 + out.head_bytes)
    return Refusal{400, "a fan-out message is shorter than its VM lines and head"};
  out.content_length = *length;
  return out;
}

boost::system::result<PeerFanoutBody, Refusal> split_peer_fanout_body(std::string_view whole,
                                                                      const PeerFanoutHead& head) {
  PeerFanoutBody out;
  out.vms.reserve(static_cast<std::size_t>(head.vms));
  for (std::uint64_t i = 0; i < head.vms; ++i) {
    const std::size_t end = whole.substr(0, max_peer_vm_line + 1).find('\n');
    if (end == std::string_view::npos || end == 0)
      return Refusal{400, fmt::format("VM line {} of the fan-out message is empty, too long or "
                                      "not ended",
                                      i + 1)};
    out.vms.emplace_back(whole.substr(0, end));
    whole.remove_prefix(end + 1);
  }
  if (whole.size() < head.head_bytes)
    return Refusal{400, "the fan-out message ends inside its agent head"};
  out.agent_head = whole.substr(0, static_cast<std::size_t>(head.head_bytes));
  if (!out.agent_head.ends_with("\r\n\r\n"))
    return Refusal{400, "the fan-out message's agent head does not end with an empty line"};
  out.body = whole.substr(static_cast<std::size_t>(head.head_bytes));
  return out;
}

}  // namespace vmgate::hostd
