// libFuzzer target for the channel preamble codec (common/preamble.hpp).
//
// Every input goes through parse_request and parse_response, whole and cut at
// find_end (what guestd and hostd actually parse). Besides "no crash, no
// sanitizer report", it checks the properties the daemons rely on:
//   - a block that parses ends at its first terminator, so find_end delimits
//     exactly what was parsed and nothing after it can leak into the preamble;
//   - what parses is within the limits (size, field count, CONNECT port);
//   - encode(parse(x)) parses back to the same value and re-encodes to the
//     same bytes, unless the re-encoding exceeds max_bytes (encode adds ": "
//     where "Name:value" had none), which must then be refused as too large.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "common/preamble.hpp"

namespace pre = vmgate::preamble;

namespace {

void check(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "preamble property violated: %s\n", what);
  std::abort();
}

void check_request(std::string_view block) {
  auto parsed = pre::parse_request(block);
  if (!parsed) {
    check(!pre::error_reason(parsed.error()).empty(), "every error has a reason");
    return;
  }
  check(block.size() <= pre::max_bytes, "parsed request within max_bytes");
  check(pre::find_end(block) == block.size(), "parsed request ends at its first terminator");
  check(parsed->fields.size() <= 32, "at most 32 fields");
  if (parsed->verb == pre::Verb::connect) check(parsed->port() != 0, "CONNECT port in 1..65535");
  for (const auto& [name, value] : parsed->fields) {
    check(pre::valid_field_name(name) && pre::valid_field_value(value), "fields are valid");
  }

  std::string encoded = pre::encode(*parsed);
  auto again = pre::parse_request(encoded);
  if (encoded.size() > pre::max_bytes) {
    check(!again && again.error() == pre::Error::too_large, "oversized encoding is too large");
    return;
  }
  check(again.has_value(), "encoded request parses");
  check(again->verb == parsed->verb, "verb survives");
  check(again->argument == parsed->argument, "argument survives");
  check(again->fields == parsed->fields, "fields survive");
  check(pre::encode(*again) == encoded, "encoding is stable");
}

void check_response(std::string_view block) {
  auto parsed = pre::parse_response(block);
  if (!parsed) {
    check(!pre::error_reason(parsed.error()).empty(), "every error has a reason");
    return;
  }
  check(block.size() <= pre::max_bytes, "parsed response within max_bytes");
  check(pre::find_end(block) == block.size(), "parsed response ends at its first terminator");
  check(parsed->status >= 100 && parsed->status <= 599, "status in 100..599");
  check(!parsed->reason.empty(), "reason present");

  std::string encoded = pre::encode(*parsed);
  auto again = pre::parse_response(encoded);
  if (encoded.size() > pre::max_bytes) {
    check(!again && again.error() == pre::Error::too_large, "oversized encoding is too large");
    return;
  }
  check(again.has_value(), "encoded response parses");
  check(again->status == parsed->status, "status survives");
  check(again->reason == parsed->reason, "reason survives");
  check(again->fields == parsed->fields, "fields survive");
  check(pre::encode(*again) == encoded, "encoding is stable");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  check_request(input);
  check_response(input);
  if (auto end = pre::find_end(input)) {
    check(*end >= pre::terminator.size() && *end <= input.size(), "find_end within input");
    check(input.substr(0, *end).ends_with(pre::terminator), "find_end ends at the terminator");
    check_request(input.substr(0, *end));
    check_response(input.substr(0, *end));
  }
  return 0;
}
