// `vmgatectl send TARGET`: one request through a hostd listener to every VM
// TARGET names (the X-VM-Id form), read as NDJSON as it streams back.
#pragma once

#include <string>
#include <vector>

namespace vmgate::ctl {

extern const char* const send_usage_text;

// `args` are what follows `send`. Returns the exit status (send_report.hpp).
int send_main(const std::vector<std::string>& args);

}  // namespace vmgate::ctl
