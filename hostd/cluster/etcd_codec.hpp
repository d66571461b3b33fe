// etcd v3's JSON gateway (grpc-gateway over the gRPC API, etcd 3.4:
// /v3/kv/range, /v3/kv/txn, /v3/lease/grant, /v3/lease/keepalive,
// /v3/watch): the request bodies hostd sends and the answers it reads.
// Pure, so each is tested without an etcd.
//
// The gateway spells protobuf's JSON mapping: bytes are base64, 64-bit
// integers are strings, fields at their default value are left out (no
// "kvs" when nothing matched, no "type" for a PUT event, no "TTL" when a
// lease is gone), and an error is {"error","message","code"} with a gRPC
// status code.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/system/result.hpp>

namespace vmgate::hostd {

std::string base64_encode(std::string_view bytes);
std::optional<std::string> base64_decode(std::string_view text);

struct EtcdKeyValue {
  std::string key;
  std::string value;
  std::int64_t create_revision = 0;
  std::int64_t mod_revision = 0;
  std::int64_t lease = 0;
  friend bool operator==(const EtcdKeyValue&, const EtcdKeyValue&) = default;
};

// Why a call failed: a one-line reason, and whether another endpoint might
// do better (the member could not be reached, or answered that it cannot
// serve: gRPC UNAVAILABLE, "etcdserver: no leader").
// (Not an aggregate: a result<std::string, EtcdError> must not read a
// string as an error.)
struct EtcdError {
  EtcdError() = default;
  EtcdError(std::string why, bool another)
      : message(std::move(why)), try_another_endpoint(another) {}
  std::string message;
  bool try_another_endpoint = false;
};

template <class T>
using EtcdResult = boost::system::result<T, EtcdError>;

struct EtcdRange {
  std::int64_t revision = 0;  // the store's revision the range was read at
  std::vector<EtcdKeyValue> kvs;
};

struct EtcdLease {
  std::int64_t id = 0;
  std::int64_t ttl = 0;  // seconds; 0 from a keepalive: the lease is gone
};

// One transaction on one key: compare its mod_revision with `mod_revision`
// (0: the key must not exist), then put `value` under `lease` (or, with
// `remove`, delete the key); when the compare fails, read the key instead.
struct EtcdTxn {
  std::string key;
  std::int64_t mod_revision = 0;
  bool remove = false;
  std::string value;
  std::int64_t lease = 0;
};

struct EtcdTxnResult {
  bool succeeded = false;
  std::int64_t revision = 0;
  std::optional<EtcdKeyValue> current;  // !succeeded: the key as it is now, if it exists
};

struct EtcdEvent {
  bool deleted = false;
  EtcdKeyValue kv;  // a delete carries the key and its mod_revision only
};

// One line of a /v3/watch stream.
struct EtcdWatchMessage {
  bool created = false;
  bool canceled = false;
  std::int64_t compact_revision = 0;  // canceled because start_revision was compacted
  std::int64_t revision = 0;          // the header's
  std::vector<EtcdEvent> events;
  std::string cancel_reason;
};

std::string encode_range_request(std::string_view key, std::string_view range_end,
                                 std::int64_t revision);
std::string encode_put_request(std::string_view key, std::string_view value, std::int64_t lease);
std::string encode_txn_request(const EtcdTxn& txn);
std::string encode_lease_grant(std::int64_t ttl_seconds);
std::string encode_lease_id(std::int64_t lease);
std::string encode_watch_create(std::string_view key, std::string_view range_end,
                                std::int64_t start_revision);

EtcdResult<EtcdRange> decode_range_response(std::string_view body);
EtcdResult<EtcdTxnResult> decode_txn_response(std::string_view body);
EtcdResult<EtcdLease> decode_lease_grant(std::string_view body);
// A keepalive answer comes wrapped in {"result": ...} (it is a stream).
EtcdResult<EtcdLease> decode_lease_keepalive(std::string_view body);
EtcdResult<EtcdWatchMessage> decode_watch_message(std::string_view line);

}  // namespace vmgate::hostd
