// A doctest test case that cannot run here (no root, a tool missing) says so
// with skip(reason) and returns: the runner then exits with skip_exit_code,
// which ctest reports as skipped (SKIP_RETURN_CODE), and on CI (CI=true) it
// fails instead, since a green CI must mean every test ran.
#pragma once

#include <string>

#include <doctest/doctest.h>

namespace vmgate::test {

inline constexpr int skip_exit_code = 77;

// Why the test cases of this run that skipped did so; empty if none did.
inline std::string& skip_reasons() {
  static std::string reasons;
  return reasons;
}

inline void skip(const std::string& reason) {
  MESSAGE("skipped: " << reason);
  skip_reasons() += reason + "\n";
}

}  // namespace vmgate::test
