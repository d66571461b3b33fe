#include "common/lingering_close.hpp"

#include <array>

namespace vmgate {

awaitable<std::size_t> half_close_and_drain(Stream& stream, std::size_t max_bytes) {
  error_code ignored;
  stream.shutdown(asio::socket_base::shutdown_send, ignored);
  std::array<char, 4096> sink;
  std::size_t drained = 0;
  while (drained < max_bytes) {
    auto [ec, got] = co_await stream.async_read_some(asio::buffer(sink), use_tuple);
    drained += got;
    if (ec) break;
  }
  co_return drained;
}

}  // namespace vmgate
