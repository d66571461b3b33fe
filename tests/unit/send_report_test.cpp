// SendReport: what `vmgatectl send` prints from a fan-out's NDJSON stream,
// and the exit status scripts see.
#include "tools/vmgatectl/send_report.hpp"

#include <doctest/doctest.h>

#include <fmt/format.h>

using namespace vmgate::ctl;
using json = nlohmann::json;

namespace {

json answered(const std::string& vm, unsigned status, const std::string& body) {
  return {{"vm", vm},
          {"uuid", "u-" + vm},
          {"class", status < 400 ? "answered" : "agent_error"},
          {"status", status},
          {"response", {{"status", status}, {"body", body}, {"body_encoding", "utf-8"}}}};
}

json failed(const std::string& vm, const std::string& vm_class, unsigned status,
            const std::string& reason) {
  return {{"vm", vm}, {"class", vm_class}, {"status", status}, {"reason", reason}};
}

json summary(std::size_t vms, std::size_t answered_count, json classes) {
  return {{"summary", true},
          {"request_id", "abcd1234"},
          {"vms", vms},
          {"answered", answered_count},
          {"failed", vms - answered_count},
          {"classes", std::move(classes)}};
}

}  // namespace

TEST_CASE("VMs that answered alike are shown once, as a range with their count") {
  SendReport report(20);
  std::vector<std::string> ok;
  for (int i = 1; i <= 17; ++i) {
    report.add(answered(fmt::format("web{:02}", i), 200, "ok\n"));
    ok.push_back(fmt::format("web{:02}", i));
  }
  report.add(answered("web19", 200, "ok\n"));
  report.add(answered("web18", 500, "disk full\n"));
  report.add(failed("web20", "timed_out", 504, "vm web20 did not answer within 30000 ms"));
  ok.push_back("web19");
  report.add(summary(20, 18,
                     {{"answered", {{"count", 18}, {"vms", ok}}},
                      {"agent_error", {{"count", 1}, {"vms", {"web18"}}}},
                      {"timed_out", {{"count", 1}, {"vms", {"web20"}}}}}));
  CHECK(report.collapsed() ==
        "web[01-17,19] (18): 200 ok\n"
        "web18: 500 agent error disk full\n"
        "web20: 504 timed out: vm web20 did not answer within 30000 ms\n"
        "20 VMs: 18 answered; failed: agent error 1 (web18), timed out 1 (web20) (request "
        "abcd1234)\n");
  CHECK(report.exit_status() == send_some_failed);
}

TEST_CASE("a multi-line body is shown indented under the VMs that gave it") {
  SendReport report;
  report.add(answered("a1", 200, "line one\nline two\n"));
  report.add(answered("a2", 200, "line one\nline two\n"));
  report.add(summary(2, 2, {{"answered", {{"count", 2}, {"vms", {"a1", "a2"}}}}}));
  CHECK(report.collapsed().starts_with("a[1-2] (2): 200\n    line one\n    line two\n"));
  CHECK(report.exit_status() == send_all_answered);
}

TEST_CASE("hostd's failures fold by class and status, their per-VM reasons left out") {
  SendReport report;
  report.add(failed("db1", "not_running", 503, "vm db1 is shut_off"));
  report.add(failed("db2", "not_running", 503, "vm db2 is shut_off"));
  report.add(summary(2, 0, {{"not_running", {{"count", 2}, {"vms", {"db1", "db2"}}}}}));
  CHECK(report.collapsed().starts_with("db[1-2] (2): 503 not running\n"));
}

TEST_CASE("progress counts done, failed and pending out of the VMs hostd announced") {
  SendReport report(5);
  report.add(answered("a1", 200, ""));
  report.add(failed("a2", "unreachable", 502, "x"));
  CHECK(report.progress() == "done 1, failed 1, pending 3 of 5");
}

TEST_CASE("exit status: 0 only when every VM answered below 400, 3 when none matched") {
  SendReport all;
  all.add(answered("a1", 200, ""));
  all.add(summary(1, 1, {}));
  CHECK(all.exit_status() == send_all_answered);
  SendReport refused;
  refused.add(failed("a1", "refused", 403, "no"));
  refused.add(summary(1, 0, {}));
  CHECK(refused.exit_status() == send_some_failed);
  SendReport none;
  none.add(summary(0, 0, {}));
  CHECK(none.exit_status() == send_none_matched);
  SendReport cut;  // no summary: a VM may be missing
  cut.add(answered("a1", 200, ""));
  CHECK(cut.exit_status() == send_some_failed);
  CHECK(cut.collapsed().find("ended before its summary") != std::string::npos);
}
