#include "hostd/proxy/tunnel.hpp"

#include <string_view>

namespace vmgate::hostd {

awaitable<bool> establish_tunnel(ClientStream& client, boost::beast::flat_buffer& client_buffer,
                                 Tunnel& tunnel, RequestRecord& record) {
  record.status = 200;
  static constexpr std::string_view established = "HTTP/1.1 200 Connection established\r\n\r\n";
  auto [ec, n] = co_await asio::async_write(client, asio::buffer(established), use_tuple);
  if (ec) co_return false;
  // Bytes that arrived with the head belong to the tunnel.
  if (client_buffer.size() > 0) {
    auto [wec, wn] = co_await asio::async_write(tunnel.stream, client_buffer.data(), use_tuple);
    if (wec) co_return false;
    record.bytes_in += wn;
    client_buffer.consume(wn);
  }
  if (tunnel.early.size() > 0) {
    auto [wec, wn] = co_await asio::async_write(client, tunnel.early.data(), use_tuple);
    if (wec) co_return false;
    record.bytes_out += wn;
    tunnel.early.consume(wn);
  }
  // The relay reads on its own from here.
  client_buffer.shrink_to_fit();
  tunnel.early.shrink_to_fit();
  co_return true;
}

void note_vm_gone(RequestRecord& record, RelayResult& relayed, const std::string& why) {
  record.aborted = Aborted::vm_stopped;
  record.reason = why;
  if (!relayed.error) relayed.error = asio::error::operation_aborted;
}

void note_relayed(RequestRecord& record, const RelayResult& relayed) {
  record.bytes_in += relayed.a_to_b;
  record.bytes_out += relayed.b_to_a;
  if (relayed.idle_timeout) record.reason = "idle timeout";
  // The relay's first stream is the client's, the second the channel.
  if (relayed.failed == RelayResult::Side::a) record.note_aborted(Aborted::client);
  if (relayed.failed == RelayResult::Side::b) record.note_aborted(Aborted::upstream);
}

}  // namespace vmgate::hostd
