// libFuzzer target for the hybrid vsock answer parser (common/hybrid_vsock.hpp),
// which reads what a VMM, or whatever listens on its socket, sends hostd.
//
// Every input is parsed as one answer line, and so is its first line (what
// transport::connect hands the parser: up to the first '\n'). Besides "no
// crash, no sanitizer report", it checks what hostd relies on:
//   - what parses is exactly "OK " and the decimal port, which prints back to
//     the same line (no sign, no spaces, no suffix, no leading junk);
//   - nothing over max_answer_bytes parses, and it fails as too_long;
//   - every failure has a message.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "common/hybrid_vsock.hpp"

namespace hv = vmgate::hybrid_vsock;

namespace {

void check(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "hybrid vsock property violated: %s\n", what);
  std::abort();
}

void check_line(std::string_view line) {
  auto answer = hv::parse_answer(line);
  if (!answer) {
    check(!answer.error().message().empty(), "every failure has a message");
    if (line.size() > hv::max_answer_bytes)
      check(answer.error() == hv::Error::too_long, "an over-long line is too long");
    return;
  }
  check(line.size() <= hv::max_answer_bytes, "what parses is within the bound");
  check("OK " + std::to_string(*answer) == line || (line.size() > 3 && line[3] == '0'),
        "what parses prints back, leading zeros aside");
  check(line.substr(0, 3) == "OK ", "what parses starts with OK");
  check(line.find_first_not_of("0123456789", 3) == std::string_view::npos, "only digits follow OK");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  check_line(input);
  check_line(input.substr(0, input.find('\n')));
  return 0;
}
