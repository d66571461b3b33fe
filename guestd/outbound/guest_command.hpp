// `vmgate-guestd send|join|leave`: guest-originated traffic for scripts,
// over the same channel to hostd as the outbound proxy (host_channel.hpp).
//
//   vmgate-guestd send host:monitor --path /report --data @status.json
//   vmgate-guestd send web2 --port 8080 --path /status
//   vmgate-guestd join web        vmgate-guestd leave web
//
//   vmgate-guestd send group:web --port 5986 --path /status   one part per VM
//
// The response body goes to stdout; a refusal or an HTTP error status goes
// to stderr with its reason, and the exit status is 1 (2 for bad usage). A
// target naming many VMs answers with a part per VM and a summary: the
// exit status is 1 when any VM did not answer below 400.
#pragma once

#include <string>
#include <vector>

#include "guestd/config/guestd_config.hpp"

namespace vmgate::guestd {

inline constexpr std::string_view command_usage =
    "       vmgate-guestd send TARGET [--port N] [--method M] [--path P] [--data @FILE|TEXT]\n"
    "                          [--header 'Name: value']... [--config FILE]\n"
    "       vmgate-guestd join GROUP [--config FILE]\n"
    "       vmgate-guestd leave GROUP [--config FILE]\n";

// Whether argv[1] names a command (send, join, leave).
bool is_command(std::string_view word);

// Runs the command in `args` (argv from the command word on): its exit status.
int run_command(const std::vector<std::string>& args);

}  // namespace vmgate::guestd
