#include "hostd/listener/request_record.hpp"

#include <random>

#include "common/log.hpp"

namespace vmgate::hostd {

std::string new_request_id() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  auto value = static_cast<std::uint32_t>(rng());
  std::string id(8, '0');
  for (int i = 7; i >= 0; --i, value >>= 4)
    id[i] = "0123456789abcdef"[value & 0xf];
  return id;
}

RequestRecord::~RequestRecord() {
  if (handed_over) return;
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - start).count();
  {
    // The line is written when `line` goes out of scope; it comes before the
    // count, so whoever sees the request counted can also find its record.
    auto line = (status >= 500 ? log::warn("request") : log::info("request"));
    line.kv("req", id)
        .kv("listener", listener)
        .kv("client", client)
        .kv("method", method)
        .kv("form", form)
        .kv("target", target)
        .kv("vm", vm)
        .kv("port", port)
        .kv("status", status)
        .kv("bytes_in", bytes_in)
        .kv("bytes_out", bytes_out)
        .kv("ms", static_cast<long long>(ms));
    if (reused_channel) line.kv("channel", "reused");
    if (!reason.empty()) line.kv("reason", reason);
  }
  if (metrics) metrics->request_done(form, status, bytes_in, bytes_out);
}

}  // namespace vmgate::hostd
