// Closing after an answer without destroying it, for both daemons' refusals.
// A socket closed with bytes of the peer's still unread is reset (TCP and
// vsock alike), and the reset can reach the peer before it reads the answer.
// So the answer's sender half-closes, reads and drops what still comes, up to
// a bound, and only then closes (RFC 9112 §9.6 asks the same of HTTP).
#pragma once

#include <cstddef>

#include "common/asio.hpp"

namespace vmgate {

inline constexpr std::size_t lingering_close_max_bytes = 64 * 1024;

// Half-closes `stream` and reads until the peer ends, an error, or `max_bytes`
// have been dropped; the bytes dropped. Unbounded in time: bound it with
// within().
awaitable<std::size_t> half_close_and_drain(Stream& stream,
                                            std::size_t max_bytes = lingering_close_max_bytes);

}  // namespace vmgate
