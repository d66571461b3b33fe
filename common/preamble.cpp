#include "common/preamble.hpp"

#include <charconv>

#include <fmt/format.h>

namespace vmgate::preamble {
namespace {

constexpr std::string_view crlf = "\r\n";

bool is_token_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_' || c == '.';
}

bool valid_argument(std::string_view arg) {
  if (arg.empty() || arg.size() > 1024) return false;
  for (unsigned char c : arg) {
    if (c <= ' ' || c >= 0x7f) return false;
  }
  return true;
}

std::optional<Verb> parse_verb(std::string_view s) {
  if (s == "CONNECT") return Verb::connect;
  if (s == "SEND") return Verb::send;
  if (s == "JOIN") return Verb::join;
  if (s == "LEAVE") return Verb::leave;
  return std::nullopt;
}

std::optional<std::uint16_t> parse_port(std::string_view s) {
  unsigned value = 0;
  if (s.empty() || s.size() > 5) return std::nullopt;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || p != s.data() + s.size() || value == 0 || value > 65535)
    return std::nullopt;
  return static_cast<std::uint16_t>(value);
}

// Splits the block into lines without the trailing empty line; the block must
// end in the terminator.
bool split_lines(std::string_view block, std::vector<std::string_view>& lines) {
  if (block.size() < terminator.size() || !block.ends_with(terminator)) return false;
  block.remove_suffix(2);  // leaves the last line's own CRLF
  while (!block.empty()) {
    auto end = block.find(crlf);
    if (end == std::string_view::npos) return false;
    std::string_view line = block.substr(0, end);
    // A bare CR or LF inside a line is never valid.
    if (line.find('\r') != std::string_view::npos || line.find('\n') != std::string_view::npos)
      return false;
    lines.push_back(line);
    block.remove_prefix(end + 2);
  }
  return !lines.empty();
}

bool parse_fields(const std::vector<std::string_view>& lines, Fields& fields) {
  for (std::size_t i = 1; i < lines.size(); ++i) {
    auto line = lines[i];
    auto colon = line.find(':');
    if (colon == std::string_view::npos) return false;
    auto name = line.substr(0, colon);
    auto value = line.substr(colon + 1);
    while (!value.empty() && value.front() == ' ')
      value.remove_prefix(1);
    while (!value.empty() && value.back() == ' ')
      value.remove_suffix(1);
    if (!valid_field_name(name) || !valid_field_value(value)) return false;
    if (fields.size() >= 32) return false;
    fields.emplace_back(std::string(name), std::string(value));
  }
  return true;
}

void append_fields(std::string& out, const Fields& fields) {
  for (const auto& [name, value] : fields) {
    if (!valid_field_name(name) || !valid_field_value(value)) continue;
    out += name;
    out += ": ";
    out += value;
    out += crlf;
  }
}

}  // namespace

std::string_view verb_name(Verb verb) {
  switch (verb) {
    case Verb::connect:
      return "CONNECT";
    case Verb::send:
      return "SEND";
    case Verb::join:
      return "JOIN";
    case Verb::leave:
      return "LEAVE";
  }
  return "CONNECT";
}

std::string_view error_reason(Error e) {
  switch (e) {
    case Error::too_large:
      return "preamble-too-large";
    case Error::bad_version:
      return "unsupported-version";
    case Error::unknown_verb:
      return "unknown-verb";
    case Error::bad_port:
      return "bad-port";
    case Error::bad_request_line:
    case Error::bad_field:
    case Error::bad_status_line:
      return "bad-preamble";
  }
  return "bad-preamble";
}

bool valid_field_name(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    if (!is_token_char(c)) return false;
  }
  return true;
}

bool valid_field_value(std::string_view value) {
  if (value.size() > 1024) return false;
  for (unsigned char c : value) {
    if (c < ' ' || c >= 0x7f) return false;
  }
  return true;
}

std::optional<std::string_view> Request::field(std::string_view name) const {
  for (const auto& [k, v] : fields) {
    if (k.size() == name.size() && std::equal(k.begin(), k.end(), name.begin(), [](char a, char b) {
          return std::tolower(static_cast<unsigned char>(a)) ==
                 std::tolower(static_cast<unsigned char>(b));
        }))
      return std::string_view(v);
  }
  return std::nullopt;
}

std::uint16_t Request::port() const {
  return parse_port(argument).value_or(0);
}

std::optional<std::size_t> find_end(std::string_view buffered) {
  auto pos = buffered.find(terminator);
  if (pos == std::string_view::npos) return std::nullopt;
  return pos + terminator.size();
}

boost::system::result<Request, Error> parse_request(std::string_view block) {
  if (block.size() > max_bytes) return Error::too_large;
  std::vector<std::string_view> lines;
  if (!split_lines(block, lines)) return Error::bad_request_line;
  std::string_view first = lines.front();
  auto sp1 = first.find(' ');
  if (sp1 == std::string_view::npos) return Error::bad_request_line;
  if (first.substr(0, sp1) != version) {
    return first.starts_with("VMGATE/") ? Error::bad_version : Error::bad_request_line;
  }
  auto rest = first.substr(sp1 + 1);
  auto sp2 = rest.find(' ');
  if (sp2 == std::string_view::npos) return Error::bad_request_line;
  auto verb = parse_verb(rest.substr(0, sp2));
  auto argument = rest.substr(sp2 + 1);
  if (!verb) return Error::unknown_verb;
  if (!valid_argument(argument)) return Error::bad_request_line;
  if (*verb == Verb::connect && !parse_port(argument)) return Error::bad_port;
  Request request;
  request.verb = *verb;
  request.argument = std::string(argument);
  if (!parse_fields(lines, request.fields)) return Error::bad_field;
  return request;
}

boost::system::result<Response, Error> parse_response(std::string_view block) {
  if (block.size() > max_bytes) return Error::too_large;
  std::vector<std::string_view> lines;
  if (!split_lines(block, lines)) return Error::bad_status_line;
  std::string_view first = lines.front();
  if (!first.starts_with(version)) {
    return first.starts_with("VMGATE/") ? Error::bad_version : Error::bad_status_line;
  }
  // "VMGATE/1 NNN reason"
  if (first.size() < version.size() + 6 || first[version.size()] != ' ' ||
      first[version.size() + 4] != ' ')
    return Error::bad_status_line;
  auto code = first.substr(version.size() + 1, 3);
  int status = 0;
  auto [p, ec] = std::from_chars(code.data(), code.data() + 3, status);
  if (ec != std::errc() || p != code.data() + 3 || status < 100 || status > 599)
    return Error::bad_status_line;
  auto reason = first.substr(version.size() + 5);
  if (reason.empty() || reason.size() > 128) return Error::bad_status_line;
  for (char c : reason) {
    if (!is_token_char(c)) return Error::bad_status_line;
  }
  Response response;
  response.status = status;
  response.reason = std::string(reason);
  if (!parse_fields(lines, response.fields)) return Error::bad_field;
  return response;
}

std::string encode(const Request& request) {
  std::string out = fmt::format("{} {} {}\r\n", version, verb_name(request.verb), request.argument);
  append_fields(out, request.fields);
  out += crlf;
  return out;
}

std::string encode(const Response& response) {
  std::string out = fmt::format("{} {:03d} {}\r\n", version, response.status, response.reason);
  append_fields(out, response.fields);
  out += crlf;
  return out;
}

}  // namespace vmgate::preamble
