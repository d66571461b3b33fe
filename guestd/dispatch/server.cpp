#include "guestd/dispatch/server.hpp"

#include <unistd.h>

#include <exception>
#include <map>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "common/log.hpp"
#include "common/transport.hpp"
#include "guestd/dispatch/channel_session.hpp"

namespace vmgate::guestd {
namespace {

// After a failed accept (EMFILE, ENOBUFS, ...), pause before the next one
// rather than spin or exit.
constexpr std::chrono::milliseconds accept_retry_delay{200};

}  // namespace

// Shared with every coroutine the server starts, so none can outlive it.
struct Server::State : std::enable_shared_from_this<State>, SessionRegistry {
  State(asio::any_io_executor ex, GuestdConfig c)
      : executor(ex),
        config(std::make_shared<const GuestdConfig>(std::move(c))),
        acceptor(io_executor_of(ex)),
        retry_timer(ex),
        grace_timer(ex) {}

  asio::any_io_executor executor;
  std::shared_ptr<const GuestdConfig> config;
  Acceptor acceptor;
  asio::steady_timer retry_timer;
  asio::steady_timer grace_timer;
  // The running sessions, each registered by its own coroutine for its life.
  std::map<std::uint64_t, SessionHandle*> sessions;
  std::size_t counted = 0;  // sessions that count against max_connections
  std::uint64_t next_id = 0;
  bool accepting = false;
  bool stopping = false;
  bool stopped_notified = false;
  std::chrono::steady_clock::time_point grace_end = std::chrono::steady_clock::time_point::max();
  std::function<void()> stopped_callback;

  awaitable<void> accept_loop();
  void admit(Stream socket);
  void add(std::uint64_t id, SessionHandle& handle) override { sessions.emplace(id, &handle); }
  void remove(std::uint64_t id, bool counts) override {
    sessions.erase(id);
    if (counts) --counted;
    check_stopped();
  }
  void close_sessions(bool relaying_too);
  void check_stopped();
};

awaitable<void> Server::State::accept_loop() {
  while (!stopping) {
    auto [ec, socket] = co_await acceptor.async_accept(use_tuple);
    if (stopping) break;
    if (ec) {
      log::warn("accept_failed").kv("error", ec.message());
      retry_timer.expires_after(accept_retry_delay);
      co_await retry_timer.async_wait(use_tuple);
      continue;
    }
    admit(std::move(socket));
  }
  accepting = false;
  check_stopped();
}

void Server::State::admit(Stream socket) {
  if (!config->peer_allowed(transport::peer_vsock_cid(socket))) {
    log::warn("peer_refused").kv("peer", transport::describe_peer(socket));
    error_code ignored;
    socket.close(ignored);
    return;
  }
  // guestd passes on what the agent gives as it comes (a head, then a body):
  // on a TCP channel, Nagle would hold the second until hostd ACKs the first.
  transport::tune(socket, config->listen.kind);
  // Counted here, before the next accept, so the limit holds however fast
  // connections arrive.
  const bool busy = counted >= config->limits.max_connections;
  if (!busy) ++counted;
  const std::uint64_t id = ++next_id;
  // The session's coroutine owns it to its end; this handler only hears of
  // an end nothing expected (an exception), once, with its id.
  asio::co_spawn(executor, serve_channel(std::move(socket), shared_from_this(), *config, id, busy),
                 [id](std::exception_ptr e) {
                   if (e) {
                     log::error("session_failed")
                         .kv("conn", static_cast<unsigned long long>(id))
                         .kv("error", log::describe(e));
                   }
                 });
}

void Server::State::close_sessions(bool relaying_too) {
  for (auto& [id, handle] : sessions) {
    if (relaying_too || !handle->relaying) handle->close();
  }
}

void Server::State::check_stopped() {
  if (!stopping || accepting || !sessions.empty() || stopped_notified) return;
  stopped_notified = true;
  grace_timer.cancel();
  log::info("stopped");
  if (stopped_callback) stopped_callback();
}

Server::Server(asio::any_io_executor executor, GuestdConfig config)
    : state_(std::make_shared<State>(std::move(executor), std::move(config))) {}

Server::~Server() {
  // Coroutines hold the state; closing the listener lets the accept loop end
  // if the executor still runs.
  error_code ignored;
  state_->stopping = true;
  state_->acceptor.close(ignored);
}

error_code Server::start() {
  auto& s = *state_;
  error_code ec;
  s.acceptor = transport::listen(s.executor, s.config->listen, ec, s.config->socket_mode);
  if (ec) return ec;
  s.accepting = true;
  {
    auto line = log::info("listening");
    line.kv("listen", local_uri())
        .kv("allowed_ports", fmt::format("{}", fmt::join(s.config->allowed_ports, ",")));
    if (s.config->listen.kind == transport::Kind::vsock)
      line.kv("allowed_peer_cids", fmt::format("{}", fmt::join(s.config->allowed_peer_cids, ",")));
    line.kv("max_connections", static_cast<unsigned>(s.config->limits.max_connections));
  }
  asio::co_spawn(s.executor, s.accept_loop(), [self = state_](std::exception_ptr e) {
    if (!e) return;
    // Not expected: accept errors are handled in the loop. Say so and stop
    // cleanly rather than leave a daemon that silently accepts nothing.
    log::error("accept_loop_failed").kv("error", log::describe(e));
    self->accepting = false;
    self->check_stopped();
  });
  return {};
}

std::string Server::local_uri() const {
  return transport::local_uri(state_->acceptor, state_->config->listen);
}

void Server::stop(std::chrono::milliseconds grace) {
  auto& s = *state_;
  if (!s.stopping) {
    s.stopping = true;
    log::info("stopping")
        .kv("sessions", static_cast<unsigned long long>(s.sessions.size()))
        .kv("grace_ms", static_cast<long long>(grace.count()));
    error_code ignored;
    s.acceptor.close(ignored);
    s.retry_timer.cancel();
    // The socket file is ours (listen() created it): leave nothing behind.
    if (s.accepting && s.config->listen.kind == transport::Kind::unix_socket)
      ::unlink(s.config->listen.path.c_str());
  }
  s.close_sessions(grace.count() == 0);
  auto end = std::chrono::steady_clock::now() + grace;
  if (!s.sessions.empty() && grace.count() > 0 && end < s.grace_end) {
    s.grace_end = end;
    s.grace_timer.expires_at(end);
    s.grace_timer.async_wait([weak = std::weak_ptr<State>(state_)](error_code ec) {
      auto self = weak.lock();
      if (ec || !self) return;
      self->close_sessions(true);
    });
  }
  s.check_stopped();
}

void Server::on_stopped(std::function<void()> callback) {
  state_->stopped_callback = std::move(callback);
}

std::size_t Server::active_sessions() const {
  return state_->counted;
}

}  // namespace vmgate::guestd
