#include "hostd/cluster/peer_server.hpp"

#include <chrono>
#include <stdexcept>

#include <fmt/format.h>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "common/deadline.hpp"
#include "common/log.hpp"
#include "hostd/channel/channel.hpp"
#include "hostd/cluster/peer_channels.hpp"
#include "hostd/cluster/peer_fanout_message.hpp"
#include "hostd/fanout/fanout_delivery.hpp"
#include "hostd/fanout/fanout_plan.hpp"
#include "hostd/identity/tls_server.hpp"
#include "hostd/proxy/client_stream.hpp"
#include "hostd/proxy/error_response.hpp"
#include "hostd/route/target.hpp"

namespace vmgate::hostd {
namespace beast = boost::beast;
namespace http = beast::http;

namespace {

using clock = std::chrono::steady_clock;

std::string field_of(const http::request_header<>& head, std::string_view name) {
  auto it = head.find(name);
  return it == head.end() ? std::string() : std::string(it->value());
}

// What the sender names, checked as the receiver must: its own VM, by
// UUID, running, on a port; else the refusal.
struct Delivery {
  VmRecord vm;
  std::uint16_t port = 0;
  transport::Address address;
};

boost::system::result<Delivery, Refusal> check_request(const http::request_header<>& head,
                                                       const HostdConfig& config,
                                                       const ClusterDirectory& directory) {
  if (head.method() != http::verb::connect)
    return Refusal{405, "the peer listener takes CONNECT UUID:PORT only"};
  auto authority = parse_authority(head.target());
  if (!authority || authority->port == 0)
    return Refusal{400, "the peer listener takes CONNECT UUID:PORT only"};
  if (!looks_like_uuid(authority->host))
    return Refusal{400, "peer requests name their VM by UUID (the first host resolves names)"};
  const std::string target_host = field_of(head, peer_host_field);
  if (target_host != directory.host())
    return Refusal{421, fmt::format("this is host {}, not '{}'", directory.host(), target_host)};
  Lookup lookup = directory.find(authority->host);
  // Only a VM this host runs: another host's is never forwarded again.
  if (lookup.status != LookupStatus::found || lookup.vm->host != directory.host())
    return Refusal{404, fmt::format("vm {} is not on host {}", authority->host, directory.host())};
  VmRecord& vm = *lookup.vm;
  if (vm.state != VmState::running)
    return Refusal{503, fmt::format("vm {} is {}", vm.name, state_name(vm.state))};
  auto address = channel_address(config.channel, vm);
  if (!address) return address.error();
  return Delivery{std::move(vm), authority->port, std::move(*address)};
}

// The connecting host, from its certificate: the first name that is a host
// with a record in the directory.
std::optional<std::string> peer_host(SSL* ssl, const ClusterDirectory& directory) {
  Identity identity = certificate_identity(ssl);
  for (const auto& name : identity.certificate_names)
    if (directory.host_record(name)) return name;
  return std::nullopt;
}

}  // namespace

// A fan-out message as serve() read its head, for serve_fanout.
struct PeerServer::FanoutMessage {
  ClientStream& peer;
  beast::flat_buffer& buffer;
  http::request_parser<http::empty_body>& parser;
  Deadline& deadline;
  std::uint64_t id;
  const std::string& from_address;
  const std::string& from_host;
  const std::string& request_id;
  const std::string& client;
  const std::string& identity;
};

PeerServer::PeerServer(asio::any_io_executor executor, const HostdConfig& config,
                       const ClusterDirectory& directory, std::shared_ptr<asio::ssl::context> tls,
                       LiveChannels* live, PeerFanoutDelivery fanout)
    : executor_(std::move(executor)),
      config_(config),
      directory_(directory),
      tls_(std::move(tls)),
      live_(live),
      fanout_(fanout) {}

PeerServer::~PeerServer() = default;

void PeerServer::start() {
  error_code ec;
  auto acceptor = transport::listen(executor_, config_.cluster.peer_listen, ec);
  if (ec) {
    throw std::runtime_error(fmt::format("cluster.peer_listen: cannot listen on {}: {}",
                                         config_.cluster.peer_listen.to_string(), ec.message()));
  }
  acceptor_ = std::make_unique<Acceptor>(std::move(acceptor));
  log::info("peer_listening")
      .kv("addr", transport::local_uri(*acceptor_, config_.cluster.peer_listen))
      .kv("host", directory_.host());
  asio::co_spawn(executor_, accept_loop(), [](std::exception_ptr e) {
    if (e) log::error("peer_listener_failed").kv("error", log::describe(e));
  });
}

void PeerServer::stop() {
  if (!acceptor_) return;
  error_code ignored;
  acceptor_->close(ignored);
}

awaitable<void> PeerServer::accept_loop() {
  asio::steady_timer pause(executor_);
  while (acceptor_->is_open()) {
    auto [ec, socket] = co_await acceptor_->async_accept(use_tuple);
    if (ec == asio::error::operation_aborted || !acceptor_->is_open()) co_return;
    if (ec) {
      // Out of descriptors, most likely: wait, then go on.
      log::warn("peer_accept_failed").kv("error", ec.message());
      pause.expires_after(std::chrono::milliseconds(100));
      co_await pause.async_wait(use_tuple);
      continue;
    }
    const std::uint64_t id = next_id_++;
    asio::co_spawn(executor_, serve(std::move(socket), id), [id](std::exception_ptr e) {
      if (e)
        log::error("peer_connection_failed")
            .kv("conn", static_cast<unsigned long long>(id))
            .kv("error", log::describe(e));
    });
  }
}

awaitable<void> PeerServer::serve(Stream socket, std::uint64_t id) {
  const auto started = clock::now();
  const std::string from_address = transport::describe_peer(socket);
  transport::tune(socket, transport::Kind::tcp);
  auto tls = std::make_unique<ClientStream::TlsStream>(std::move(socket), *tls_);
  Deadline deadline(executor_);
  auto close_on_expiry = [&] {
    deadline.expires_after(config_.cluster.peer_connect_timeout, [&tls] {
      error_code ignored;
      tls->next_layer().close(ignored);
    });
  };
  close_on_expiry();
  auto [hec] = co_await tls->async_handshake(use_tuple);
  if (hec) {
    deadline.expires_never();
    log::warn("peer_handshake_failed")
        .kv("conn", static_cast<unsigned long long>(id))
        .kv("peer", from_address)
        .kv("reason", handshake_failure(tls->native_handle(), hec));
    co_return;
  }
  ClientStream peer(std::move(tls), tls_);
  // The head's deadline goes on, closing the socket the stream now owns (the
  // handshake's action would reach the moved-from pointer).
  deadline.expires_after(config_.cluster.peer_connect_timeout, [&peer] {
    error_code ignored;
    peer.socket().close(ignored);
  });
  beast::flat_buffer buffer;
  http::request_parser<http::empty_body> parser;
  parser.header_limit(config_.cluster.peer_header_bytes);
  auto respond = [&](const Refusal& refusal, const std::string& request_id) -> awaitable<void> {
    auto response = make_error_response(refusal, request_id, 11, false);
    co_await http::async_write(peer, response, use_tuple);
    deadline.expires_never();
    co_await peer.close(true, std::chrono::milliseconds(1000));
  };
  const auto from_host = peer_host(peer.tls()->native_handle(), directory_);
  auto [rec, n] = co_await http::async_read_header(peer, buffer, parser, use_tuple);
  if (rec) {
    deadline.expires_never();
    co_return;
  }
  ++received_;
  const auto& head = parser.get();
  const std::string request_id = field_of(head, peer_request_id_field);
  const std::string client = field_of(head, peer_client_field);
  const std::string identity = field_of(head, peer_identity_field);
  {
    std::optional<std::string> delivery_vm;
    auto record = [&](unsigned status, std::string_view reason) {
      log::Line l(log::Level::info, "peer_request");
      l.kv("conn", static_cast<unsigned long long>(id))
          .kv("peer", from_address)
          .kv("from", from_host.value_or("unknown"))
          .kv("req", request_id)
          .kv("client", client)
          .kv("identity", identity)
          .kv("target", std::string(head.target()))
          .kv("status", status);
      if (delivery_vm) l.kv("vm", *delivery_vm);
      if (!reason.empty()) l.kv("reason", reason);
    };
    // Only a host of the cluster is heard, and only as the host it is.
    if (!from_host) {
      Refusal refusal{403, "the peer's certificate names no host in the cluster directory"};
      record(refusal.status, refusal.reason);
      co_await respond(refusal, request_id);
      co_return;
    }
    if (is_peer_fanout(head)) {
      FanoutMessage message{.peer = peer,
                            .buffer = buffer,
                            .parser = parser,
                            .deadline = deadline,
                            .id = id,
                            .from_address = from_address,
                            .from_host = *from_host,
                            .request_id = request_id,
                            .client = client,
                            .identity = identity};
      co_await serve_fanout(message);
      co_return;
    }
    auto delivery = check_request(head, config_, directory_);
    if (delivery) delivery_vm = delivery->vm.name;
    if (!delivery) {
      record(delivery.error().status, delivery.error().reason);
      co_await respond(delivery.error(), request_id);
      co_return;
    }
    auto channel = co_await open_channel(config_.channel, delivery->vm, delivery->address,
                                         delivery->port, client, request_id);
    if (!channel) {
      record(channel.error().status, channel.error().reason);
      co_await respond(channel.error(), request_id);
      co_return;
    }
    deadline.expires_never();
    record(200, {});
    static constexpr std::string_view established = "HTTP/1.1 200 Connection established\r\n\r\n";
    auto [wec, wn] = co_await asio::async_write(peer, asio::buffer(established), use_tuple);
    if (wec) co_return;
    if (buffer.size() > 0) {
      auto [bec, bn] = co_await asio::async_write(channel->stream, buffer.data(), use_tuple);
      if (bec) co_return;
      buffer.consume(bn);
    }
    if (channel->buffer.size() > 0) {
      auto [bec, bn] = co_await asio::async_write(peer, channel->buffer.data(), use_tuple);
      if (bec) co_return;
      channel->buffer.consume(bn);
    }
    RelayResult relayed;
    {
      // Cut when the VM goes away here, as a local request's channel is.
      const ChannelWatch watch(live_, channel->key, channel->stream, &peer.socket());
      relayed = co_await relay_tunnel(peer, channel->stream, config_.limits.idle_timeout);
    }
    error_code ignored;
    channel->stream.close(ignored);
    co_await peer.close(!relayed.error, std::chrono::milliseconds(1000));
    // The link's end: a pooled link carries several requests to its VM.
    log::Line l(log::Level::info, "peer_link_closed");
    l.kv("conn", static_cast<unsigned long long>(id))
        .kv("from", *from_host)
        .kv("req", request_id)
        .kv("vm", delivery->vm.name)
        .kv("port", static_cast<unsigned>(delivery->port))
        .kv("bytes_in", static_cast<unsigned long long>(relayed.a_to_b))
        .kv("bytes_out", static_cast<unsigned long long>(relayed.b_to_a))
        .kv("ms", static_cast<long long>(
                      std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - started)
                          .count()));
  }
}

// The VMs of this host a fan-out on another host reached, delivered as its
// own fan-outs are; the results go back as NDJSON as they complete. What the
// sender's head says is read within the fan-out limits of this host, before
// the body; a refusal of the whole message is an error response, as for
// CONNECT, and a VM it cannot deliver to is a part of its own.
awaitable<void> PeerServer::serve_fanout(FanoutMessage& m) {
  const auto& head = m.parser.get();
  std::size_t vms = 0;
  auto record = [&](unsigned status, std::string_view reason) {
    log::Line l(log::Level::info, "peer_request");
    l.kv("conn", static_cast<unsigned long long>(m.id))
        .kv("peer", m.from_address)
        .kv("from", m.from_host)
        .kv("req", m.request_id)
        .kv("client", m.client)
        .kv("identity", m.identity)
        .kv("target", std::string(peer_fanout_path))
        .kv("vms", static_cast<unsigned long long>(vms))
        .kv("status", status);
    if (!reason.empty()) l.kv("reason", reason);
  };
  auto refuse = [&](const Refusal& refusal) -> awaitable<void> {
    record(refusal.status, refusal.reason);
    auto response = make_error_response(refusal, m.request_id, 11, false);
    m.deadline.expires_after(config_.cluster.peer_connect_timeout, [&m] {
      error_code ignored;
      m.peer.socket().close(ignored);
    });
    co_await http::async_write(m.peer, response, use_tuple);
    m.deadline.expires_never();
    co_await m.peer.close(true, std::chrono::milliseconds(1000));
  };
  const std::string target_host = field_of(head, peer_host_field);
  if (target_host != directory_.host()) {
    const Refusal refusal{421,
                          fmt::format("this is host {}, not '{}'", directory_.host(), target_host)};
    co_return co_await refuse(refusal);
  }
  if (!fanout_.budget) {
    const Refusal refusal{501, "this host's peer listener takes no fan-out messages"};
    co_return co_await refuse(refusal);
  }
  const PeerFanoutLimits limits{.max_vms = config_.fanout.max_targets,
                                .max_head_bytes = config_.limits.header_bytes,
                                .max_body = config_.fanout.max_body};
  auto declared = parse_peer_fanout_head(head, limits);
  if (!declared) co_return co_await refuse(declared.error());
  vms = static_cast<std::size_t>(declared->vms);

  // The whole message, within what the head declared and the idle timeout.
  http::request_parser<http::string_body> whole{std::move(m.parser)};
  whole.body_limit(declared->content_length);
  m.deadline.expires_after(config_.limits.idle_timeout, [&m] {
    error_code ignored;
    m.peer.socket().close(ignored);
  });
  auto [rec, n] = co_await http::async_read(m.peer, m.buffer, whole, use_tuple);
  m.deadline.expires_never();
  if (rec) {
    record(499, fmt::format("the sender went away mid-message: {}", rec.message()));
    co_return;
  }
  const std::string& bytes = whole.get().body();
  auto split = split_peer_fanout_body(bytes, *declared);
  if (!split) co_return co_await refuse(split.error());
  if (split->body.size() > config_.fanout.max_body) {
    const Refusal refusal{413, fmt::format("a body of {} bytes exceeds fanout.max_body ({} bytes)",
                                           split->body.size(), config_.fanout.max_body)};
    co_return co_await refuse(refusal);
  }
  // The head the agents get was rewritten by the first host; it is parsed
  // here only to be sure it is one head, and whether it is a HEAD.
  http::request_parser<http::empty_body> agent;
  agent.header_limit(static_cast<std::uint32_t>(config_.limits.header_bytes));
  error_code pec;
  const std::size_t used =
      agent.put(asio::buffer(split->agent_head.data(), split->agent_head.size()), pec);
  if (pec || !agent.is_header_done() || used != split->agent_head.size()) {
    const Refusal refusal{400, "the fan-out message's agent head is not one request head"};
    co_return co_await refuse(refusal);
  }

  const FanoutPlan plan =
      plan_peer_fanout(split->vms, directory_, directory_.host(), config_.channel);
  record(200, {});
  RequestRecord rec_of;
  if (!m.request_id.empty()) rec_of.id = m.request_id;
  rec_of.conn = m.id;
  rec_of.listener = "peer";
  rec_of.client = m.client;
  rec_of.identity = m.identity.empty() ? std::string("-") : m.identity;
  rec_of.method = std::string(agent.get().method_string());
  rec_of.form = "peer_fanout";
  rec_of.target = m.from_host;
  rec_of.port = declared->port;
  Route route;
  route.port = declared->port;
  const PreparedFanout prepared{.agent_head = split->agent_head,
                                .body = split->body,
                                .is_head = agent.get().method() == http::verb::head};
  // Never forwarded again: no peers, and the plan holds this host's VMs only.
  const FanoutEnds ends{.client = m.peer,
                        .client_buffer = m.buffer,
                        .deadline = m.deadline,
                        .config = config_,
                        .budget = *fanout_.budget,
                        .pool = fanout_.pool,
                        .live = live_,
                        .metrics = fanout_.metrics,
                        .peer = m.client,
                        .trusted_listener = false,
                        .peers = nullptr,
                        .identity = m.identity};
  // `m.parser` was moved from: a prepared fan-out never reads its head.
  // The connection ends with the answer, whatever run_fanout says of it.
  co_await run_fanout(ends, FanoutRequest{m.parser, route, plan, &prepared}, rec_of);
  co_await m.peer.close(true, std::chrono::milliseconds(1000));
}

}  // namespace vmgate::hostd
