#include "guestd/outbound/host_channel.hpp"

#include <fmt/format.h>

#include "common/deadline.hpp"
#include "common/transport.hpp"

namespace vmgate::guestd {
namespace {

using Opened = boost::system::result<HostChannel, HostRefusal>;

awaitable<Opened> connect_and_ask(const OutboundConfig& config, std::string out) {
  const std::string where = config.hostd.to_string();
  auto [ec, stream] = co_await transport::connect(config.hostd);
  if (ec)
    co_return HostRefusal{502, "hostd-unreachable",
                          fmt::format("hostd at {} is unreachable: {}", where, ec.message())};
  auto [wec, written] = co_await asio::async_write(stream, asio::buffer(out), use_tuple);
  if (wec)
    co_return HostRefusal{502, "hostd-closed",
                          fmt::format("hostd at {} closed the channel: {}", where, wec.message())};
  std::string in;
  auto [rec, n] = co_await asio::async_read_until(
      stream, asio::dynamic_buffer(in, preamble::max_bytes), preamble::terminator, use_tuple);
  if (rec)
    co_return HostRefusal{
        502, "hostd-closed",
        fmt::format("hostd at {} closed the channel without an answer ({})", where, rec.message())};
  auto answer = preamble::parse_response(std::string_view(in).substr(0, n));
  if (!answer)
    co_return HostRefusal{502, "bad-answer",
                          fmt::format("hostd at {} sent a malformed answer ({})", where,
                                      preamble::error_reason(answer.error()))};
  if (!answer->ok()) {
    std::string reason;
    for (const auto& [name, value] : answer->fields)
      if (name == "Reason") reason = value;
    co_return HostRefusal{static_cast<unsigned>(answer->status), answer->reason,
                          reason.empty() ? answer->reason : reason};
  }
  co_return HostChannel{std::move(stream), in.substr(n)};
}

}  // namespace

awaitable<Opened> open_host_channel(const OutboundConfig& config,
                                    const preamble::Request& request) {
  auto outcome =
      co_await within(config.connect_timeout, connect_and_ask(config, preamble::encode(request)));
  if (!outcome)
    co_return HostRefusal{504, "hostd-timeout",
                          fmt::format("hostd at {} did not answer within {} ms",
                                      config.hostd.to_string(), config.connect_timeout.count())};
  co_return std::move(*outcome);
}

}  // namespace vmgate::guestd
