#include "guestd/outbound/outbound_proxy.hpp"

#include <cctype>
#include <charconv>
#include <map>
#include <sstream>

#include <fmt/format.h>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "common/deadline.hpp"
#include "common/log.hpp"
#include "common/relay.hpp"
#include "common/transport.hpp"
#include "guestd/outbound/host_channel.hpp"

namespace vmgate::guestd {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;

constexpr std::chrono::milliseconds accept_retry_delay{200};

void close_stream(Stream& stream) {
  error_code ignored;
  stream.close(ignored);
}

bool ends_with_ignoring_case(std::string_view text, std::string_view suffix) {
  if (text.size() < suffix.size()) return false;
  auto tail = text.substr(text.size() - suffix.size());
  for (std::size_t i = 0; i < suffix.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(tail[i])) !=
        std::tolower(static_cast<unsigned char>(suffix[i])))
      return false;
  return true;
}

// "name:port" → name, port (0 when absent); false when the port is not one.
bool split_authority(std::string_view authority, std::string_view& host, std::uint16_t& port) {
  host = authority;
  port = 0;
  const auto colon = authority.rfind(':');
  if (colon == std::string_view::npos) return !host.empty();
  host = authority.substr(0, colon);
  auto digits = authority.substr(colon + 1);
  unsigned value = 0;
  auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (digits.empty() || ec != std::errc() || p != digits.data() + digits.size() || value < 1 ||
      value > 65535)
    return false;
  port = static_cast<std::uint16_t>(value);
  return !host.empty();
}

// What an app asked for, from its request line. (port first, as in
// hostd's Authority: a std::string could otherwise construct one, making
// result<AppRequest, std::string> ambiguous.)
struct AppRequest {
  std::uint16_t port = 0;
  std::string target;  // the SEND target
  bool tunnel = false;
  std::string origin_form;  // the path and query, for an absolute-form request
};

boost::system::result<AppRequest, std::string> read_request_line(
    const OutboundConfig& config, const http::request<http::empty_body>& req) {
  AppRequest out;
  std::string_view host;
  if (req.method() == http::verb::connect) {
    if (!split_authority(req.target(), host, out.port) || out.port == 0)
      return fmt::format("CONNECT needs NAME:PORT, not '{}'", std::string_view(req.target()));
    out.tunnel = true;
  } else {
    std::string_view url = req.target();
    constexpr std::string_view scheme = "http://";
    if (!url.starts_with(scheme))
      return std::string(
          "this is an HTTP proxy for this VM's apps: send absolute-form requests "
          "(http://NAME.host/path for a host service, http://VM:PORT/path for a VM) or CONNECT");
    url.remove_prefix(scheme.size());
    const auto slash = url.find_first_of("/?");
    std::string_view authority = url.substr(0, slash);
    out.origin_form = slash == std::string_view::npos ? "/" : std::string(url.substr(slash));
    if (out.origin_form.front() == '?') out.origin_form.insert(out.origin_form.begin(), '/');
    if (!split_authority(authority, host, out.port))
      return fmt::format("'{}' is not NAME or NAME:PORT", authority);
    if (out.port == 0) out.port = 80;
  }
  out.target = send_target(config, host);
  return out;
}

}  // namespace

std::string send_target(const OutboundConfig& config, std::string_view host) {
  if (ends_with_ignoring_case(host, config.host_suffix) && host.size() > config.host_suffix.size())
    return fmt::format("host:{}", host.substr(0, host.size() - config.host_suffix.size()));
  return std::string(host);
}

struct OutboundProxy::State : std::enable_shared_from_this<State> {
  State(asio::any_io_executor ex, GuestdConfig c)
      : executor(ex), config(std::move(c)), acceptor(io_executor_of(ex)), retry(ex), grace(ex) {}

  asio::any_io_executor executor;
  const GuestdConfig config;
  Acceptor acceptor;
  asio::steady_timer retry;
  asio::steady_timer grace;               // stop(): when what is still open is closed
  std::map<std::uint64_t, Stream*> open;  // the apps' connections, closed by stop()
  std::uint64_t next_id = 0;
  bool stopping = false;

  awaitable<void> accept_loop();
  awaitable<void> serve(Stream app, std::uint64_t id);
  awaitable<void> answer(Stream& app, unsigned status, std::string_view token,
                         std::string_view text);
};

awaitable<void> OutboundProxy::State::accept_loop() {
  while (!stopping) {
    auto [ec, socket] = co_await acceptor.async_accept(use_tuple);
    if (stopping) break;
    if (ec) {
      log::warn("outbound_accept_failed").kv("error", ec.message());
      retry.expires_after(accept_retry_delay);
      co_await retry.async_wait(use_tuple);
      continue;
    }
    const std::uint64_t id = ++next_id;
    asio::co_spawn(executor, serve(std::move(socket), id),
                   [self = shared_from_this(), id](std::exception_ptr e) {
                     self->open.erase(id);
                     if (self->stopping && self->open.empty()) self->grace.cancel();
                     if (e)
                       log::error("outbound_session_failed")
                           .kv("conn", static_cast<unsigned long long>(id))
                           .kv("error", log::describe(e));
                   });
  }
}

awaitable<void> OutboundProxy::State::answer(Stream& app, unsigned status, std::string_view token,
                                             std::string_view text) {
  http::response<http::string_body> res{static_cast<http::status>(status), 11};
  res.set(http::field::content_type, "text/plain");
  res.set("X-Vmgate-Refusal", token);
  res.keep_alive(false);
  res.body() = fmt::format("{}\n", text);
  res.prepare_payload();
  co_await http::async_write(app, res, use_tuple);
  error_code ignored;
  app.shutdown(asio::socket_base::shutdown_send, ignored);
  close_stream(app);
}

awaitable<void> OutboundProxy::State::serve(Stream app, std::uint64_t id) {
  open[id] = &app;
  const OutboundConfig& out = config.outbound;
  if (open.size() > out.max_connections) {
    co_await answer(app, 503, "busy",
                    fmt::format("guestd has {} outbound connections open ([outbound] "
                                "max_connections)",
                                out.max_connections));
    co_return;
  }
  transport::tune(app, transport::Kind::tcp);
  beast::flat_buffer buffer;
  http::request_parser<http::empty_body> parser;
  parser.header_limit(out.header_bytes);
  Deadline deadline(executor);
  deadline.expires_after(out.header_timeout, [&app] { close_stream(app); });
  auto [ec, n] = co_await http::async_read_header(app, buffer, parser, use_tuple);
  deadline.expires_never();
  if (ec) {
    if (ec == http::error::header_limit)
      co_await answer(app, 431, "too-large",
                      fmt::format("the request head is over {} bytes", out.header_bytes));
    else if (ec != asio::error::eof && app.is_open())
      co_await answer(app, 400, "bad-request", fmt::format("unreadable request: {}", ec.message()));
    co_return;
  }
  auto& req = parser.get();
  auto wanted = read_request_line(out, req);
  if (!wanted) {
    co_await answer(app, 400, "bad-request", wanted.error());
    co_return;
  }
  preamble::Request send{.verb = preamble::Verb::send, .argument = wanted->target};
  send.fields.emplace_back("Port", std::to_string(wanted->port));
  send.fields.emplace_back("Form", wanted->tunnel ? "tunnel" : "http");
  auto channel = co_await open_host_channel(out, send);
  log::info("outbound")
      .kv("conn", static_cast<unsigned long long>(id))
      .kv("target", wanted->target)
      .kv("port", static_cast<unsigned>(wanted->port))
      .kv("form", wanted->tunnel ? "tunnel" : "http")
      .kv("status", channel ? 200u : channel.error().status)
      .kv("reason", channel ? std::string() : channel.error().reason);
  if (!channel) {
    co_await answer(app, channel.error().status, channel.error().token, channel.error().reason);
    co_return;
  }
  Stream& host = channel->stream;
  std::string head;
  if (wanted->tunnel) {
    head = "HTTP/1.1 200 Connection established\r\n\r\n";
    auto [wec, wn] = co_await asio::async_write(app, asio::buffer(head), use_tuple);
    if (wec) co_return;
  } else {
    req.target(wanted->origin_form);
    req.erase("Proxy-Connection");
    req.erase(http::field::proxy_authorization);
    // One request per channel: hostd reads one, and the agent's or
    // service's end of the response is its end.
    req.keep_alive(false);
    std::ostringstream text;
    text << req.base();
    head = std::move(text).str();
    auto [wec, wn] = co_await asio::async_write(host, asio::buffer(head), use_tuple);
    if (wec) co_return;
  }
  if (buffer.size() > 0) {
    auto [wec, wn] = co_await asio::async_write(host, buffer.data(), use_tuple);
    if (wec) co_return;
  }
  if (!channel->leftover.empty()) {
    auto [wec, wn] = co_await asio::async_write(app, asio::buffer(channel->leftover), use_tuple);
    if (wec) co_return;
  }
  auto moved = co_await relay(app, host, config.limits.idle_timeout);
  log::info("outbound_end")
      .kv("conn", static_cast<unsigned long long>(id))
      .kv("up", static_cast<unsigned long long>(moved.a_to_b))
      .kv("down", static_cast<unsigned long long>(moved.b_to_a))
      .kv("idle_timeout", moved.idle_timeout);
  close_stream(host);
  close_stream(app);
}

OutboundProxy::OutboundProxy(asio::any_io_executor executor, GuestdConfig config)
    : state_(std::make_shared<State>(std::move(executor), std::move(config))) {}

OutboundProxy::~OutboundProxy() {
  stop(std::chrono::milliseconds(0));
}

error_code OutboundProxy::start() {
  auto& s = *state_;
  if (!s.config.outbound.listen) return {};
  error_code ec;
  s.acceptor = transport::listen(s.executor, *s.config.outbound.listen, ec);
  if (ec) return ec;
  log::info("outbound_listening")
      .kv("listen", local_uri())
      .kv("hostd", s.config.outbound.hostd.to_string());
  asio::co_spawn(s.executor, s.accept_loop(), [](std::exception_ptr e) {
    if (e) log::error("outbound_accept_loop_failed").kv("error", log::describe(e));
  });
  return {};
}

std::string OutboundProxy::local_uri() const {
  if (!state_->config.outbound.listen) return {};
  return transport::local_uri(state_->acceptor, *state_->config.outbound.listen);
}

void OutboundProxy::stop(std::chrono::milliseconds grace) {
  auto& s = *state_;
  if (!s.stopping) {
    s.stopping = true;
    error_code ignored;
    s.acceptor.close(ignored);
    s.retry.cancel();
  }
  if (grace.count() == 0 || s.open.empty()) {
    s.grace.cancel();
    for (auto& [id, stream] : s.open)
      close_stream(*stream);
    return;
  }
  // An app's request in progress finishes, as hostd's requests to this VM
  // do (Server::stop); what is left when the grace is over is closed.
  s.grace.expires_after(grace);
  s.grace.async_wait([weak = std::weak_ptr<State>(state_)](error_code ec) {
    auto self = weak.lock();
    if (ec || !self) return;
    for (auto& [id, stream] : self->open)
      close_stream(*stream);
  });
}

}  // namespace vmgate::guestd
