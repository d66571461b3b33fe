// libvirt at scale: how long hostd's inventory takes to discover N domains,
// and how long a lifecycle change takes to reach the directory (when a VM
// becomes routable or unroutable). Links the real LibvirtInventory and
// Directory; timings are taken in-process with steady_clock.
//
//   vmgate-bench-libvirt-scale [--domains N] [--events N]
//
// Two measurements, printed as one JSON object on stdout:
//
// 1. discovery_file: the inventory on `test:///DIR/node.xml` (libvirt's test
//    driver in-process, no RPC), from start() until the directory holds all N
//    domains. `open_ms` is what virConnectOpen alone costs on that file (the
//    test driver parsing N domain definitions), measured on its own
//    connection, so it can be told apart from what the inventory does.
//
// 2. Through a real libvirtd (session mode as `nobody`, serving
//    `test:///default`; needs root for setpriv): N domains are defined and
//    started over one connection, then a fresh inventory connects through the
//    daemon's socket (discovery_daemon: every domain read over RPC, as with
//    qemu:///system), then this program changes domains on its own connection
//    and polls the directory until it reflects each change:
//      start    → running (routable)        destroy  → shut off (unroutable)
//      define   → present                   undefine → absent
//    read_serial_ms / read_4_threads_ms: the libvirt calls alone (list, then
//    state + XML of every domain) on this program's connection, from one
//    thread and from four. read_stats_serial_ms / read_stats_4_threads_ms:
//    the calls the inventory makes (every state in one
//    virConnectGetAllDomainStats, then the XML of every domain), likewise:
//    the floor under discovery.
//    `from_call_ms` counts from just before the libvirt call that makes the
//    change; `after_return_ms` from when that call returned (the daemon has
//    sent the event by then). Polling every 50 µs bounds the resolution.
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "common/log.hpp"
#include "hostd/directory/embedded_directory.hpp"
#include "hostd/inventory/libvirt_inventory.hpp"
#include "tests/integration/libvirt_fixture.hpp"

namespace {

using namespace std::chrono_literals;
using vmgate::hostd::EmbeddedDirectory;
using vmgate::hostd::LibvirtConfig;
using vmgate::hostd::LibvirtInventory;
using vmgate::hostd::LookupStatus;
using vmgate::hostd::VmState;
using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point start, Clock::time_point end = Clock::now()) {
  return std::chrono::duration<double, std::milli>(end - start).count();
}

std::string domain_name(int i) {
  return fmt::format("bench{:05}", i);
}

std::string domain_uuid(int i) {
  return fmt::format("b0000000-0000-4000-8000-{:012x}", i);
}

// CIDs start at 3: libvirt rejects smaller ones.
std::string domain_xml(int i) {
  return fmt::format(
      "<domain type='test'><name>{}</name><uuid>{}</uuid><memory unit='MiB'>64</memory>"
      "<os><type>hvm</type></os><devices><vsock model='virtio'><cid auto='no' address='{}'/>"
      "</vsock></devices></domain>",
      domain_name(i), domain_uuid(i), i + 3);
}

void write_node_file(const std::string& path, int domains) {
  std::ofstream out(path);
  out << "<node>\n";
  for (int i = 0; i < domains; ++i)
    out << domain_xml(i) << "\n";
  out << "</node>\n";
  if (!out) throw std::runtime_error("cannot write " + path);
}

[[noreturn]] void fail(std::string_view step) {
  const char* message = virGetLastErrorMessage();
  throw std::runtime_error(fmt::format("{}: {}", step, message ? message : "unknown error"));
}

void quiet_libvirt(void*, virErrorPtr) {}

// Polls until `done()`; a 10 s bound guards against a broken build.
double wait_ms(Clock::time_point start, const std::function<bool()>& done) {
  auto bound = start + 10s;
  while (!done()) {
    if (Clock::now() > bound) throw std::runtime_error("the directory never reflected a change");
    std::this_thread::sleep_for(50us);
  }
  return ms_since(start);
}

struct Samples {
  std::vector<double> from_call;
  std::vector<double> after_return;
};

double percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  auto index = static_cast<std::size_t>(p / 100.0 * static_cast<double>(values.size() - 1) + 0.5);
  return values[std::min(index, values.size() - 1)];
}

std::string summary(const std::vector<double>& values) {
  return fmt::format(R"({{"n": {}, "p50": {:.3f}, "p99": {:.3f}, "max": {:.3f}}})", values.size(),
                     percentile(values, 50), percentile(values, 99), percentile(values, 100));
}

struct DiscoveryResult {
  double ms = 0;
  std::size_t found = 0;
};

DiscoveryResult discover(const std::string& uri) {
  EmbeddedDirectory directory;
  LibvirtConfig options;
  options.uri = uri;
  LibvirtInventory inventory(options, directory);
  auto start = Clock::now();
  inventory.start();
  if (!inventory.wait_first_sync(120s)) throw std::runtime_error("no first sync from " + uri);
  DiscoveryResult result{ms_since(start), directory.size()};
  inventory.stop();
  return result;
}

std::string measure_file(const std::string& dir, int domains) {
  std::string node = dir + "/node.xml";
  write_node_file(node, domains);
  std::string uri = "test://" + node;
  // The inventory first: it registers libvirt's event loop, which must
  // happen before any connection is opened.
  DiscoveryResult result = discover(uri);
  auto open_start = Clock::now();
  virConnectPtr probe = virConnectOpenReadOnly(uri.c_str());
  if (probe == nullptr) fail("virConnectOpenReadOnly " + uri);
  double open_ms = ms_since(open_start);
  virConnectClose(probe);
  return fmt::format(R"({{"domains": {}, "found": {}, "ms": {:.1f}, "open_ms": {:.1f}}})", domains,
                     result.found, result.ms, open_ms);
}

// The floor under discovery through a daemon: libvirt calls alone, without
// parsing or the directory, made on a connection by `threads` threads at once.
// How the domains and their states are listed:
enum class Listing {
  per_domain_state,  // virConnectListAllDomains, then virDomainGetState for each
  stats,             // virConnectGetAllDomainStats(STATE): all states in one call
};

double read_all_ms(virConnectPtr conn, int threads, Listing listing) {
  auto start = Clock::now();
  std::vector<virDomainPtr> domains;
  virDomainStatsRecordPtr* records = nullptr;
  virDomainPtr* listed = nullptr;
  if (listing == Listing::stats) {
    int count = virConnectGetAllDomainStats(conn, VIR_DOMAIN_STATS_STATE, &records, 0);
    if (count < 0) fail("virConnectGetAllDomainStats");
    for (int i = 0; i < count; ++i)
      domains.push_back(records[i]->dom);
  } else {
    int count = virConnectListAllDomains(conn, &listed, 0);
    if (count < 0) fail("virConnectListAllDomains");
    domains.assign(listed, listed + count);
  }
  std::atomic<std::size_t> next{0};
  auto work = [&] {
    for (std::size_t i = next++; i < domains.size(); i = next++) {
      if (listing == Listing::per_domain_state) {
        int state = 0;
        int reason = 0;
        virDomainGetState(domains[i], &state, &reason, 0);
      }
      std::free(virDomainGetXMLDesc(domains[i], 0));
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t)
    pool.emplace_back(work);
  work();
  for (auto& t : pool)
    t.join();
  double ms = ms_since(start);
  if (records != nullptr) virDomainStatsRecordListFree(records);
  if (listed != nullptr) {
    for (auto* domain : domains)
      virDomainFree(domain);
    std::free(listed);
  }
  return ms;
}

std::string measure_daemon(const std::string& dir, int domains, int events) {
  vmgate::test::SessionLibvirtd libvirtd(dir);
  libvirtd.start();
  std::string uri = libvirtd.uri();
  virConnectPtr conn = virConnectOpen(uri.c_str());
  if (conn == nullptr) fail("virConnectOpen " + uri);

  // Populate: `domains` running domains besides test:///default's own "test".
  auto populate_start = Clock::now();
  for (int i = 0; i < domains; ++i) {
    virDomainPtr dom = virDomainDefineXML(conn, domain_xml(i).c_str());
    if (dom == nullptr) fail("define " + domain_name(i));
    if (virDomainCreate(dom) < 0) fail("start " + domain_name(i));
    virDomainFree(dom);
  }
  double populate_ms = ms_since(populate_start);

  EmbeddedDirectory directory;
  LibvirtConfig options;
  options.uri = uri;
  LibvirtInventory inventory(options, directory);
  auto discovery_start = Clock::now();
  inventory.start();
  if (!inventory.wait_first_sync(120s)) throw std::runtime_error("no first sync through libvirtd");
  double discovery_ms = ms_since(discovery_start);
  std::size_t found = directory.size();
  double read_serial_ms = read_all_ms(conn, 1, Listing::per_domain_state);
  double read_parallel_ms = read_all_ms(conn, 4, Listing::per_domain_state);
  double stats_serial_ms = read_all_ms(conn, 1, Listing::stats);
  double stats_parallel_ms = read_all_ms(conn, 4, Listing::stats);

  auto state_is = [&](const std::string& name, VmState state) {
    return [&directory, name, state] {
      auto lookup = directory.find(name);
      return lookup.status == LookupStatus::found && lookup.vm->state == state;
    };
  };
  auto present = [&](const std::string& name, bool want) {
    return [&directory, name, want] {
      return (directory.find(name).status == LookupStatus::found) == want;
    };
  };
  // Times one change: `call` makes it, `done` says the directory has it.
  auto time_change = [](Samples& samples, const std::function<void()>& call,
                        const std::function<bool()>& done) {
    auto start = Clock::now();
    call();
    auto returned = Clock::now();
    wait_ms(start, done);
    samples.from_call.push_back(ms_since(start));
    samples.after_return.push_back(ms_since(returned));
  };

  Samples start_samples, destroy_samples, define_samples, undefine_samples;
  for (int k = 0; k < events; ++k) {
    // Spread over the population, so lookups are not all at one end of the maps.
    int i = static_cast<int>((static_cast<long long>(k) * 7919) % std::max(domains, 1));
    std::string name = domain_name(i);
    virDomainPtr dom = virDomainLookupByName(conn, name.c_str());
    if (dom == nullptr) fail("lookup " + name);
    time_change(
        destroy_samples,
        [&] {
          if (virDomainDestroy(dom) < 0) fail("destroy " + name);
        },
        state_is(name, VmState::shut_off));
    time_change(
        start_samples,
        [&] {
          if (virDomainCreate(dom) < 0) fail("start " + name);
        },
        state_is(name, VmState::running));
    virDomainFree(dom);

    int fresh = domains + k;
    std::string fresh_name = domain_name(fresh);
    virDomainPtr created = nullptr;
    time_change(
        define_samples,
        [&] {
          created = virDomainDefineXML(conn, domain_xml(fresh).c_str());
          if (created == nullptr) fail("define " + fresh_name);
        },
        present(fresh_name, true));
    time_change(
        undefine_samples,
        [&] {
          if (virDomainUndefine(created) < 0) fail("undefine " + fresh_name);
        },
        present(fresh_name, false));
    virDomainFree(created);
  }
  inventory.stop();
  virConnectClose(conn);
  libvirtd.stop();

  auto both = [](const Samples& s) {
    return fmt::format(R"({{"from_call_ms": {}, "after_return_ms": {}}})", summary(s.from_call),
                       summary(s.after_return));
  };
  return fmt::format(
      R"({{"domains": {}, "found": {}, "populate_ms": {:.0f}, "discovery_ms": {:.1f}, )"
      R"("read_serial_ms": {:.1f}, "read_4_threads_ms": {:.1f}, )"
      R"("read_stats_serial_ms": {:.1f}, "read_stats_4_threads_ms": {:.1f}, )"
      R"("events": {{"start": {}, "destroy": {}, "define": {}, "undefine": {}}}}})",
      domains + 1, found, populate_ms, discovery_ms, read_serial_ms, read_parallel_ms,
      stats_serial_ms, stats_parallel_ms, both(start_samples), both(destroy_samples),
      both(define_samples), both(undefine_samples));
}

int parse_count(std::string_view text, std::string_view flag) {
  int value = 0;
  try {
    value = std::stoi(std::string(text));
  } catch (const std::exception&) {
    value = -1;
  }
  if (value < 0 || value > 1'000'000)
    throw std::runtime_error(fmt::format("{} '{}' is not a count (0..1000000)", flag, text));
  return value;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    int domains = 5000;
    int events = 100;
    for (int i = 1; i < argc; ++i) {
      std::string_view arg = argv[i];
      if (arg == "--domains" && i + 1 < argc) {
        domains = parse_count(argv[++i], arg);
      } else if (arg == "--events" && i + 1 < argc) {
        events = parse_count(argv[++i], arg);
      } else {
        std::fprintf(stderr, "usage: vmgate-bench-libvirt-scale [--domains N] [--events N]\n");
        return 2;
      }
    }
    vmgate::log::set_min_level(vmgate::log::Level::warn);
    virSetErrorFunc(nullptr, quiet_libvirt);

    vmgate::test::TempDir file_dir;
    std::string file = measure_file(file_dir.path().string(), domains);
    std::string daemon =
        R"({"skipped": "needs root (setpriv runs libvirtd as nobody) and libvirtd"})";
    if (geteuid() == 0 && access("/usr/sbin/libvirtd", X_OK) == 0) {
      vmgate::test::TempDir daemon_dir;
      daemon = measure_daemon(daemon_dir.path().string(), domains, events);
    }
    fmt::print(R"({{"discovery_file": {}, "daemon": {}}})"
               "\n",
               file, daemon);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vmgate-bench-libvirt-scale: %s\n", e.what());
    return 1;
  }
}
