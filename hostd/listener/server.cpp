#include "hostd/listener/server.hpp"

#include <unistd.h>

#include <algorithm>
#include <functional>
#include <map>
#include <stdexcept>

#include <fmt/format.h>

#include "common/log.hpp"
#include "common/transport.hpp"
#include "hostd/listener/client_connection.hpp"
#include "hostd/listener/descriptor_reserve.hpp"
#include "hostd/listener/passthrough.hpp"

namespace vmgate::hostd {

// A listener's settings as one snapshot, as RunningConfig is the config's: a
// connection takes the one current when it is accepted and keeps it to its
// end, so a SIGHUP that changes the listener changes what its new
// connections get and nothing of the open ones.
struct ListenerSettings {
  ListenerConfig config;
  std::shared_ptr<TlsServer>
      tls;  // a TLS listener's context, which SIGHUP reloads; null: plaintext
};

// One listening socket, watched by one acceptor per I/O thread: each thread
// accepts for itself, so a connection is served where it was accepted and no
// thread wakes another to hand it over. The extra acceptors hold dup()s of the
// same socket rather than SO_REUSEPORT siblings, which any process of the same
// user could join.
//
// A reload that changes a listener on the same address swaps its settings
// here, in place, and keeps its socket. Closing it and binding again would
// drop the connections waiting in its accept queue and leave a moment in
// which connects are refused; binding a second socket alongside would need
// SO_REUSEPORT (the objection above). The accepted connections are sockets
// of their own either way: closing a listening socket never touches them.
struct Server::Listener {
  Listener(std::string its_key, std::shared_ptr<const ListenerSettings> first, std::string bound_to)
      : key(std::move(its_key)), settings(std::move(first)), bound(std::move(bound_to)) {}

  std::shared_ptr<const ListenerSettings> now() const { return settings.load(); }
  std::string name() const { return now()->config.name; }

  const std::string key;  // what a reload knows it by (listener_keys)
  std::atomic<std::shared_ptr<const ListenerSettings>> settings;
  std::vector<Acceptor> acceptors;  // [0] on io_, then one per other session executor
  const std::string bound;
  // Accept loops not yet ended: a removed listener is kept (Server::retired_)
  // until none is left, since each loop refers to it and to its acceptor.
  std::atomic<unsigned> loops{0};
};

// One listener of the new config: a running one, with new settings when
// they changed, or one bound for this reload.
struct Server::ListenerReload::Next {
  std::shared_ptr<Listener> listener;
  std::shared_ptr<const ListenerSettings> settings;  // null: as it runs now
  bool added = false;
};

Server::ListenerReload::ListenerReload() = default;
Server::ListenerReload::ListenerReload(ListenerReload&&) noexcept = default;
Server::ListenerReload& Server::ListenerReload::operator=(ListenerReload&&) noexcept = default;
Server::ListenerReload::~ListenerReload() = default;

namespace {

// A connection's context and the snapshots it refers to, which it keeps alive.
struct SnapshotContext {
  std::shared_ptr<const RunningConfig> running;
  std::shared_ptr<const ListenerSettings> listener;
  ConnectionContext context;
};

// Runs `connection`, keeping what it refers to until it ends.
awaitable<void> keeping([[maybe_unused]] std::shared_ptr<const SnapshotContext> kept,
                        awaitable<void> connection) {
  co_await std::move(connection);
}

// What a reload matches listeners by: the address. Port 0 is a port of the
// kernel's choosing at each bind, so several listeners may ask for it on
// one host: they are told apart by their name, then by their order among
// those of that name ("tcp:127.0.0.1:0 wsman #1").
std::vector<std::string> listener_keys(const std::vector<ListenerConfig>& listeners) {
  std::vector<std::string> keys;
  std::map<std::string, unsigned> ephemeral;
  for (const auto& l : listeners) {
    std::string key = l.address.to_string();
    if (l.address.kind == transport::Kind::tcp && l.address.port == 0) {
      key += " " + l.name;
      key += fmt::format(" #{}", ephemeral[key]++);
    }
    keys.push_back(std::move(key));
  }
  return keys;
}

void log_listening(const ListenerConfig& lc, const std::string& bound, const char* event) {
  log::info(event)
      .kv("listener", lc.name)
      .kv("addr", bound)
      .kv("guest_port", lc.guest_port)
      .kv("mode", lc.mode == ListenerMode::passthrough ? "passthrough" : "proxy")
      .kv("identity", identity_name(lc.identity))
      .kv("tls", lc.tls.has_value());
}

}  // namespace

Server::Server(asio::io_context& io, const CurrentConfig& current, const Directory& directory,
               ChannelBudget& budget, HostdMetrics* metrics, ChannelPool* pool,
               std::vector<asio::any_io_executor> session_executors, const TokenFile* tokens,
               IdleConnections* idle, LiveChannels* live, ChannelOnDemand* on_demand,
               PeerChannels* peers)
    : io_(io),
      current_(current),
      directory_(directory),
      budget_(budget),
      metrics_(metrics),
      pool_(pool),
      session_executors_(std::move(session_executors)),
      tokens_(tokens),
      idle_(idle),
      live_(live),
      on_demand_(on_demand),
      peers_(peers) {
  if (session_executors_.empty()) session_executors_.push_back(io_.get_executor());
}

Server::~Server() = default;

namespace {

// A listener's settings; its TLS context is `tls` when given (the running
// one, whose files did not change), else read now. Throws
// std::runtime_error at the listener's line.
std::shared_ptr<const ListenerSettings> make_settings(const ListenerConfig& lc,
                                                      std::shared_ptr<TlsServer> tls,
                                                      const TokenFile* tokens) {
  if (lc.identity == ListenerIdentity::token && tokens == nullptr)
    throw std::runtime_error(fmt::format("{}: identity = \"token\" without tokens", lc.where.text));
  try {
    if (lc.tls && !tls) tls = std::make_shared<TlsServer>(lc.name, *lc.tls);
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("{}: {}", lc.where.text, e.what()));
  }
  return std::make_shared<const ListenerSettings>(ListenerSettings{lc, std::move(tls)});
}

}  // namespace

std::shared_ptr<Server::Listener> Server::open_listener(const ListenerConfig& lc, std::string key) {
  // Certificates first: a listener never accepts before it can speak TLS.
  auto settings = make_settings(lc, nullptr, tokens_);
  error_code ec;
  auto acceptor = transport::listen(io_.get_executor(), lc.address, ec);
  if (ec) {
    throw std::runtime_error(fmt::format("{}: cannot listen on {}: {}", lc.where.text,
                                         lc.address.to_string(), ec.message()));
  }
  auto listener = std::make_shared<Listener>(std::move(key), std::move(settings),
                                             transport::local_uri(acceptor, lc.address));
  for (const auto& executor : session_executors_) {
    if (executor == io_.get_executor()) continue;
    int fd = ::dup(acceptor.native_handle());
    if (fd < 0) {
      throw std::runtime_error(
          fmt::format("{}: dup: {}", lc.where.text,
                      error_code(errno, asio::error::get_system_category()).message()));
    }
    Acceptor& extra = listener->acceptors.emplace_back(io_executor_of(executor));
    extra.assign(acceptor.local_endpoint().protocol(), fd, ec);
    if (ec) {
      ::close(fd);
      throw std::runtime_error(
          fmt::format("{}: cannot watch the listening socket: {}", lc.where.text, ec.message()));
    }
  }
  listener->acceptors.insert(listener->acceptors.begin(), std::move(acceptor));
  return listener;
}

void Server::start_accepting(const std::shared_ptr<Listener>& listener) {
  for (auto& acceptor : listener->acceptors) {
    ++listener->loops;
    asio::co_spawn(acceptor.get_executor(), accept_loop(*listener, acceptor),
                   [l = listener.get()](std::exception_ptr e) {
                     if (e)
                       log::error("accept_loop_failed")
                           .kv("listener", l->name())
                           .kv("error", log::describe(e));
                     --l->loops;
                   });
  }
}

void Server::start() {
  const auto running = current_.get();
  const auto& configs = running->config.listeners;
  const auto keys = listener_keys(configs);
  // Every listener bound before any accepts: one that cannot stops hostd.
  for (std::size_t i = 0; i < configs.size(); ++i)
    listeners_.push_back(open_listener(configs[i], keys[i]));
  for (auto& l : listeners_) {
    log_listening(l->now()->config, l->bound, "listening");
    start_accepting(l);
  }
}

void Server::close_acceptors(Listener& listener, std::function<void()> closed) {
  // Each acceptor belongs to its thread's io_context: it is closed there.
  // The last to close runs `closed`: until then the port still accepts.
  auto left = std::make_shared<std::atomic<std::size_t>>(listener.acceptors.size());
  auto done = std::make_shared<std::function<void()>>(std::move(closed));
  for (auto& acceptor : listener.acceptors) {
    asio::post(acceptor.get_executor(), [&acceptor, left, done] {
      error_code ignored;
      acceptor.close(ignored);
      if (--*left == 0 && *done) (*done)();
    });
  }
}

void Server::stop_accepting() {
  for (auto& l : listeners_)
    close_acceptors(*l);
}

// A listener that cannot bind (its port in use) or whose TLS files do not
// load refuses the whole reload, as a config file with an error does: the
// operator who runs `systemctl reload` sees one outcome, the new file or the
// old one, never a mix of a new ACL with an old listener set, and the log
// line names the listener's FILE:LINE. The sockets are bound before anything
// changes so that this is known in time. An address moved to one that
// overlaps it (tcp:0.0.0.0:N to tcp:127.0.0.1:N) is therefore in use until
// the old listener closes: that takes two reloads, without and then with it.
Server::ListenerReload Server::prepare_listeners(const HostdConfig& next) {
  ListenerReload reload;
  const auto keys = listener_keys(next.listeners);
  for (std::size_t i = 0; i < next.listeners.size(); ++i) {
    const ListenerConfig& lc = next.listeners[i];
    auto running = std::find_if(listeners_.begin(), listeners_.end(),
                                [&](const auto& l) { return l->key == keys[i]; });
    if (running == listeners_.end()) {
      reload.next_.push_back({open_listener(lc, keys[i]), nullptr, true});
      continue;
    }
    const auto now = (*running)->now();
    if (now->config == lc && now->config.name == lc.name) {
      reload.next_.push_back({*running, nullptr, false});
      continue;
    }
    // The same TLS files under the same name: the running context, which
    // reload_tls keeps fresh, and open connections share.
    auto tls = now->config.tls == lc.tls && now->config.name == lc.name ? now->tls : nullptr;
    reload.next_.push_back({*running, make_settings(lc, std::move(tls), tokens_), false});
  }
  return reload;
}

void Server::apply_listeners(ListenerReload reload) {
  std::vector<std::shared_ptr<Listener>> next;
  for (auto& n : reload.next_) {
    if (n.added) {
      log_listening(n.listener->now()->config, n.listener->bound, "listening");
      start_accepting(n.listener);
    } else if (n.settings) {
      n.listener->settings.store(n.settings);
      log_listening(n.settings->config, n.listener->bound, "listener_changed");
    }
    next.push_back(std::move(n.listener));
  }
  // Those removed at an earlier reload whose accept loops have all ended.
  std::erase_if(retired_, [](const auto& l) { return l->loops.load() == 0; });
  for (auto& l : listeners_) {
    if (std::find(next.begin(), next.end(), l) != next.end()) continue;
    // Its accept loops end as they see the socket close; the connections
    // they accepted go on, each holding the settings it was accepted with.
    // Logged once the port refuses connections (every thread's acceptor closed).
    close_acceptors(*l, [name = l->name(), addr = l->bound] {
      log::info("listener_removed").kv("listener", name).kv("addr", addr);
    });
    retired_.push_back(std::move(l));
  }
  listeners_ = std::move(next);
}

bool Server::reload_tls() {
  bool all = true;
  for (auto& l : listeners_) {
    const auto settings = l->now();
    if (!settings->tls) continue;
    std::string error = settings->tls->reload();
    if (error.empty()) {
      log::info("tls_reloaded").kv("listener", settings->config.name);
    } else {
      all = false;
      log::error("tls_reload_failed").kv("listener", settings->config.name).kv("error", error);
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
bool Server::take_client_place(const ListenerConfig& listener, Stream& socket,
                               const transport::PeerAddress& peer, const LimitsConfig& limits,
                               ConnectionSlot& slot) {
  if (!peer.ip) return true;  // a unix socket's client: no address to count
  slot.set_client_place(caps_.take_client(*peer.ip, limits.max_connections_per_client));
  if (!slot.over_client_cap() || listener.mode != ListenerMode::passthrough) return true;
  log::warn("connection_refused")
      .kv("listener", listener.name)
      .kv("client", peer.text)
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
  DescriptorReserve reserve;     // hostd/listener/descriptor_reserve.hpp says why
  Acceptor::endpoint_type from;  // the client's address, given by accept(2)
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(from, use_tuple);
    if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
    if (ec) {
      // Out of descriptors or a transient network error: wait and go on, never exit.
      if (reserve.refuse_at_limit(ec, acceptor, listener.name())) continue;
      if (!DescriptorReserve::exhausted(ec))
        log::warn("accept_failed").kv("listener", listener.name()).kv("error", ec.message());
      backoff.expires_after(accept_pause);
      co_await backoff.async_wait(use_tuple);
      continue;
    }
    // Its reserve's number went to a connection another acceptor took: this
    // connection's number becomes the reserve if none is free.
    if (reserve.reclaim(socket)) continue;
    DescriptorReserve::accepted();
    transport::PeerAddress peer = transport::peer_address(from);
    auto running = current_.get();
    // The listener's settings of this moment, which the connection keeps.
    auto settings = listener.now();
    const ListenerConfig& lc = settings->config;
    if (!take_connection_slot(running->config.limits)) {
      log::warn("connection_refused")
          .kv("listener", lc.name)
          .kv("client", peer.text)
          .kv("reason", "max_connections");
      error_code ignored;
      socket.close(ignored);
      continue;
    }
    transport::tune(socket, lc.address.kind);
    const std::uint64_t id = ++next_connection_id_;
    // A passthrough listener's clients speak TLS that hostd does not
    // terminate: no request head to read, a ClientHello to route on.
    ConnectionSlot slot(connections_);
    if (!take_client_place(lc, socket, peer, running->config.limits, slot)) continue;
    const HostdConfig& config = running->config;
    auto kept = std::make_shared<const SnapshotContext>(SnapshotContext{
        running, settings,
        ConnectionContext{config, lc, directory_, running->policy, budget_, metrics_, pool_,
                          settings->tls.get(), tokens_, idle_, live_, &caps_, on_demand_, peers_}});
    auto connection = lc.mode == ListenerMode::passthrough
                          ? serve_passthrough(std::move(socket), std::move(peer), kept->context, id,
                                              std::move(slot))
                          : serve_client(std::move(socket), std::move(peer), kept->context, kept,
                                         id, std::move(slot));
    // The connection's coroutine owns it to its end; this handler only hears
    // of an end nothing expected (an exception), once, with its id.
    asio::co_spawn(executor, keeping(std::move(kept), std::move(connection)),
                   [name = lc.name, id](std::exception_ptr e) {
                     if (!e) return;
                     log::error("connection_failed")
                         .kv("conn", static_cast<unsigned long long>(id))
                         .kv("listener", name)
                         .kv("error", log::describe(e));
                   });
  }
}

}  // namespace vmgate::hostd
