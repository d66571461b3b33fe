// A small etcd v3 client over etcd's JSON gateway (etcd_codec.hpp), with
// Beast. Coroutines; every call is bounded by the request timeout and
// returns its failure as a value.
//
// Several endpoints (the members of an etcd cluster) are tried in turn: a
// call that cannot reach the current one, or that it answers it cannot
// serve (no leader), goes to the next, which becomes the current one. A
// whole round that fails is the caller's to retry, with backoff.
//
// Every call runs on the executor the client was made with; it is not
// thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/asio.hpp"
#include "common/transport.hpp"
#include "hostd/cluster/etcd_codec.hpp"

namespace vmgate::hostd {

// How a watch ended.
struct EtcdWatchEnd {
  // etcd canceled it because its start revision was compacted away: the
  // caller must read everything again, then watch from that read's
  // revision + 1.
  std::int64_t compact_revision = 0;
  std::string reason;    // why, for the log (an error, "canceled", "stopped")
  bool stopped = false;  // stop_watch() ended it
};

class EtcdClient {
 public:
  EtcdClient(asio::any_io_executor executor, std::vector<transport::Address> endpoints,
             std::chrono::milliseconds request_timeout);
  ~EtcdClient();
  EtcdClient(const EtcdClient&) = delete;
  EtcdClient& operator=(const EtcdClient&) = delete;

  awaitable<EtcdResult<EtcdLease>> grant_lease(std::chrono::seconds ttl);
  // One keepalive message on the gateway's keepalive stream: the lease's
  // TTL again, or 0 when etcd no longer knows it (it expired).
  awaitable<EtcdResult<EtcdLease>> keep_alive(std::int64_t lease);
  awaitable<EtcdResult<void>> revoke_lease(std::int64_t lease);
  // `range_end` empty: the one key. `revision` 0: the latest.
  awaitable<EtcdResult<EtcdRange>> range(std::string key, std::string range_end,
                                         std::int64_t revision = 0);
  // The store's revision after the put.
  awaitable<EtcdResult<std::int64_t>> put(std::string key, std::string value, std::int64_t lease);
  awaitable<EtcdResult<EtcdTxnResult>> txn(const EtcdTxn& txn);

  using WatchHandler = std::function<void(const EtcdWatchMessage&)>;
  // Watches [key, range_end) from `start_revision` on the current endpoint
  // and calls `handler` for every message with events, until etcd cancels
  // the watch (compaction), the stream fails, or stop_watch(). Only the
  // connect and the stream's first answer are bounded by the timeout: a
  // quiet watch is normal, and the caller's lease keepalive is what notices
  // an etcd that went silent (it calls stop_watch()).
  awaitable<EtcdWatchEnd> watch(std::string key, std::string range_end, std::int64_t start_revision,
                                WatchHandler handler);
  // Ends a watch in progress (on the client's executor).
  void stop_watch();

  // The endpoint calls go to now, for the log.
  std::string current_endpoint() const;

 private:
  // POST `path` with `body`, trying each endpoint once from the current one.
  awaitable<EtcdResult<std::string>> post(std::string_view path, std::string body);
  awaitable<EtcdResult<std::string>> post_once(const transport::Address& endpoint,
                                               std::string_view path, const std::string& body);

  asio::any_io_executor executor_;
  std::vector<transport::Address> endpoints_;
  std::chrono::milliseconds timeout_;
  std::size_t current_ = 0;
  std::shared_ptr<vmgate::Stream> watch_stream_;
};

}  // namespace vmgate::hostd
