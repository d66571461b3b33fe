#include "hostd/cluster/peer_channels.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "common/deadline.hpp"
#include "common/log.hpp"
#include "hostd/cluster/peer_fanout_message.hpp"
#include "hostd/fanout/fanout_part_reader.hpp"
#include "hostd/proxy/client_stream.hpp"

namespace vmgate::hostd {
namespace beast = boost::beast;
namespace http = beast::http;

namespace {

using ChannelResult = boost::system::result<Channel, Refusal>;

// Printable ASCII only: a value that could end a line or a field is left out.
bool safe_field_value(std::string_view value) {
  if (value.size() > 1024) return false;
  for (unsigned char c : value)
    if (c < 0x20 || c > 0x7e) return false;
  return true;
}

// A peer's refusal body is one line; more is not read.
constexpr std::uint64_t max_refusal_body = 4096;

// Carries the TLS link and the pair's far end until either side ends.
awaitable<void> relay_peer(std::unique_ptr<ClientStream> peer, Stream pair_end,
                           std::chrono::milliseconds idle) {
  co_await relay_tunnel(*peer, pair_end, idle);
  error_code ignored;
  pair_end.close(ignored);
  co_await peer->close(true, std::chrono::milliseconds(1000));
}

// A refusal: status and one line, which the client sees as the host said it.
Refusal peer_refusal(const std::string& host, unsigned status, std::string reason) {
  while (!reason.empty() && (reason.back() == '\n' || reason.back() == '\r'))
    reason.pop_back();
  if (auto eol = reason.find_first_of("\r\n"); eol != std::string::npos) reason.resize(eol);
  if (status < 400 || status > 599) status = 502;
  return Refusal{status, fmt::format("host {}: {}", host, reason)};
}

}  // namespace

struct PeerFanoutLink::State {
  std::string host;
  std::unique_ptr<ClientStream::TlsStream> tls;
  beast::flat_buffer buffer;
  http::response_parser<http::buffer_body> parser;
  FanoutPartReader reader;
  std::array<char, 16 * 1024> chunk{};

  State(std::string host_name, std::unique_ptr<ClientStream::TlsStream> link, std::size_t max_line)
      : host(std::move(host_name)), tls(std::move(link)), reader(max_line) {}
};

PeerFanoutLink::PeerFanoutLink(std::unique_ptr<State> state) : state_(std::move(state)) {}
PeerFanoutLink::~PeerFanoutLink() = default;

bool PeerFanoutLink::finished() const {
  return state_->reader.finished();
}

Stream& PeerFanoutLink::socket() {
  return state_->tls->next_layer();
}

awaitable<boost::system::result<std::vector<VmResult>, Refusal>> PeerFanoutLink::next() {
  State& s = *state_;
  std::vector<VmResult> results;
  // Each read parses what has arrived (a line may span reads, a read hold
  // several lines), and comes back as soon as a line is whole.
  while (results.empty() && !s.reader.finished()) {
    if (s.parser.is_done())
      co_return Refusal{502, fmt::format("host {} ended its results before the summary", s.host)};
    auto& body = s.parser.get().body();
    body.data = s.chunk.data();
    body.size = s.chunk.size();
    auto [ec, n] = co_await http::async_read_some(*s.tls, s.buffer, s.parser, use_tuple);
    const std::size_t got = s.chunk.size() - s.parser.get().body().size;
    if (ec == http::error::need_buffer) ec = {};
    if (got > 0) {
      auto fed = s.reader.feed(std::string_view(s.chunk.data(), got), results);
      if (!fed) co_return Refusal{502, fmt::format("host {} sent {}", s.host, fed.error())};
    }
    if (ec && !s.reader.finished()) {
      co_return Refusal{502, fmt::format("host {} cut its results: {}", s.host, ec.message())};
    }
  }
  co_return results;
}

std::string encode_peer_request(const VmRecord& vm, std::uint16_t port,
                                const PeerRequest& request) {
  std::string head = fmt::format("CONNECT {0}:{1} HTTP/1.1\r\nHost: {0}:{1}\r\n", vm.uuid, port);
  auto field = [&head](std::string_view name, std::string_view value) {
    if (!value.empty() && safe_field_value(value)) head += fmt::format("{}: {}\r\n", name, value);
  };
  field(peer_host_field, request.target_host);
  field(peer_client_field, request.client);
  field(peer_identity_field, request.identity);
  field(peer_request_id_field, request.request_id);
  head += "\r\n";
  return head;
}

PeerChannels::PeerChannels(const ClusterConfig& config, const ClusterDirectory& directory,
                           std::shared_ptr<asio::ssl::context> tls,
                           std::chrono::milliseconds relay_idle, std::uint64_t max_response)
    : config_(config),
      directory_(directory),
      tls_(std::move(tls)),
      relay_idle_(relay_idle),
      max_response_(max_response) {}

boost::system::result<PeerChannels::Peer, Refusal> PeerChannels::peer(std::string_view host_name,
                                                                      std::string_view whose) {
  auto host = directory_.host_record(host_name);
  if (!host) {
    ++failed_;
    return Refusal{
        502, fmt::format("host {}{} has no record in the cluster directory", host_name, whose)};
  }
  auto address = transport::parse(host->peer_address);
  if (!address || address->kind != transport::Kind::tcp) {
    ++failed_;
    return Refusal{502, fmt::format("host {} has no usable peer address ('{}')", host->name,
                                    host->peer_address)};
  }
  return Peer{std::move(*host), std::move(*address)};
}

Refusal PeerChannels::unanswered(const Peer& peer) {
  ++failed_;
  return Refusal{502, fmt::format("host {} ({}) did not answer within {} ms", peer.host.name,
                                  peer.address.to_string(), config_.peer_connect_timeout.count())};
}

awaitable<ChannelResult> PeerChannels::open(const VmRecord& vm, std::uint16_t port,
                                            const PeerRequest& request) {
  auto to = peer(vm.host, fmt::format(" of vm {}", vm.name));
  if (!to) co_return to.error();
  ++sent_;
  auto outcome = co_await within(config_.peer_connect_timeout,
                                 connect(to->host, to->address, vm, port, request));
  if (!outcome) co_return unanswered(*to);
  if (!*outcome) ++failed_;
  co_return std::move(*outcome);
}

awaitable<boost::system::result<std::unique_ptr<PeerFanoutLink>, Refusal>>
PeerChannels::open_fanout(const std::string& host_name, const PeerFanoutMessage& message) {
  auto to = peer(host_name, "");
  if (!to) co_return to.error();
  ++sent_;
  auto outcome =
      co_await within(config_.peer_connect_timeout, connect_fanout(to->host, to->address, message));
  if (!outcome) co_return unanswered(*to);
  if (!*outcome) ++failed_;
  co_return std::move(*outcome);
}

awaitable<boost::system::result<std::unique_ptr<PeerFanoutLink>, Refusal>>
PeerChannels::connect_fanout(const HostRecord& host, const transport::Address& address,
                             const PeerFanoutMessage& message) {
  auto linked = co_await connect_tls(host, address);
  if (!linked) co_return linked.error();
  auto state = std::make_unique<PeerFanoutLink::State>(
      host.name, std::move(*linked), max_result_line(max_response_, config_.peer_header_bytes));
  const std::string head = encode_peer_fanout(message);
  const std::array<asio::const_buffer, 3> out{
      asio::buffer(head), asio::buffer(message.agent_head.data(), message.agent_head.size()),
      asio::buffer(message.body.data(), message.body.size())};
  auto [wec, written] = co_await asio::async_write(*state->tls, out, use_tuple);
  if (wec) {
    co_return Refusal{502, fmt::format("host {} ({}) closed the link: {}", host.name,
                                       address.to_string(), wec.message())};
  }
  auto& answer = state->parser;
  answer.header_limit(config_.peer_header_bytes);
  // The results are bounded line by line (FanoutPartReader), not as a whole.
  answer.body_limit(boost::none);
  auto [rec, read] =
      co_await http::async_read_header(*state->tls, state->buffer, answer, use_tuple);
  if (rec) {
    co_return Refusal{502, fmt::format("host {} ({}) sent no answer: {}", host.name,
                                       address.to_string(), rec.message())};
  }
  if (answer.get().result() != http::status::ok) {
    std::array<char, max_refusal_body> reason{};
    answer.get().body().data = reason.data();
    answer.get().body().size = reason.size();
    co_await http::async_read(*state->tls, state->buffer, answer, use_tuple);
    const std::size_t got = reason.size() - answer.get().body().size;
    co_return peer_refusal(host.name, answer.get().result_int(), std::string(reason.data(), got));
  }
  co_return std::make_unique<PeerFanoutLink>(std::move(state));
}

awaitable<PeerChannels::TlsLink> PeerChannels::connect_tls(const HostRecord& host,
                                                           const transport::Address& address) {
  auto [ec, socket] = co_await transport::connect(address);
  if (ec) {
    co_return Refusal{502, fmt::format("host {} ({}) is unreachable: {}", host.name,
                                       address.to_string(), ec.message())};
  }
  transport::tune(socket, transport::Kind::tcp);
  auto tls = std::make_unique<ClientStream::TlsStream>(std::move(socket), *tls_,
                                                       ClientStream::TlsStream::Role::client);
  // The peer proves it is the host its record names (RFC 6125 §6 via
  // OpenSSL's host check); SNI says which one is meant.
  SSL_set_tlsext_host_name(tls->native_handle(), host.name.c_str());
  tls->expect_host(host.name);
  auto [hec] = co_await tls->async_handshake(use_tuple);
  if (hec) {
    co_return Refusal{502, fmt::format("host {} ({}): TLS failed: {}", host.name,
                                       address.to_string(), hec.message())};
  }
  co_return std::move(tls);
}

awaitable<ChannelResult> PeerChannels::connect(const HostRecord& host,
                                               const transport::Address& address,
                                               const VmRecord& vm, std::uint16_t port,
                                               const PeerRequest& request) {
  auto linked = co_await connect_tls(host, address);
  if (!linked) co_return linked.error();
  auto tls = std::move(*linked);
  auto executor = tls->get_executor();
  const std::string head = encode_peer_request(vm, port, request);
  auto [wec, written] = co_await asio::async_write(*tls, asio::buffer(head), use_tuple);
  if (wec) {
    co_return Refusal{502, fmt::format("host {} ({}) closed the link: {}", host.name,
                                       address.to_string(), wec.message())};
  }
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> answer;
  answer.header_limit(config_.peer_header_bytes);
  answer.body_limit(max_refusal_body);
  auto [rec, read] = co_await http::async_read_header(*tls, buffer, answer, use_tuple);
  if (rec) {
    co_return Refusal{502, fmt::format("host {} ({}) sent no answer: {}", host.name,
                                       address.to_string(), rec.message())};
  }
  if (answer.get().result() != http::status::ok) {
    co_await http::async_read(*tls, buffer, answer, use_tuple);
    co_return peer_refusal(host.name, answer.get().result_int(), answer.get().body());
  }

  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
    co_return Refusal{
        502, fmt::format("no socket pair for host {}: {}", host.name, std::strerror(errno))};
  }
  Stream near(executor), far(executor);
  error_code aec;
  near.assign(asio::generic::stream_protocol(AF_UNIX, 0), pair[0], aec);
  far.assign(asio::generic::stream_protocol(AF_UNIX, 0), pair[1], aec);
  Channel channel{std::move(near), {}, ChannelKey::of(vm, port)};
  // What the agent sent right behind the answer is the start of its reply.
  if (buffer.size() > 0) {
    channel.buffer.commit(asio::buffer_copy(channel.buffer.prepare(buffer.size()), buffer.data()));
  }
  auto peer = std::make_unique<ClientStream>(std::move(tls), tls_);
  asio::co_spawn(executor, relay_peer(std::move(peer), std::move(far), relay_idle_),
                 [host = host.name](std::exception_ptr e) {
                   if (e)
                     log::error("peer_relay_failed").kv("host", host).kv("error", log::describe(e));
                 });
  co_return channel;
}

awaitable<ChannelResult> open_vm_channel(const ChannelConfig& config, PeerChannels* peers,
                                         const VmRecord& vm, const transport::Address& address,
                                         std::uint16_t port, const PeerRequest& request,
                                         std::optional<AttachedDevice> attached) {
  if (peers && peers->remote(vm)) {
    PeerRequest to_host = request;
    to_host.target_host = vm.host;
    co_return co_await peers->open(vm, port, to_host);
  }
  co_return co_await open_channel(config, vm, address, port, request.client, request.request_id,
                                  std::move(attached));
}

}  // namespace vmgate::hostd
