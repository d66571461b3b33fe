// VM names folded into ClusterShell-style ranges, as an operator reads a
// fleet: web01..web17 and web19 are "web[01-17,19]". What `vmgatectl send`
// prints for VMs that answered alike.
#pragma once

#include <string>
#include <vector>

namespace vmgate::ctl {

// Names that end in digits are folded by their prefix: consecutive numbers
// become a span, zero padding is kept (web01, web02 → web[01-02]); a name
// without a number, or the only one of its prefix, stays as it is. Folded
// names are comma-separated, in name order.
std::string fold_names(std::vector<std::string> names);

}  // namespace vmgate::ctl
