// SIGHUP asks a daemon to reload, which neither daemon can do yet: without
// a handler the signal's default would end the process and every connection
// with it. Each daemon's main waits for it on its own signal_set (signal
// dispositions are process-wide, so they are set up in main) and this says,
// each time, that it was ignored.
#pragma once

#include "common/asio.hpp"
#include "common/log.hpp"

namespace vmgate {

inline void warn_on_each_hangup(asio::signal_set& hangups) {
  hangups.async_wait([&hangups](error_code ec, int) {
    if (ec) return;
    log::warn("reload_not_supported").kv("signal", "SIGHUP").kv("action", "ignored");
    warn_on_each_hangup(hangups);
  });
}

}  // namespace vmgate
