#include "hostd/channel/channel.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>

#include <fmt/format.h>

#include "common/deadline.hpp"
#include "common/hybrid_vsock.hpp"
#include "common/preamble.hpp"
#include "hostd/inventory/reconnect_backoff.hpp"

namespace vmgate::hostd {
namespace {

using ChannelResult = boost::system::result<Channel, Refusal>;

void replace_all(std::string& s, std::string_view key, std::string_view value) {
  for (auto pos = s.find(key); pos != std::string::npos; pos = s.find(key, pos + value.size()))
    s.replace(pos, key.size(), value);
}

// Names go into unix socket paths: only the characters that cannot escape a directory.
bool safe_in_path(std::string_view name) {
  if (name.empty() || name == "." || name == "..") return false;
  for (unsigned char c : name) {
    bool ok = std::isalnum(c) || c == '-' || c == '_' || c == '.';
    if (!ok) return false;
  }
  return true;
}

Refusal from_guestd_answer(const preamble::Response& answer, const VmRecord& vm,
                           std::uint16_t port) {
  switch (answer.status) {
    case 403:
      return {403, fmt::format("vm {} does not allow port {} (guestd: {})", vm.name, port,
                               answer.reason)};
    case 502:
      return {502, fmt::format("agent on vm {} port {} is unreachable (guestd: {})", vm.name, port,
                               answer.reason)};
    case 504:
      return {504, fmt::format("agent on vm {} port {} did not answer guestd in time (guestd: {})",
                               vm.name, port, answer.reason)};
    case 503:
      return {503, fmt::format("guestd on vm {} is busy (guestd: {})", vm.name, answer.reason)};
    default:
      return {502, fmt::format("guestd on vm {} refused the channel: {} {}", vm.name, answer.status,
                               answer.reason)};
  }
}

// How one attempt at a channel ended when it gave none: a refusal to pass
// on as it is (guestd answered, or something is wrong that waiting will not
// mend), or a guestd that is not answering yet, worth another try.
struct AttemptFailure {
  Refusal refusal;
  bool not_answering = false;
  std::string reason;  // for not_answering: what the last attempt met
};

using AttemptResult = boost::system::result<Channel, AttemptFailure>;

// What a guest that is still booting, or a guestd that is restarting, looks
// like from the host: nothing accepts yet (refused; for vsock a reset, or no
// such device or route while the guest's driver comes up; for the unix
// stand-in no socket file yet), or a listener that closes before answering.
// Anything else (a path too long, no permission, no vsock in this kernel)
// will not mend by waiting.
bool not_answering_yet(const error_code& ec) {
  namespace errc = boost::system::errc;
  return ec == asio::error::connection_refused || ec == asio::error::connection_reset ||
         ec == asio::error::connection_aborted || ec == asio::error::eof ||
         ec == asio::error::broken_pipe || ec == asio::error::timed_out ||
         ec == asio::error::host_unreachable || ec == asio::error::network_unreachable ||
         ec == errc::no_such_file_or_directory || ec == errc::no_such_device ||
         ec == hybrid_vsock::Error::closed;
}

AttemptFailure failed_attempt(const error_code& ec, Refusal refusal, std::string_view what) {
  if (!not_answering_yet(ec)) return {std::move(refusal)};
  return {std::move(refusal), true, fmt::format("{} ({})", what, ec.message())};
}

awaitable<AttemptResult> connect_and_handshake(const transport::Address& address,
                                               const VmRecord& vm, std::uint16_t port,
                                               std::string_view client,
                                               std::string_view request_id) {
  auto [ec, stream] = co_await transport::connect(address);
  if (ec) {
    co_return failed_attempt(ec,
                             {502, fmt::format("guestd on vm {} is unreachable ({}: {})", vm.name,
                                               address.to_string(), ec.message())},
                             ec.category() == hybrid_vsock::category()
                                 ? "the hybrid vsock handshake failed"
                                 : "the connect failed");
  }
  preamble::Request request{.verb = preamble::Verb::connect, .argument = std::to_string(port)};
  request.fields.emplace_back("Client", std::string(client));
  request.fields.emplace_back("Request-Id", std::string(request_id));
  std::string out = preamble::encode(request);
  auto [wec, written] = co_await asio::async_write(stream, asio::buffer(out), use_tuple);
  if (wec) {
    co_return failed_attempt(wec,
                             {502, fmt::format("guestd on vm {} closed the channel ({}: {})",
                                               vm.name, address.to_string(), wec.message())},
                             "guestd closed the channel before the preamble was written");
  }
  std::string in;
  auto [rec, n] = co_await asio::async_read_until(
      stream, asio::dynamic_buffer(in, preamble::max_bytes), preamble::terminator, use_tuple);
  if (rec) {
    co_return failed_attempt(
        rec,
        {502, fmt::format("guestd on vm {} closed the channel without an answer ({})", vm.name,
                          rec.message())},
        "guestd closed the channel without an answer");
  }
  auto answer = preamble::parse_response(std::string_view(in).substr(0, n));
  if (!answer) {
    co_return AttemptFailure{{502, fmt::format("guestd on vm {} sent a malformed answer ({})",
                                               vm.name, preamble::error_reason(answer.error()))}};
  }
  if (!answer->ok()) co_return AttemptFailure{from_guestd_answer(*answer, vm, port)};
  Channel channel{std::move(stream), {}, ChannelKey::of(vm, port)};
  // What the agent sent right behind guestd's answer is the start of its reply.
  if (in.size() > n) {
    auto leftover = std::string_view(in).substr(n);
    channel.buffer.commit(
        asio::buffer_copy(channel.buffer.prepare(leftover.size()), asio::buffer(leftover)));
  }
  co_return channel;
}

// "cid 3" for vsock, whose CID is what an operator looks up; else the
// transport address that was tried.
std::string where_guestd_is(const transport::Address& address) {
  if (address.kind == transport::Kind::vsock) return fmt::format("cid {}", address.cid);
  return address.to_string();
}

}  // namespace

std::optional<Channel> move_to(Channel channel, const asio::any_io_executor& executor) {
  auto& from = asio::query(channel.stream.get_executor(), asio::execution::context);
  auto& to = asio::query(executor, asio::execution::context);
  if (&from == &to) return channel;
  int domain = 0;
  socklen_t length = sizeof domain;
  if (::getsockopt(channel.stream.native_handle(), SOL_SOCKET, SO_DOMAIN, &domain, &length) != 0)
    return std::nullopt;
  error_code ec;
  auto fd = channel.stream.release(ec);
  if (ec) return std::nullopt;
  Stream moved(io_executor_of(executor));
  moved.assign(asio::generic::stream_protocol(domain, 0), fd, ec);
  if (ec) {
    ::close(fd);
    return std::nullopt;
  }
  channel.stream = std::move(moved);
  return channel;
}

boost::system::result<transport::Address, Refusal> channel_address(const ChannelConfig& config,
                                                                   const VmRecord& vm) {
  std::string uri = config.transport_template;
  if (uri.find("{cid}") != std::string::npos) {
    if (!vm.cid) {
      return Refusal{503, fmt::format("vm {} has no vsock device (add <vsock model='virtio'> to "
                                      "its domain XML)",
                                      vm.name)};
    }
    replace_all(uri, "{cid}", std::to_string(*vm.cid));
  }
  if (uri.find("{name}") != std::string::npos) {
    if (!safe_in_path(vm.name))
      return Refusal{503, fmt::format("vm name '{}' cannot be used in the channel transport "
                                      "template",
                                      vm.name)};
    replace_all(uri, "{name}", vm.name);
  }
  replace_all(uri, "{uuid}", vm.uuid);
  replace_all(uri, "{port}", std::to_string(config.guestd_port));
  auto address = transport::parse(uri);
  if (!address)
    return Refusal{502, fmt::format("channel transport for vm {}: {}", vm.name, address.error())};
  return *address;
}

awaitable<ChannelResult> open_channel(const ChannelConfig& config, const VmRecord& vm,
                                      const transport::Address& address, std::uint16_t port,
                                      std::string_view client, std::string_view request_id,
                                      std::optional<AttachedDevice> attached) {
  using clock = std::chrono::steady_clock;
  const std::chrono::milliseconds limit =
      attached ? attached->guestd_timeout : config.connect_timeout;
  const auto started = clock::now();
  const auto deadline = started + limit;
  // Made at the first failure: most channels open at the first attempt.
  std::optional<ReconnectBackoff> backoff;
  unsigned attempts = 0;
  std::string last;
  for (;;) {
    const auto left = deadline - clock::now();
    if (left <= clock::duration::zero()) break;
    ++attempts;
    auto outcome =
        co_await within(left, connect_and_handshake(address, vm, port, client, request_id));
    if (!outcome) {
      last = fmt::format("no answer within {} ms", limit.count());
      break;
    }
    if (*outcome) co_return std::move(**outcome);
    AttemptFailure failure = outcome->error();
    if (!failure.not_answering) co_return std::move(failure.refusal);
    last = std::move(failure.reason);
    if (!backoff) backoff.emplace(config.connect_retry_min, config.connect_retry_max);
    const auto wait = std::min<clock::duration>(backoff->next(), deadline - clock::now());
    if (wait <= clock::duration::zero()) break;
    asio::steady_timer timer(co_await asio::this_coro::executor, wait);
    co_await timer.async_wait(use_tuple);
  }
  const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - started);
  const std::string tried = fmt::format("{}; {} {} in {} ms", last, attempts,
                                        attempts == 1 ? "attempt" : "attempts", waited.count());
  if (attached) {
    co_return Refusal{503, fmt::format("vm {} was given a vsock device, but its guestd is not "
                                       "answering on {}: {}",
                                       vm.name, where_guestd_is(address), tried)};
  }
  co_return Refusal{502, fmt::format("guestd not answering on {} (vm {}): {}",
                                     where_guestd_is(address), vm.name, tried)};
}

}  // namespace vmgate::hostd
