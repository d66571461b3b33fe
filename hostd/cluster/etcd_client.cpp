#include "hostd/cluster/etcd_client.hpp"

#include <fmt/format.h>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "common/deadline.hpp"

namespace vmgate::hostd {
namespace beast = boost::beast;
namespace http = beast::http;

namespace {

// An answer larger than this is not one hostd's keys make: a range of the
// whole prefix at 10,000 VMs is about 5 MiB.
constexpr std::uint64_t max_response_bytes = 64 * 1024 * 1024;
// One watch message (a batch of events) larger than this is refused.
constexpr std::size_t max_watch_line = 16 * 1024 * 1024;

http::request<http::string_body> make_request(const transport::Address& endpoint,
                                              std::string_view path, std::string body) {
  http::request<http::string_body> request{http::verb::post, std::string(path), 11};
  request.set(http::field::host, fmt::format("{}:{}", endpoint.host, endpoint.port));
  request.set(http::field::content_type, "application/json");
  request.body() = std::move(body);
  request.prepare_payload();
  return request;
}

EtcdError unreachable(const transport::Address& endpoint, std::string_view what,
                      error_code ec = {}) {
  return EtcdError{ec ? fmt::format("etcd {} {}: {}", endpoint.to_string(), what, ec.message())
                      : fmt::format("etcd {} {}", endpoint.to_string(), what),
                   true};
}

awaitable<EtcdResult<std::string>> exchange(const transport::Address& endpoint,
                                            http::request<http::string_body> request) {
  auto [ec, stream] = co_await transport::connect(endpoint);
  if (ec) co_return unreachable(endpoint, "is unreachable", ec);
  transport::tune(stream, endpoint.kind);
  auto [wec, written] = co_await http::async_write(stream, request, use_tuple);
  if (wec) co_return unreachable(endpoint, "closed the connection", wec);
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(max_response_bytes);
  auto [rec, read] = co_await http::async_read(stream, buffer, parser, use_tuple);
  if (rec) co_return unreachable(endpoint, "sent no answer", rec);
  auto& response = parser.get();
  // The gateway answers gRPC errors with a JSON body and a matching status
  // (503 for UNAVAILABLE): the body says more than the status.
  if (response.result() != http::status::ok && response.body().empty()) {
    co_return EtcdError{
        fmt::format("etcd {} answered {}", endpoint.to_string(), response.result_int()),
        response.result_int() >= 500};
  }
  co_return std::move(response.body());
}

// Splits complete lines off the front of `pending`, calling `line` for each.
template <class F>
bool take_lines(std::string& pending, F&& line) {
  std::size_t start = 0;
  for (;;) {
    const auto end = pending.find('\n', start);
    if (end == std::string::npos) break;
    std::string_view text(pending.data() + start, end - start);
    if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
    if (!text.empty() && !line(text)) return false;
    start = end + 1;
  }
  pending.erase(0, start);
  return pending.size() <= max_watch_line;
}

}  // namespace

EtcdClient::EtcdClient(asio::any_io_executor executor, std::vector<transport::Address> endpoints,
                       std::chrono::milliseconds request_timeout)
    : executor_(std::move(executor)), endpoints_(std::move(endpoints)), timeout_(request_timeout) {}

EtcdClient::~EtcdClient() = default;

std::string EtcdClient::current_endpoint() const {
  return endpoints_.empty() ? std::string("none") : endpoints_[current_].to_string();
}

awaitable<EtcdResult<std::string>> EtcdClient::post_once(const transport::Address& endpoint,
                                                         std::string_view path,
                                                         const std::string& body) {
  auto outcome = co_await within(timeout_, exchange(endpoint, make_request(endpoint, path, body)));
  if (!outcome)
    co_return unreachable(endpoint, fmt::format("did not answer within {} ms", timeout_.count()));
  co_return std::move(*outcome);
}

awaitable<EtcdResult<std::string>> EtcdClient::post(std::string_view path, std::string body) {
  EtcdError last{"no etcd endpoints configured", true};
  for (std::size_t tried = 0; tried < endpoints_.size(); ++tried) {
    const std::size_t index = (current_ + tried) % endpoints_.size();
    auto answer = co_await post_once(endpoints_[index], path, body);
    if (answer) {
      current_ = index;
      co_return answer;
    }
    last = answer.error();
    if (!last.try_another_endpoint) {
      current_ = index;
      co_return last;
    }
  }
  // The next round starts with the member after the one that failed first.
  if (!endpoints_.empty()) current_ = (current_ + 1) % endpoints_.size();
  co_return last;
}

awaitable<EtcdResult<EtcdLease>> EtcdClient::grant_lease(std::chrono::seconds ttl) {
  auto body = co_await post("/v3/lease/grant", encode_lease_grant(ttl.count()));
  if (!body) co_return body.error();
  co_return decode_lease_grant(*body);
}

awaitable<EtcdResult<EtcdLease>> EtcdClient::keep_alive(std::int64_t lease) {
  // The keepalive endpoint is a stream of one answer per message sent; a
  // body of one message gets one answer and the stream ends.
  auto body = co_await post("/v3/lease/keepalive", encode_lease_id(lease));
  if (!body) co_return body.error();
  auto trimmed = std::string_view(*body);
  if (auto end = trimmed.find('\n'); end != std::string_view::npos)
    trimmed = trimmed.substr(0, end);
  co_return decode_lease_keepalive(trimmed);
}

awaitable<EtcdResult<void>> EtcdClient::revoke_lease(std::int64_t lease) {
  auto body = co_await post("/v3/lease/revoke", encode_lease_id(lease));
  if (!body) co_return body.error();
  // Its answer is a header alone, as a range's is when nothing matched.
  if (auto answer = decode_range_response(*body); !answer) co_return answer.error();
  co_return EtcdResult<void>{};
}

awaitable<EtcdResult<EtcdRange>> EtcdClient::range(std::string key, std::string range_end,
                                                   std::int64_t revision) {
  auto body = co_await post("/v3/kv/range", encode_range_request(key, range_end, revision));
  if (!body) co_return body.error();
  co_return decode_range_response(*body);
}

awaitable<EtcdResult<std::int64_t>> EtcdClient::put(std::string key, std::string value,
                                                    std::int64_t lease) {
  auto body = co_await post("/v3/kv/put", encode_put_request(key, value, lease));
  if (!body) co_return body.error();
  auto answer = decode_range_response(*body);
  if (!answer) co_return answer.error();
  co_return answer->revision;
}

awaitable<EtcdResult<EtcdTxnResult>> EtcdClient::txn(const EtcdTxn& txn) {
  auto body = co_await post("/v3/kv/txn", encode_txn_request(txn));
  if (!body) co_return body.error();
  co_return decode_txn_response(*body);
}

void EtcdClient::stop_watch() {
  if (!watch_stream_) return;
  error_code ignored;
  watch_stream_->close(ignored);
}

awaitable<EtcdWatchEnd> EtcdClient::watch(std::string key, std::string range_end,
                                          std::int64_t start_revision, WatchHandler handler) {
  if (endpoints_.empty()) co_return EtcdWatchEnd{.reason = "no etcd endpoints configured"};
  const transport::Address endpoint = endpoints_[current_];
  auto request =
      make_request(endpoint, "/v3/watch", encode_watch_create(key, range_end, start_revision));
  auto stream = std::make_shared<vmgate::Stream>(io_executor_of(executor_));
  beast::flat_buffer buffer;
  http::response_parser<http::buffer_body> parser;
  parser.body_limit(boost::none);
  // Connect, send, and read the answer's head, within the timeout.
  auto opened = co_await within(timeout_, [&]() -> awaitable<std::string> {
    auto [ec, connected] = co_await transport::connect(endpoint);
    if (ec) co_return fmt::format("etcd {} is unreachable: {}", endpoint.to_string(), ec.message());
    *stream = std::move(connected);
    auto [wec, written] = co_await http::async_write(*stream, request, use_tuple);
    if (wec)
      co_return fmt::format("etcd {} closed the watch: {}", endpoint.to_string(), wec.message());
    auto [rec, read] = co_await http::async_read_header(*stream, buffer, parser, use_tuple);
    if (rec)
      co_return fmt::format("etcd {} sent no watch answer: {}", endpoint.to_string(),
                            rec.message());
    if (parser.get().result() != http::status::ok)
      co_return fmt::format("etcd {} answered the watch {}", endpoint.to_string(),
                            parser.get().result_int());
    co_return std::string();
  }());
  if (!opened || !opened->empty()) {
    if (!endpoints_.empty()) current_ = (current_ + 1) % endpoints_.size();
    co_return EtcdWatchEnd{.reason = opened ? *opened
                                            : fmt::format("etcd {} did not answer the watch "
                                                          "within {} ms",
                                                          endpoint.to_string(), timeout_.count())};
  }
  watch_stream_ = stream;
  struct Forget {
    EtcdClient& client;
    ~Forget() { client.watch_stream_.reset(); }
  } forget{*this};

  EtcdWatchEnd end;
  std::string pending;
  std::vector<char> chunk(64 * 1024);
  while (!parser.is_done()) {
    parser.get().body().data = chunk.data();
    parser.get().body().size = chunk.size();
    // read_some: a watch message is delivered as it arrives, not once 64 KiB have.
    auto [ec, n] = co_await http::async_read_some(*stream, buffer, parser, use_tuple);
    if (ec == http::error::need_buffer) ec = {};
    pending.append(chunk.data(), chunk.size() - parser.get().body().size);
    const bool lines_ok = take_lines(pending, [&](std::string_view line) {
      auto message = decode_watch_message(line);
      if (!message) {
        end.reason = message.error().message;
        return false;
      }
      if (message->canceled) {
        end.compact_revision = message->compact_revision;
        end.reason = message->compact_revision > 0
                         ? fmt::format("revision {} was compacted", message->compact_revision)
                         : fmt::format("etcd canceled the watch: {}", message->cancel_reason);
        return false;
      }
      if (!message->events.empty()) handler(*message);
      return true;
    });
    if (!lines_ok) {
      if (end.reason.empty()) end.reason = "a watch message exceeds 16 MiB";
      co_return end;
    }
    if (ec) {
      end.stopped = !stream->is_open();
      end.reason =
          end.stopped ? "stopped"
                      : fmt::format("etcd {} watch stream: {}", endpoint.to_string(), ec.message());
      co_return end;
    }
  }
  end.reason = fmt::format("etcd {} ended the watch stream", endpoint.to_string());
  co_return end;
}

}  // namespace vmgate::hostd
