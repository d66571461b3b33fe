// SIGHUP asks a daemon to reload. Without a handler the signal's default
// would end the process and every connection with it, so each daemon's main
// waits for it on its own signal_set (signal dispositions are process-wide,
// so they are set up in main) and runs its reload, each time it comes.
#pragma once

#include <functional>

#include "common/asio.hpp"
#include "common/log.hpp"

namespace vmgate {

inline void on_each_hangup(asio::signal_set& hangups, std::function<void()> reload) {
  hangups.async_wait([&hangups, reload = std::move(reload)](error_code ec, int) mutable {
    if (ec) return;
    reload();
    on_each_hangup(hangups, std::move(reload));
  });
}

// For a daemon with nothing it can reload yet: says, each time, that the
// signal was ignored.
inline void warn_on_each_hangup(asio::signal_set& hangups) {
  on_each_hangup(hangups, [] {
    log::warn("reload_not_supported").kv("signal", "SIGHUP").kv("action", "ignored");
  });
}

}  // namespace vmgate
