#include "hostd/admin/admin_server.hpp"

#include <stdexcept>

#include <fmt/format.h>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "common/deadline.hpp"
#include "common/log.hpp"
#include "common/transport.hpp"

namespace vmgate::hostd {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;

// Admin requests are small GETs from operators and scrapers: tight limits,
// and few connections, so a stuck client cannot tie hostd up.
constexpr std::uint32_t max_admin_connections = 64;
constexpr std::uint32_t admin_header_bytes = 8 * 1024;
constexpr std::uint64_t admin_body_bytes = 8 * 1024;
constexpr auto admin_read_timeout = std::chrono::seconds(30);
// /v1/check may wait for the channel's connect timeout; the answer is small.
constexpr auto admin_write_timeout = std::chrono::seconds(30);

void log_failure(std::string_view event, std::exception_ptr e) {
  if (e) log::error(event).kv("error", log::describe(e));
}

}  // namespace

AdminServer::AdminServer(asio::io_context& io, const AdminConfig& config, AdminContext context,
                         const CurrentConfig* current)
    : io_(io), config_(config), context_(context), current_(current), acceptor_(io) {}

void AdminServer::start() {
  error_code ec;
  acceptor_ = transport::listen(io_.get_executor(), config_.address, ec);
  if (ec) {
    throw std::runtime_error(
        fmt::format("admin listener: cannot listen on {}: {} (change [admin] "
                    "address, or set enabled = false)",
                    config_.address.to_string(), ec.message()));
  }
  bound_ = transport::local_uri(acceptor_, config_.address);
  log::info("admin_listening").kv("addr", bound_);
  asio::co_spawn(io_, accept_loop(),
                 [](std::exception_ptr e) { log_failure("admin_accept_loop_failed", e); });
}

void AdminServer::stop_accepting() {
  error_code ignored;
  acceptor_.close(ignored);
}

awaitable<void> AdminServer::accept_loop() {
  asio::steady_timer backoff(io_);
  for (;;) {
    auto [ec, socket] = co_await acceptor_.async_accept(use_tuple);
    if (ec == asio::error::operation_aborted || !acceptor_.is_open()) co_return;
    if (ec) {
      log::warn("admin_accept_failed").kv("error", ec.message());
      backoff.expires_after(std::chrono::milliseconds(100));
      co_await backoff.async_wait(use_tuple);
      continue;
    }
    if (connections_.load() >= max_admin_connections) {
      log::warn("admin_connection_refused")
          .kv("client", transport::describe_peer(socket))
          .kv("reason", "max_connections");
      error_code ignored;
      socket.close(ignored);
      continue;
    }
    ++connections_;
    // On io_ as the acceptor: one thread runs it (hostd's main.cpp).
    asio::co_spawn(io_, session(std::move(socket)), [this](std::exception_ptr e) {
      --connections_;
      log_failure("admin_session_failed", e);
    });
  }
}

awaitable<void> AdminServer::session(Stream stream) {
  const std::string peer = transport::describe_peer(stream);
  beast::flat_buffer buffer;  // bytes read past one request belong to the next
  Deadline deadline(stream.get_executor());
  auto close_after = [&](Deadline::clock::duration d) {
    deadline.expires_after(d, [&stream] {
      error_code ignored;
      stream.close(ignored);
    });
  };
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(admin_header_bytes);
    parser.body_limit(admin_body_bytes);
    close_after(admin_read_timeout);
    auto [ec, n] = co_await http::async_read(stream, buffer, parser, use_tuple);
    if (ec) break;  // EOF, timeout, or a request that is not worth answering
    const auto& req = parser.get();
    const std::string method(req.method_string());
    const std::string target(req.target());
    deadline.expires_never();
    // Held until the answer is written: the request sees one snapshot.
    const auto running = current_ ? current_->get() : nullptr;
    const AdminContext context =
        running ? AdminContext{running->config,    context_.directory, context_.metrics,
                               context_.readiness, running->policy,    context_.peers,
                               running.get()}
                : context_;
    AdminResponse answer = co_await handle_admin_request(context, method, target, peer);
    log::debug("admin_request")
        .kv("client", peer)
        .kv("method", method)
        .kv("target", target)
        .kv("status", answer.status);

    http::response<http::string_body> res{static_cast<http::status>(answer.status), req.version()};
    res.set(http::field::server, "vmgate-hostd");
    res.set(http::field::content_type, answer.content_type);
    res.set(http::field::cache_control, "no-store");
    if (answer.status == 405) res.set(http::field::allow, "GET, HEAD");
    const bool head = req.method() == http::verb::head;
    res.body() = std::move(answer.body);
    res.prepare_payload();
    if (head) res.body().clear();  // Content-Length stays that of the GET (RFC 9110 §9.3.2)
    res.keep_alive(req.keep_alive());
    close_after(admin_write_timeout);
    auto [wec, wn] = co_await http::async_write(stream, res, use_tuple);
    if (wec || !res.keep_alive()) break;
  }
  deadline.expires_never();
  error_code ignored;
  stream.shutdown(asio::socket_base::shutdown_send, ignored);
  stream.close(ignored);
}

}  // namespace vmgate::hostd
