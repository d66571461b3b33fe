// Why a request cannot be served: the HTTP status and a one-line reason the
// client sees (docs/architecture.md, "Errors a client can see").
#pragma once

#include <string>

namespace vmgate::hostd {

struct Refusal {
  unsigned status = 502;
  std::string reason;
};

}  // namespace vmgate::hostd
