#include "hostd/request_id.hpp"

#include <cstdint>
#include <random>

namespace vmgate::hostd {

std::string new_request_id() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  auto value = static_cast<std::uint32_t>(rng());
  std::string id(8, '0');
  for (int i = 7; i >= 0; --i, value >>= 4)
    id[i] = "0123456789abcdef"[value & 0xf];
  return id;
}

}  // namespace vmgate::hostd
