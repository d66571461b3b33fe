#include "hostd/channel/channel.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>

#include "common/deadline.hpp"
#include "common/preamble.hpp"

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

awaitable<ChannelResult> connect_and_handshake(const transport::Address& address,
                                               const VmRecord& vm, std::uint16_t port,
                                               std::string_view client,
                                               std::string_view request_id) {
  auto [ec, stream] = co_await transport::connect(address);
  if (ec) {
    co_return Refusal{502, fmt::format("guestd on vm {} is unreachable ({}: {})", vm.name,
                                       address.to_string(), ec.message())};
  }
  preamble::Request request{.verb = preamble::Verb::connect, .argument = std::to_string(port)};
  request.fields.emplace_back("Client", std::string(client));
  request.fields.emplace_back("Request-Id", std::string(request_id));
  std::string out = preamble::encode(request);
  auto [wec, written] = co_await asio::async_write(stream, asio::buffer(out), use_tuple);
  if (wec) {
    co_return Refusal{502, fmt::format("guestd on vm {} closed the channel ({}: {})", vm.name,
                                       address.to_string(), wec.message())};
  }
  std::string in;
  auto [rec, n] = co_await asio::async_read_until(
      stream, asio::dynamic_buffer(in, preamble::max_bytes), preamble::terminator, use_tuple);
  if (rec) {
    co_return Refusal{502, fmt::format("guestd on vm {} closed the channel without an answer ({})",
                                       vm.name, rec.message())};
  }
  auto answer = preamble::parse_response(std::string_view(in).substr(0, n));
  if (!answer) {
    co_return Refusal{502, fmt::format("guestd on vm {} sent a malformed answer ({})", vm.name,
                                       preamble::error_reason(answer.error()))};
  }
  if (!answer->ok()) co_return from_guestd_answer(*answer, vm, port);
  Channel channel{std::move(stream), {}, ChannelKey::of(vm, port)};
  // What the agent sent right behind guestd's answer is the start of its reply.
  if (in.size() > n) {
    auto leftover = std::string_view(in).substr(n);
    channel.buffer.commit(
        asio::buffer_copy(channel.buffer.prepare(leftover.size()), asio::buffer(leftover)));
  }
  co_return channel;
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
  Stream moved(executor);
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
                                      std::string_view client, std::string_view request_id) {
  auto outcome = co_await within(config.connect_timeout,
                                 connect_and_handshake(address, vm, port, client, request_id));
  if (!outcome) {
    co_return Refusal{504, fmt::format("guestd on vm {} did not answer within {} ms ({})", vm.name,
                                       config.connect_timeout.count(), address.to_string())};
  }
  co_return std::move(*outcome);
}

}  // namespace vmgate::hostd
