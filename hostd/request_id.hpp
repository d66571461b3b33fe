// Request ids: what ties a client's error body, hostd's request record and
// guestd's channel line together.
#pragma once

#include <string>

namespace vmgate::hostd {

// A short random request id ("5b2c0e9a"), unique enough to find a log line.
std::string new_request_id();

}  // namespace vmgate::hostd
