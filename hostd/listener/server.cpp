#include "hostd/listener/server.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>

#include <stdexcept>

#include <fmt/format.h>

#include "common/log.hpp"
#include "common/transport.hpp"
#include "hostd/listener/http_session.hpp"

namespace vmgate::hostd {

struct Server::Listener {
  const ListenerConfig& config;
  Acceptor acceptor;
  SessionContext context;
  std::string bound;
};

Server::Server(asio::io_context& io, const HostdConfig& config, Directory& directory,
               HostdMetrics* metrics, ChannelPool* pool,
               std::vector<asio::any_io_executor> session_executors)
    : io_(io),
      config_(config),
      directory_(directory),
      metrics_(metrics),
      pool_(pool),
      session_executors_(std::move(session_executors)) {
  if (session_executors_.empty()) session_executors_.push_back(io_.get_executor());
}

Server::~Server() = default;

void Server::start() {
  for (const auto& lc : config_.listeners) {
    error_code ec;
    auto acceptor = transport::listen(io_.get_executor(), lc.address, ec);
    if (ec) {
      throw std::runtime_error(fmt::format("listener {}: cannot listen on {}: {}", lc.name,
                                           lc.address.to_string(), ec.message()));
    }
    auto bound = transport::local_uri(acceptor, lc.address);
    listeners_.push_back(std::make_unique<Listener>(Listener{
        lc, std::move(acceptor), SessionContext{config_, lc, directory_, metrics_, pool_}, bound}));
    log::info("listening")
        .kv("listener", lc.name)
        .kv("addr", bound)
        .kv("guest_port", lc.guest_port)
        .kv("trusted", lc.trusted);
  }
  for (auto& l : listeners_) {
    asio::co_spawn(io_, accept_loop(*l), [name = l->config.name](std::exception_ptr e) {
      if (!e) return;
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        log::error("accept_loop_failed").kv("listener", name).kv("error", ex.what());
      }
    });
  }
}

void Server::stop_accepting() {
  for (auto& l : listeners_) {
    error_code ignored;
    l->acceptor.close(ignored);
  }
}

std::vector<std::string> Server::bound_addresses() const {
  std::vector<std::string> out;
  for (const auto& l : listeners_)
    out.push_back(l->bound);
  return out;
}

awaitable<void> Server::accept_loop(Listener& listener) {
  asio::steady_timer backoff(io_);
  for (;;) {
    // The connection lives on one single-threaded io_context from here on, so
    // it needs no strand, and its socket is registered with the reactor of the
    // thread that serves it.
    asio::any_io_executor executor = session_executors_[next_executor_];
    next_executor_ = (next_executor_ + 1) % session_executors_.size();
    auto [ec, socket] = co_await listener.acceptor.async_accept(executor, use_tuple);
    if (ec == asio::error::operation_aborted || !listener.acceptor.is_open()) co_return;
    if (ec) {
      // Out of descriptors or a transient network error: wait and go on, never exit.
      log::warn("accept_failed").kv("listener", listener.config.name).kv("error", ec.message());
      backoff.expires_after(std::chrono::milliseconds(100));
      co_await backoff.async_wait(use_tuple);
      continue;
    }
    if (connections_.load() >= config_.limits.max_connections) {
      log::warn("connection_refused")
          .kv("listener", listener.config.name)
          .kv("client", transport::describe_peer(socket))
          .kv("reason", "max_connections");
      error_code ignored;
      socket.close(ignored);
      continue;
    }
    if (listener.config.address.kind == transport::Kind::tcp) {
      // What transport::tune() does, without asking the socket its family.
      error_code ignored;
      socket.set_option(asio::detail::socket_option::boolean<IPPROTO_TCP, TCP_NODELAY>(true),
                        ignored);
    }
    ++connections_;
    asio::co_spawn(executor, run_http_session(std::move(socket), listener.context),
                   [this, name = listener.config.name](std::exception_ptr e) {
                     --connections_;
                     if (!e) return;
                     try {
                       std::rethrow_exception(e);
                     } catch (const std::exception& ex) {
                       log::error("session_failed").kv("listener", name).kv("error", ex.what());
                     }
                   });
  }
}

}  // namespace vmgate::hostd
