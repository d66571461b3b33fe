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

// The inverse of base64() above: padded, no line breaks; empty when `in` is
// not that.
std::optional<std::string> unbase64(std::string_view in) {
  if (in.size() % 4 != 0) return std::nullopt;
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::string out;
  out.reserve(in.size() / 4 * 3);
  for (std::size_t i = 0; i < in.size(); i += 4) {
    const bool last = i + 4 == in.size();
    const int pad = last ? (in[i + 3] == '=') + (in[i + 2] == '=' && in[i + 3] == '=') : 0;
    unsigned v = 0;
    for (int k = 0; k < 4; ++k) {
      const int d = k >= 4 - pad ? 0 : value(in[i + k]);
      if (d < 0) return std::nullopt;
      v = (v << 6) | static_cast<unsigned>(d);
    }
    out += static_cast<char>((v >> 16) & 0xff);
    if (pad < 2) out += static_cast<char>((v >> 8) & 0xff);
    if (pad < 1) out += static_cast<char>(v & 0xff);
  }
  return out;
}

// What ndjson_line writes nests three deep ({"response": {"headers": [[...]]}}):
// a line nested deeper is refused before the JSON parser sees it.
bool nesting_within(std::string_view text, int limit) {
  int depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > limit) return false;
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return true;
}

const json* member(const json& object, const char* name, json::value_t type) {
  auto it = object.find(name);
  if (it == object.end()) return nullptr;
  if (it->type() == type) return &*it;
  // Counts are written unsigned; a reader takes either integer kind.
  if (type == json::value_t::number_unsigned && it->is_number_integer() && *it >= 0) return &*it;
  return nullptr;
}

std::optional<unsigned> status_member(const json& object, const char* name) {
  const json* v = member(object, name, json::value_t::number_unsigned);
  if (!v) return std::nullopt;
  const auto status = v->get<std::uint64_t>();
  if (status < 100 || status > 599) return std::nullopt;
  return static_cast<unsigned>(status);
}

std::optional<AgentResponse> parse_response_member(const json& r) {
  AgentResponse out;
  auto status = status_member(r, "status");
  const json* reason = member(r, "reason", json::value_t::string);
  const json* headers = member(r, "headers", json::value_t::array);
  const json* body = member(r, "body", json::value_t::string);
  const json* encoding = member(r, "body_encoding", json::value_t::string);
  if (!status || !reason || !headers || !body || !encoding) return std::nullopt;
  out.status = *status;
  out.reason = reason->get<std::string>();
  for (const json& pair : *headers) {
    if (!pair.is_array() || pair.size() != 2 || !pair[0].is_string() || !pair[1].is_string())
      return std::nullopt;
    out.fields.emplace_back(pair[0].get<std::string>(), pair[1].get<std::string>());
  }
  const std::string& how = encoding->get_ref<const std::string&>();
  if (how == "utf-8") {
    out.body = body->get<std::string>();
  } else if (how == "base64") {
    auto bytes = unbase64(body->get_ref<const std::string&>());
    if (!bytes) return std::nullopt;
    out.body = std::move(*bytes);
  } else {
    return std::nullopt;
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

std::optional<ResultLine> parse_ndjson_line(std::string_view line) {
  if (!nesting_within(line, 4)) return std::nullopt;
  const json value = json::parse(line, nullptr, false);
  if (value.is_discarded() || !value.is_object()) return std::nullopt;
  if (auto summary = value.find("summary"); summary != value.end()) {
    if (!summary->is_boolean() || !summary->get<bool>()) return std::nullopt;
    return ResultLine{};
  }
  const json* vm = member(value, "vm", json::value_t::string);
  const json* uuid = member(value, "uuid", json::value_t::string);
  const json* cls = member(value, "class", json::value_t::string);
  const json* ms = member(value, "ms", json::value_t::number_unsigned);
  auto status = status_member(value, "status");
  if (!vm || !uuid || !cls || !ms || !status) return std::nullopt;
  const auto known =
      std::find(class_names.begin(), class_names.end(), cls->get_ref<const std::string&>());
  if (known == class_names.end()) return std::nullopt;
  VmResult r{.name = vm->get<std::string>(), .uuid = uuid->get<std::string>()};
  r.vm_class = static_cast<VmClass>(known - class_names.begin());
  r.status = *status;
  r.elapsed = std::chrono::milliseconds(
      static_cast<std::int64_t>(std::min<std::uint64_t>(ms->get<std::uint64_t>(), 1u << 31)));
  if (auto reason = value.find("reason"); reason != value.end()) {
    if (!reason->is_string()) return std::nullopt;
    r.reason = reason->get<std::string>();
  }
  if (auto response = value.find("response"); response != value.end()) {
    if (!response->is_object()) return std::nullopt;
    r.response = parse_response_member(*response);
    if (!r.response) return std::nullopt;
  }
  return ResultLine{std::move(r)};
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
