// vmgate-guestd: the guest end of the channel. A thin main around the
// library: arguments, config, signals, one io_context on one thread.
#include <csignal>
#include <cstdio>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "common/asio.hpp"
#include "common/config_reader.hpp"
#include "common/hangup.hpp"
#include "common/log.hpp"
#include "guestd/config/guestd_config.hpp"
#include "guestd/dispatch/server.hpp"
#include "guestd/outbound/guest_command.hpp"
#include "guestd/outbound/outbound_proxy.hpp"

#ifndef VMGATE_VERSION
#define VMGATE_VERSION "unknown"
#endif

namespace {

using namespace vmgate;

constexpr std::string_view usage =
    "usage: vmgate-guestd [--config FILE] [--check-config]\n"
    "       vmgate-guestd --version\n"
    "{}"
    "\n"
    "  --config FILE    configuration (default: {})\n"
    "  --check-config   validate the configuration, print the error if any, exit 0 or 1\n"
    "  --version        print the version and exit\n"
    "  send, join, leave  guest-originated traffic for scripts, through hostd\n";

struct Options {
  std::string config_path = guestd::default_config_path;
  bool check_config = false;
  bool version = false;
  bool help = false;
};

// Returns false (after saying why on stderr) when the arguments are unusable.
bool parse_args(int argc, char** argv, Options& options) {
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--config" || arg == "-c") {
      if (i + 1 >= argc) {
        fmt::print(stderr, "vmgate-guestd: {} needs a file name\n", arg);
        return false;
      }
      options.config_path = argv[++i];
    } else if (arg.starts_with("--config=")) {
      options.config_path = std::string(arg.substr(9));
    } else if (arg == "--check-config") {
      options.check_config = true;
    } else if (arg == "--version") {
      options.version = true;
    } else if (arg == "--help" || arg == "-h") {
      options.help = true;
    } else {
      fmt::print(stderr, "vmgate-guestd: unknown argument '{}'\n", arg);
      return false;
    }
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && guestd::is_command(argv[1])) {
    std::signal(SIGPIPE, SIG_IGN);
    return guestd::run_command(std::vector<std::string>(argv + 1, argv + argc));
  }
  Options options;
  if (!parse_args(argc, argv, options)) {
    fmt::print(stderr, fmt::runtime(usage), guestd::command_usage, guestd::default_config_path);
    return 2;
  }
  if (options.help) {
    fmt::print(fmt::runtime(usage), guestd::command_usage, guestd::default_config_path);
    return 0;
  }
  if (options.version) {
    fmt::print("vmgate-guestd {}\n", VMGATE_VERSION);
    return 0;
  }

  guestd::GuestdConfig config;
  try {
    config = guestd::load_guestd_config(options.config_path);
  } catch (const config::ConfigError& e) {
    fmt::print(stderr, "vmgate-guestd: {}\n", e.what());
    return 1;
  }
  if (options.check_config) {
    fmt::print("{}: ok\n", options.config_path);
    return 0;
  }

  // Writes to a closed channel must come back as EPIPE, not kill the daemon.
  std::signal(SIGPIPE, SIG_IGN);

  asio::io_context io(1);
  guestd::Server server(io.get_executor(), config);
  if (auto ec = server.start()) {
    log::error("listen_failed")
        .kv("listen", config.listen.to_string())
        .kv("error", ec.message())
        .kv("config", options.config_path);
    return 1;
  }

  // The way out for this VM's own apps, when [outbound] listen is set.
  guestd::OutboundProxy outbound(io.get_executor(), config);
  if (auto ec = outbound.start()) {
    log::error("listen_failed")
        .kv("listen", config.outbound.listen->to_string())
        .kv("error", ec.message())
        .kv("config", options.config_path);
    return 1;
  }

  // First SIGTERM/SIGINT: stop accepting and let relays finish within the
  // grace period. A second one closes everything now.
  asio::signal_set signals(io, SIGTERM, SIGINT);
  bool signalled = false;
  std::function<void(error_code, int)> on_signal = [&](error_code ec, int signal) {
    if (ec) return;
    log::info("signal").kv("signal", signal);
    const auto grace = signalled ? std::chrono::milliseconds(0) : config.limits.shutdown_grace;
    outbound.stop(grace);
    server.stop(grace);
    signalled = true;
    signals.async_wait(on_signal);
  };
  signals.async_wait(on_signal);
  asio::signal_set hangup(io, SIGHUP);
  warn_on_each_hangup(hangup);
  server.on_stopped([&] {
    error_code ignored;
    signals.cancel(ignored);
    hangup.cancel(ignored);
  });

  io.run();
  return 0;
}
