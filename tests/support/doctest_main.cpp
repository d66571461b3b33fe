// The doctest runner of the unit and integration binaries. ctest runs each
// test case on its own (--test-case=NAME): a run whose filter matched no test
// case proves nothing, so it fails rather than reporting success, and a test
// case that called skip() ends the run as skipped (or failed, on CI).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "tests/support/skip.hpp"

namespace {

struct RunStats {
  bool ended = false;
  unsigned test_cases_run = 0;
};

RunStats g_run;

// Records how many test cases passed the filters; reports nothing itself.
struct RunCounter : doctest::IReporter {
  explicit RunCounter(const doctest::ContextOptions&) {}
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats& stats) override {
    g_run.ended = true;
    g_run.test_cases_run = stats.numTestCasesPassingFilters;
  }
  void test_case_start(const doctest::TestCaseData&) override {}
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats&) override {}
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};

REGISTER_LISTENER("vmgate_run_counter", 1, RunCounter);

bool on_ci() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && std::string_view(ci) == "true";
}

}  // namespace

int main(int argc, char** argv) {
  // As in each daemon's main: splice(2) into a closed socket must give EPIPE.
  std::signal(SIGPIPE, SIG_IGN);
  doctest::Context context(argc, argv);
  const int result = context.run();
  // --list-test-cases, --help and the like run nothing and end no run.
  if (context.shouldExit() || !g_run.ended) return result;
  if (g_run.test_cases_run == 0) {
    std::fprintf(stderr,
                 "no test case matched the filters: nothing was tested (a test name with "
                 "';' is split in two by doctest_discover_tests)\n");
    return EXIT_FAILURE;
  }
  const std::string& skipped = vmgate::test::skip_reasons();
  if (result != 0 || skipped.empty()) return result;
  if (on_ci()) {
    std::fprintf(stderr, "skipped on CI, which counts as a failure:\n%s", skipped.c_str());
    return EXIT_FAILURE;
  }
  return vmgate::test::skip_exit_code;
}
