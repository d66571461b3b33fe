#include "hostd/listener/server.hpp"

#include <unistd.h>

#include <stdexcept>

#include <fmt/format.h>

#include "common/log.hpp"
#include "common/transport.hpp"
#include "hostd/listener/client_connection.hpp"
#include "hostd/listener/descriptor_reserve.hpp"
#include "hostd/listener/passthrough.hpp"

namespace vmgate::hostd {

// One listening socket, watched by one acceptor per I/O thread: each thread
// accepts for itself, so a connection is served where it was accepted and no
// thread wakes another to hand it over. The extra acceptors hold dup()s of the
// same socket rather than SO_REUSEPORT siblings, which any process of the same
// user could join.
struct Server::Listener {
  const ListenerConfig& config;     // as started: listeners change only with a restart
  std::size_t index;                // in config.listeners
  std::vector<Acceptor> acceptors;  // [0] on io_, then one per other session executor
  std::unique_ptr<TlsServer> tls;   // a TLS listener's context, which SIGHUP reloads
  std::string bound;
};

namespace {

// A connection's context and the snapshot it refers to, which it keeps alive.
struct SnapshotContext {
  std::shared_ptr<const RunningConfig> running;
  ConnectionContext context;
};

// Runs `connection`, keeping what it refers to until it ends.
awaitable<void> keeping([[maybe_unused]] std::shared_ptr<const SnapshotContext> kept,
                        awaitable<void> connection) {
  co_await std::move(connection);
}

}  // namespace

Server::Server(asio::io_context& io, const CurrentConfig& current, const Directory& directory,
               ChannelBudget& budget, HostdMetrics* metrics, ChannelPool* pool,
               std::vector<asio::any_io_executor> session_executors, const TokenFile* tokens,
               IdleConnections* idle, LiveChannels* live)
    : io_(io),
      current_(current),
      directory_(directory),
      budget_(budget),
      metrics_(metrics),
      pool_(pool),
      session_executors_(std::move(session_executors)),
      tokens_(tokens),
      idle_(idle),
      live_(live) {
  if (session_executors_.empty()) session_executors_.push_back(io_.get_executor());
}

Server::~Server() = default;

void Server::start() {
  const auto running = current_.get();
  for (const auto& lc : running->config.listeners) {
    // Certificates first: a listener never accepts before it can speak TLS.
    std::unique_ptr<TlsServer> tls;
    if (lc.tls) tls = std::make_unique<TlsServer>(lc.name, *lc.tls);
    if (lc.identity == ListenerIdentity::token && tokens_ == nullptr)
      throw std::runtime_error(
          fmt::format("listener {}: identity = \"token\" without tokens", lc.name));
    error_code ec;
    auto acceptor = transport::listen(io_.get_executor(), lc.address, ec);
    if (ec) {
      throw std::runtime_error(fmt::format("listener {}: cannot listen on {}: {}", lc.name,
                                           lc.address.to_string(), ec.message()));
    }
    auto bound = transport::local_uri(acceptor, lc.address);
    std::vector<Acceptor> acceptors;
    for (const auto& executor : session_executors_) {
      if (executor == io_.get_executor()) continue;
      int fd = ::dup(acceptor.native_handle());
      if (fd < 0) {
        throw std::runtime_error(
            fmt::format("listener {}: dup: {}", lc.name,
                        error_code(errno, asio::error::get_system_category()).message()));
      }
      Acceptor& extra = acceptors.emplace_back(executor);
      extra.assign(acceptor.local_endpoint().protocol(), fd, ec);
      if (ec) {
        ::close(fd);
        throw std::runtime_error(fmt::format("listener {}: cannot watch the listening socket: {}",
                                             lc.name, ec.message()));
      }
    }
    acceptors.insert(acceptors.begin(), std::move(acceptor));
    // The first snapshot lives as long as hostd (main holds it).
    listeners_.push_back(std::make_unique<Listener>(
        Listener{lc, listeners_.size(), std::move(acceptors), std::move(tls), bound}));
    log::info("listening")
        .kv("listener", lc.name)
        .kv("addr", bound)
        .kv("guest_port", lc.guest_port)
        .kv("mode", lc.mode == ListenerMode::passthrough ? "passthrough" : "proxy")
        .kv("identity", identity_name(lc.identity))
        .kv("tls", lc.tls.has_value());
  }
  for (auto& l : listeners_) {
    for (auto& acceptor : l->acceptors) {
      asio::co_spawn(
          acceptor.get_executor(), accept_loop(*l, acceptor),
          [name = l->config.name](std::exception_ptr e) {
            if (e)
              log::error("accept_loop_failed").kv("listener", name).kv("error", log::describe(e));
          });
    }
  }
}

void Server::stop_accepting() {
  // Each acceptor belongs to its thread's io_context: it is closed there.
  for (auto& l : listeners_) {
    for (auto& acceptor : l->acceptors) {
      asio::post(acceptor.get_executor(), [&acceptor] {
        error_code ignored;
        acceptor.close(ignored);
      });
    }
  }
}

bool Server::reload_tls() {
  bool all = true;
  for (auto& l : listeners_) {
    if (!l->tls) continue;
    std::string error = l->tls->reload();
    if (error.empty()) {
      log::info("tls_reloaded").kv("listener", l->config.name);
    } else {
      all = false;
      log::error("tls_reload_failed").kv("listener", l->config.name).kv("error", error);
    }
  }
  return all;
}

std::vector<std::string> Server::bound_addresses() const {
  std::vector<std::string> out;
  for (const auto& l : listeners_)
    out.push_back(l->bound);
  return out;
}

// The acceptors of all I/O threads share the count: a compare-and-swap, so
// two of them cannot both take the last slot.
bool Server::take_connection_slot(const LimitsConfig& limits) {
  std::uint32_t open = connections_->load();
  do {
    if (open >= limits.max_connections) return false;
  } while (!connections_->compare_exchange_weak(open, open + 1));
  return true;
}

// The connection's place under its address's cap, into `slot`. A client
// over it is still served on a proxy listener, to be answered 429
// (ClientConnection); a passthrough client speaks TLS hostd cannot answer in,
// so it is closed here, as at max_connections: false then.
bool Server::take_client_place(const Listener& listener, Stream& socket, const LimitsConfig& limits,
                               ConnectionSlot& slot) {
  auto address = transport::peer_ip(socket);
  if (!address) return true;  // a unix socket's client: no address to count
  slot.set_client_place(caps_.take_client(*address, limits.max_connections_per_client));
  if (!slot.over_client_cap() || listener.config.mode != ListenerMode::passthrough) return true;
  log::warn("connection_refused")
      .kv("listener", listener.config.name)
      .kv("client", transport::describe_peer(socket))
      .kv("reason", "max_connections_per_client");
  error_code ignored;
  socket.close(ignored);
  return false;
}

awaitable<void> Server::accept_loop(Listener& listener, Acceptor& acceptor) {
  // The connection lives on this single-threaded io_context from here on, so
  // it needs no strand, and its socket is registered with this thread's reactor.
  asio::any_io_executor executor = acceptor.get_executor();
  asio::steady_timer backoff(executor);
  DescriptorReserve reserve;  // hostd/listener/descriptor_reserve.hpp says why
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(use_tuple);
    if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
    if (ec) {
      // Out of descriptors or a transient network error: wait and go on, never exit.
      if (reserve.refuse_at_limit(ec, acceptor, listener.config.name)) continue;
      if (!DescriptorReserve::exhausted(ec))
        log::warn("accept_failed").kv("listener", listener.config.name).kv("error", ec.message());
      backoff.expires_after(accept_pause);
      co_await backoff.async_wait(use_tuple);
      continue;
    }
    // Its reserve's number went to a connection another acceptor took: this
    // connection's number becomes the reserve if none is free.
    if (reserve.reclaim(socket)) continue;
    DescriptorReserve::accepted();
    auto running = current_.get();
    if (!take_connection_slot(running->config.limits)) {
      log::warn("connection_refused")
          .kv("listener", listener.config.name)
          .kv("client", transport::describe_peer(socket))
          .kv("reason", "max_connections");
      error_code ignored;
      socket.close(ignored);
      continue;
    }
    transport::tune(socket, listener.config.address.kind);
    const std::uint64_t id = ++next_connection_id_;
    // A passthrough listener's clients speak TLS that hostd does not
    // terminate: no request head to read, a ClientHello to route on.
    ConnectionSlot slot(connections_);
    if (!take_client_place(listener, socket, running->config.limits, slot)) continue;
    const HostdConfig& config = running->config;
    auto kept = std::make_shared<const SnapshotContext>(SnapshotContext{
        running, ConnectionContext{config, config.listeners[listener.index], directory_,
                                   running->policy, budget_, metrics_, pool_, listener.tls.get(),
                                   tokens_, idle_, live_, &caps_}});
    auto connection =
        listener.config.mode == ListenerMode::passthrough
            ? serve_passthrough(std::move(socket), kept->context, id, std::move(slot))
            : serve_client(std::move(socket), kept->context, kept, id, std::move(slot));
    // The connection's coroutine owns it to its end; this handler only hears
    // of an end nothing expected (an exception), once, with its id.
    asio::co_spawn(executor, keeping(std::move(kept), std::move(connection)),
                   [name = listener.config.name, id](std::exception_ptr e) {
                     if (!e) return;
                     log::error("connection_failed")
                         .kv("conn", static_cast<unsigned long long>(id))
                         .kv("listener", name)
                         .kv("error", log::describe(e));
                   });
  }
}

}  // namespace vmgate::hostd
