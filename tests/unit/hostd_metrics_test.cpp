// hostd's /metrics text: the Prometheus text format 0.0.4, with the series
// the request path and the inventory feed.
#include <doctest/doctest.h>

#include <chrono>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "hostd/directory/embedded_directory.hpp"
#include "hostd/inventory/libvirt_inventory.hpp"
#include "hostd/metrics/hostd_metrics.hpp"

using namespace vmgate::hostd;
using namespace std::chrono_literals;

namespace {

VmRecord vm(std::string name, std::string uuid) {
  VmRecord r;
  r.name = std::move(name);
  r.uuid = std::move(uuid);
  r.state = VmState::running;
  return r;
}

bool has_line(const std::string& text, const std::string& line) {
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);)
    if (l == line) return true;
  return false;
}

// The value of one sample line "NAME{LABELS} VALUE", or -1 when absent.
double sample(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) {
    if (l.rfind(series + " ", 0) == 0) return std::stod(l.substr(series.size() + 1));
  }
  return -1;
}

}  // namespace

TEST_CASE("metrics text counts requests by route form and status") {
  EmbeddedDirectory directory;
  HostdMetrics metrics(directory, nullptr);
  metrics.request_done("header", 200, 10, 100);
  metrics.request_done("header", 200, 5, 50);
  metrics.request_done("connect", 502, 0, 80);
  metrics.request_done("-", 400, 0, 90);  // refused before a route was found
  auto text = metrics.render();
  CHECK(has_line(text, "# TYPE vmgate_requests_total counter"));
  CHECK(sample(text, R"(vmgate_requests_total{form="header",status="200"})") == 2);
  CHECK(sample(text, R"(vmgate_requests_total{form="connect",status="502"})") == 1);
  CHECK(sample(text, R"(vmgate_requests_total{form="none",status="400"})") == 1);
  CHECK(sample(text, "vmgate_client_received_bytes_total") == 15);
  CHECK(sample(text, "vmgate_client_sent_bytes_total") == 320);
}

TEST_CASE("metrics text follows the exposition format: HELP, TYPE, then samples") {
  EmbeddedDirectory directory;
  HostdMetrics metrics(directory, nullptr);
  metrics.request_done("absolute", 404, 0, 10);
  metrics.channel_connected(3ms, true);
  auto text = metrics.render();
  REQUIRE(!text.empty());
  CHECK(text.back() == '\n');
  const std::regex sample_line(
      R"re(^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? [-+0-9.eEInfa]+$)re");
  const std::regex comment_line(R"(^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$)");
  std::istringstream in(text);
  int samples = 0;
  for (std::string l; std::getline(in, l);) {
    INFO(l);
    if (l.starts_with("#")) {
      CHECK(std::regex_match(l, comment_line));
    } else {
      CHECK(std::regex_match(l, sample_line));
      ++samples;
    }
  }
  CHECK(samples > 10);
}

TEST_CASE("channel connect latency is a histogram in seconds, split by result") {
  EmbeddedDirectory directory;
  HostdMetrics metrics(directory, nullptr);
  metrics.channel_connected(2ms, true);
  metrics.channel_connected(3s, false);
  auto text = metrics.render();
  CHECK(has_line(text, "# TYPE vmgate_channel_connect_duration_seconds histogram"));
  CHECK(sample(text, R"(vmgate_channel_connect_duration_seconds_bucket{result="ok",le="0.001"})") ==
        0);
  CHECK(sample(text,
               R"(vmgate_channel_connect_duration_seconds_bucket{result="ok",le="0.0025"})") == 1);
  CHECK(sample(text, R"(vmgate_channel_connect_duration_seconds_count{result="ok"})") == 1);
  CHECK(sample(text,
               R"(vmgate_channel_connect_duration_seconds_bucket{result="error",le="2.5"})") == 0);
  CHECK(sample(text, R"(vmgate_channel_connect_duration_seconds_bucket{result="error",le="5"})") ==
        1);
  CHECK(sample(text, R"(vmgate_channel_connect_duration_seconds_sum{result="error"})") ==
        doctest::Approx(3.0));
}

TEST_CASE("channel reuse and the pool's idle count and discards are reported") {
  EmbeddedDirectory directory;
  HostdMetrics metrics(directory, nullptr);
  metrics.channel_used(false);
  metrics.channel_used(true);
  metrics.channel_used(true);
  auto text = metrics.render();
  CHECK(sample(text, R"(vmgate_channel_requests_total{channel="new"})") == 1);
  CHECK(sample(text, R"(vmgate_channel_requests_total{channel="reused"})") == 2);

  ChannelPoolStats pool;
  metrics.set_channel_pool(&pool);
  pool.idle = 3;
  pool.expired = 4;
  pool.full = 1;
  text = metrics.render();
  CHECK(sample(text, "vmgate_channel_pool_idle") == 3);
  CHECK(sample(text, R"(vmgate_channel_pool_discarded_total{reason="expired"})") == 4);
  CHECK(sample(text, R"(vmgate_channel_pool_discarded_total{reason="closed"})") == 0);
  CHECK(sample(text, R"(vmgate_channel_pool_discarded_total{reason="full"})") == 1);
  pool.expired = 6;
  CHECK(sample(metrics.render(), R"(vmgate_channel_pool_discarded_total{reason="expired"})") == 6);
}

TEST_CASE("open tunnels go up and down with OpenTunnel, and null metrics are a no-op") {
  EmbeddedDirectory directory;
  HostdMetrics metrics(directory, nullptr);
  {
    OpenTunnel a(&metrics);
    OpenTunnel b(&metrics);
    CHECK(sample(metrics.render(), "vmgate_tunnels_open") == 2);
  }
  CHECK(sample(metrics.render(), "vmgate_tunnels_open") == 0);
  // With no metrics (hostd built without them) the same calls count nowhere.
  const std::string before = metrics.render();
  {
    OpenTunnel none(nullptr);
    CHECK_NOTHROW(ChannelConnectTimer(nullptr).done(true));
    CHECK(metrics.render() == before);
  }
  CHECK(metrics.render() == before);
}

TEST_CASE("directory size and libvirt counters are read when scraped") {
  EmbeddedDirectory directory;
  InventoryStats stats;
  HostdMetrics metrics(directory, &stats);
  directory.replace_all({vm("vm1", "00000000-0000-0000-0000-000000000001"),
                         vm("vm2", "00000000-0000-0000-0000-000000000002")});
  stats.events = 5;
  stats.reconnects = 1;
  stats.syncs = 2;
  stats.connected = true;
  auto text = metrics.render();
  CHECK(sample(text, "vmgate_directory_vms") == 2);
  CHECK(sample(text, "vmgate_libvirt_events_total") == 5);
  CHECK(sample(text, "vmgate_libvirt_reconnects_total") == 1);
  CHECK(sample(text, "vmgate_libvirt_syncs_total") == 2);
  CHECK(sample(text, "vmgate_libvirt_connected") == 1);
  // Counters follow the inventory's totals, scrape after scrape.
  stats.events = 7;
  stats.connected = false;
  directory.remove("00000000-0000-0000-0000-000000000001");
  text = metrics.render();
  CHECK(sample(text, "vmgate_libvirt_events_total") == 7);
  CHECK(sample(text, "vmgate_libvirt_connected") == 0);
  CHECK(sample(text, "vmgate_directory_vms") == 1);
  CHECK(sample(metrics.render(), "vmgate_libvirt_events_total") == 7);
}

TEST_CASE("process start time is the time the metrics were created") {
  auto now = [] {
    return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  };
  EmbeddedDirectory directory;
  const double before = now();
  HostdMetrics metrics(directory, nullptr);
  const double after = now();
  // Between the readings taken around the construction (the text format may
  // round the last digit of a millisecond away, hence the slack).
  const double start = sample(metrics.render(), "process_start_time_seconds");
  CHECK(start >= before - 0.001);
  CHECK(start <= after + 0.001);
}

TEST_CASE("requests counted from many threads at once are all counted") {
  EmbeddedDirectory directory;
  HostdMetrics metrics(directory, nullptr);
  constexpr int threads = 4;
  constexpr int per_thread = 5000;
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&metrics, t] {
      for (int i = 0; i < per_thread; ++i)
        metrics.request_done(i % 2 ? "header" : "host", 200 + static_cast<unsigned>(t), 1, 1);
    });
  }
  for (auto& t : pool)
    t.join();
  auto text = metrics.render();
  double total = 0;
  for (int t = 0; t < threads; ++t) {
    for (const char* form : {"header", "host"}) {
      total += sample(text, std::string("vmgate_requests_total{form=\"") + form + "\",status=\"" +
                                std::to_string(200 + t) + "\"}");
    }
  }
  CHECK(total == threads * per_thread);
  CHECK(sample(text, "vmgate_client_received_bytes_total") == threads * per_thread);
}
