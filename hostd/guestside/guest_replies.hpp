// How hostd answers a guest and closes its connection, for guest_session.cpp
// and the files beside it: a refusal before anything else is sent, a small
// HTTP answer once the preamble's 200 is gone, and a close that lets the
// guest read the answer first.
#pragma once

#include <chrono>
#include <string>
#include <string_view>

#include "common/asio.hpp"
#include "hostd/guestside/guest_session.hpp"

namespace vmgate::hostd::guestside {

GuestAnswer refuse(unsigned status, std::string token, std::string reason);
// The refusal token for a status from a channel or a peer host.
std::string token_for(unsigned status);

void close_stream(Stream& stream);
// Writes `bytes`, half-closes, and reads what still comes (a bounded amount,
// within `linger`), so that the guest reads the answer before the close.
awaitable<void> write_and_linger(Stream& guest, std::string bytes,
                                 std::chrono::milliseconds linger);
// `status` and `text` as an HTTP response, then write_and_linger.
awaitable<void> answer_http(Stream& guest, unsigned status, std::string_view text,
                            std::chrono::milliseconds linger);

}  // namespace vmgate::hostd::guestside
