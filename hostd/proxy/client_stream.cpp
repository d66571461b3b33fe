#include "hostd/proxy/client_stream.hpp"

#include <array>

#include <boost/asio/ssl/error.hpp>

#include "common/deadline.hpp"

namespace vmgate::hostd {
namespace {

using namespace asio::experimental::awaitable_operators;

// The client ended its side in order: close_notify (eof) or, as many clients
// do, a bare TCP close (stream_truncated).
bool client_ended(error_code ec) {
  return ec == asio::error::eof || ec == asio::ssl::error::stream_truncated;
}

// What a TLS tunnel needs besides its two streams.
struct TlsTunnel {
  ClientStream::TlsStream& client;
  Stream& channel;
  std::chrono::milliseconds idle;
  Deadline& deadline;
  RelayResult& result;
  bool agent_ended = false;

  // `side`: the stream the failed read or write was on (a: the client).
  void note(error_code ec, RelayResult::Side side) {
    if (ec && !result.error && ec != asio::error::operation_aborted) {
      result.error = ec;
      result.failed = side;
    }
  }

  awaitable<void> client_to_channel() {
    std::array<char, 16 * 1024> chunk;
    for (;;) {
      auto [ec, n] = co_await client.async_read_some(asio::buffer(chunk), use_tuple);
      if (n > 0) {
        deadline.extend(idle);
        auto [wec, wn] =
            co_await asio::async_write(channel, asio::buffer(chunk.data(), n), use_tuple);
        result.a_to_b += wn;
        if (wec) {
          note(wec, RelayResult::Side::b);
          co_return;
        }
      }
      if (!ec) continue;
      error_code ignored;
      if (client_ended(ec)) {
        result.a_ended = true;
        channel.shutdown(asio::socket_base::shutdown_send, ignored);
      } else if (!agent_ended) {
        note(ec, RelayResult::Side::a);
        channel.cancel(ignored);
      }
      co_return;
    }
  }

  awaitable<void> channel_to_client() {
    std::array<char, 16 * 1024> chunk;
    for (;;) {
      auto [ec, n] = co_await channel.async_read_some(asio::buffer(chunk), use_tuple);
      if (n > 0) {
        deadline.extend(idle);
        auto [wec, wn] =
            co_await asio::async_write(client, asio::buffer(chunk.data(), n), use_tuple);
        result.b_to_a += wn;
        if (wec) {
          note(wec, RelayResult::Side::a);
          error_code ignored;
          channel.cancel(ignored);
          co_return;
        }
      }
      if (!ec) continue;
      if (ec != asio::error::eof) note(ec, RelayResult::Side::b);
      // The agent is done; the client's reads stop so the tunnel can say so.
      agent_ended = ec == asio::error::eof;
      result.b_ended = agent_ended;
      error_code ignored;
      client.next_layer().cancel(ignored);
      co_return;
    }
  }
};

}  // namespace

bool ClientStream::has_buffered_input() {
  TlsStream* t = tls();
  return t != nullptr && SSL_has_pending(t->native_handle()) == 1;
}

awaitable<void> ClientStream::close(bool orderly, std::chrono::milliseconds limit) {
  error_code ignored;
  TlsStream* t = tls();
  if (orderly && t != nullptr && socket().is_open()) {
    // Bounded: a client that never answers close_notify does not hold the connection.
    Deadline deadline(socket().get_executor());
    deadline.expires_after(limit, [this] {
      error_code e;
      socket().close(e);
    });
    co_await t->async_shutdown(use_tuple);
    socket().close(ignored);
    co_return;
  }
  close_plaintext(orderly && t == nullptr);
}

void ClientStream::close_plaintext(bool orderly) {
  error_code ignored;
  if (orderly) socket().shutdown(asio::socket_base::shutdown_send, ignored);
  socket().close(ignored);
}

awaitable<RelayResult> relay_tunnel(ClientStream& client, Stream& channel,
                                    std::chrono::milliseconds idle) {
  ClientStream::TlsStream* tls = client.tls();
  if (tls == nullptr) co_return co_await relay(client.socket(), channel, idle);
  RelayResult result;
  Deadline deadline(channel.get_executor());
  deadline.expires_after(idle, [&result, &client, &channel] {
    result.idle_timeout = true;
    error_code ignored;
    client.cancel(ignored);
    channel.cancel(ignored);
  });
  TlsTunnel tunnel{*tls, channel, idle, deadline, result};
  co_await (tunnel.client_to_channel() && tunnel.channel_to_client());
  deadline.expires_never();
  co_return result;
}

}  // namespace vmgate::hostd
