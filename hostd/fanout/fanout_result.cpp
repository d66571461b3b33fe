#include "hostd/fanout/fanout_result.hpp"

#include <algorithm>
#include <random>

#include <fmt/format.h>
#include <boost/beast/http/status.hpp>
#include <nlohmann/json.hpp>

namespace vmgate::hostd {
namespace {

using json = nlohmann::json;

constexpr std::array<std::string_view, vm_class_count> class_names = {
    "answered",    "refused",   "unreachable", "timed_out",
    "not_running", "not_found", "agent_error", "too_large"};

// Part header values come from VM names and UUIDs, which the directory
// validated, and from hostd's own reasons; still, nothing may add a line.
std::string one_line(std::string_view text) {
  std::string out(text);
  for (char& c : out)
    if (c == '\r' || c == '\n') c = ' ';
  return out;
}

std::string reason_phrase(unsigned status) {
  return std::string(
      boost::beast::http::obsolete_reason(static_cast<boost::beast::http::status>(status)));
}

// The part's content: the agent's response, or the one hostd writes for a VM
// no agent answered for (one text line, as hostd's own error responses).
std::string http_message(const VmResult& r) {
  std::string out;
  if (r.response) {
    const AgentResponse& a = *r.response;
    out = fmt::format("HTTP/1.1 {} {}\r\n", a.status, one_line(a.reason));
    for (const auto& [name, value] : a.fields)
      out += fmt::format("{}: {}\r\n", name, one_line(value));
    out += fmt::format("Content-Length: {}\r\n\r\n", a.body.size());
    out += a.body;
    return out;
  }
  const std::string body =
      fmt::format("{} {}: {}\n", r.status, reason_phrase(r.status), one_line(r.reason));
  out = fmt::format(
      "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: "
      "{}\r\n\r\n",
      r.status, reason_phrase(r.status), body.size());
  out += body;
  return out;
}

std::string base64(std::string_view in) {
  static constexpr char alphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= in.size(); i += 3) {
    const unsigned v = (static_cast<unsigned char>(in[i]) << 16) |
                       (static_cast<unsigned char>(in[i + 1]) << 8) |
                       static_cast<unsigned char>(in[i + 2]);
    out += alphabet[(v >> 18) & 63];
    out += alphabet[(v >> 12) & 63];
    out += alphabet[(v >> 6) & 63];
    out += alphabet[v & 63];
  }
  if (const std::size_t left = in.size() - i; left > 0) {
    unsigned v = static_cast<unsigned char>(in[i]) << 16;
    if (left == 2) v |= static_cast<unsigned char>(in[i + 1]) << 8;
    out += alphabet[(v >> 18) & 63];
    out += alphabet[(v >> 12) & 63];
    out += left == 2 ? alphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

// JSON strings must be UTF-8: a value that is not (a header an agent wrote in
// Latin-1) is replaced, not allowed to fail the whole stream.
std::string dump_line(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

}  // namespace

std::string_view class_name(VmClass c) {
  return class_names[static_cast<std::size_t>(c)];
}

VmResult agent_result(std::string name, std::string uuid, AgentResponse response) {
  VmResult r{.name = std::move(name), .uuid = std::move(uuid)};
  r.status = response.status;
  r.vm_class = response.status >= 400 ? VmClass::agent_error : VmClass::answered;
  r.response = std::move(response);
  return r;
}

VmResult refused_result(std::string name, std::string uuid, const Refusal& refusal) {
  VmResult r{.name = std::move(name), .uuid = std::move(uuid)};
  r.status = refusal.status;
  r.reason = refusal.reason;
  switch (refusal.status) {
    case 403:
      r.vm_class = VmClass::refused;
      break;
    case 404:
      r.vm_class = VmClass::not_found;
      break;
    case 504:
      r.vm_class = VmClass::timed_out;
      break;
    default:
      r.vm_class = VmClass::unreachable;
  }
  return r;
}

void FanoutSummary::add(const VmResult& result) {
  ++total_;
  names_[static_cast<std::size_t>(result.vm_class)].push_back(result.name);
}

std::string FanoutSummary::json(std::string_view request_id,
                                std::chrono::milliseconds elapsed) const {
  nlohmann::json classes = nlohmann::json::object();
  for (std::size_t i = 0; i < vm_class_count; ++i) {
    // In name order, whatever order the VMs answered in.
    std::vector<std::string> names = names_[i];
    std::sort(names.begin(), names.end());
    classes[std::string(class_names[i])] = {{"count", names.size()}, {"vms", std::move(names)}};
  }
  nlohmann::json out = {{"summary", true},
                        {"request_id", request_id},
                        {"vms", total_},
                        {"answered", count(VmClass::answered)},
                        {"failed", failed()},
                        {"ms", elapsed.count()},
                        {"classes", std::move(classes)}};
  return dump_line(out);
}

bool wants_ndjson(std::string_view accept) {
  // Each element: media-range [; q=VALUE] (RFC 9110 §12.5.1).
  while (!accept.empty()) {
    const auto comma = accept.find(',');
    std::string_view element = accept.substr(0, comma);
    accept = comma == std::string_view::npos ? std::string_view() : accept.substr(comma + 1);
    const auto semi = element.find(';');
    std::string_view range = element.substr(0, semi);
    while (!range.empty() && (range.front() == ' ' || range.front() == '\t'))
      range.remove_prefix(1);
    while (!range.empty() && (range.back() == ' ' || range.back() == '\t'))
      range.remove_suffix(1);
    std::string lower(range);
    for (char& c : lower)
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (lower != ndjson_content_type) continue;
    if (semi == std::string_view::npos) return true;
    std::string params(element.substr(semi));
    for (char& c : params)
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    std::erase(params, ' ');
    const auto q = params.find(";q=");
    if (q == std::string::npos) return true;
    // q=0, 0.0, 0.00, 0.000: "not acceptable".
    const std::string value = params.substr(q + 3, params.find(';', q + 1) - (q + 3));
    return value.find_first_not_of("0.") != std::string::npos;
  }
  return false;
}

std::string new_boundary() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::string out = "vmgate-fanout-";
  for (int i = 0; i < 30; ++i)
    out += "0123456789abcdef"[rng() & 0xf];
  return out;
}

std::string multipart_content_type(std::string_view boundary) {
  return fmt::format("multipart/mixed; boundary={}", boundary);
}

// RFC 2046 §5.1.1: the line end before a delimiter belongs to it, so each
// part ends with the CRLF that the next delimiter (or the close) needs.
std::string multipart_part(const VmResult& r, std::string_view boundary) {
  std::string out = fmt::format(
      "--{}\r\nContent-Type: application/http; msgtype=response\r\nX-VM-Id: {}\r\nX-VM-Uuid: "
      "{}\r\nX-VM-Status: {}\r\nX-VM-Class: {}\r\n",
      boundary, one_line(r.name), one_line(r.uuid), r.status, class_name(r.vm_class));
  if (!r.response && !r.reason.empty())
    out += fmt::format("X-VM-Reason: {}\r\n", one_line(r.reason));
  out += "\r\n";
  out += http_message(r);
  out += "\r\n";
  return out;
}

std::string multipart_summary(const FanoutSummary& summary, std::string_view boundary,
                              std::string_view request_id, std::chrono::milliseconds elapsed) {
  return fmt::format("--{}\r\nContent-Type: application/json\r\nX-VM-Summary: true\r\n\r\n{}\r\n",
                     boundary, summary.json(request_id, elapsed));
}

std::string multipart_close(std::string_view boundary) {
  return fmt::format("--{}--\r\n", boundary);
}

std::string ndjson_line(const VmResult& r) {
  json out = {{"vm", r.name},
              {"uuid", r.uuid},
              {"class", class_name(r.vm_class)},
              {"status", r.status},
              {"ms", r.elapsed.count()}};
  if (!r.reason.empty()) out["reason"] = r.reason;
  if (r.response) {
    const AgentResponse& a = *r.response;
    json headers = json::array();
    for (const auto& [name, value] : a.fields)
      headers.push_back({name, value});
    const bool text = valid_utf8(a.body);
    out["response"] = {{"status", a.status},
                       {"reason", a.reason},
                       {"headers", std::move(headers)},
                       {"body", text ? a.body : base64(a.body)},
                       {"body_encoding", text ? "utf-8" : "base64"}};
  }
  return dump_line(out);
}

std::string ndjson_summary(const FanoutSummary& summary, std::string_view request_id,
                           std::chrono::milliseconds elapsed) {
  return summary.json(request_id, elapsed);
}

bool valid_utf8(std::string_view bytes) {
  std::size_t i = 0;
  const std::size_t n = bytes.size();
  while (i < n) {
    const auto c = static_cast<unsigned char>(bytes[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len = 0;
    std::uint32_t cp = 0;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (std::size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(bytes[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += len;
  }
  return true;
}

}  // namespace vmgate::hostd
