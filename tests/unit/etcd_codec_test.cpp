#include "hostd/cluster/etcd_codec.hpp"

#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

using namespace vmgate::hostd;

// Answers as etcd 3.4.23's gateway wrote them (captured with curl).

TEST_CASE("base64 round-trips every byte and refuses what is not base64") {
  std::string all;
  for (int i = 0; i < 256; ++i)
    all += static_cast<char>(i);
  for (std::size_t n : {0u, 1u, 2u, 3u, 4u, 255u, 256u}) {
    auto decoded = base64_decode(base64_encode(all.substr(0, n)));
    REQUIRE(decoded);
    CHECK(*decoded == all.substr(0, n));
  }
  CHECK(base64_encode("/vmgate/v1/a") == "L3ZtZ2F0ZS92MS9h");
  CHECK_FALSE(base64_decode("abc"));
  CHECK_FALSE(base64_decode("ab=c"));
  CHECK_FALSE(base64_decode("a!cd"));
}

TEST_CASE("a range answer gives its revision and its keys, and none when nothing matched") {
  auto range = decode_range_response(
      R"({"header":{"cluster_id":"1","member_id":"2","revision":"2","raft_term":"2"},)"
      R"("kvs":[{"key":"L3ZtZ2F0ZS92MS9h","create_revision":"2","mod_revision":"2",)"
      R"("version":"1","value":"aGVsbG8=","lease":"7587"}],"count":"1"})");
  REQUIRE(range.has_value());
  CHECK(range->revision == 2);
  REQUIRE(range->kvs.size() == 1);
  CHECK(range->kvs[0].key == "/vmgate/v1/a");
  CHECK(range->kvs[0].value == "hello");
  CHECK(range->kvs[0].mod_revision == 2);
  CHECK(range->kvs[0].lease == 7587);
  auto empty = decode_range_response(R"({"header":{"revision":"9"}})");
  REQUIRE(empty.has_value());
  CHECK(empty->revision == 9);
  CHECK(empty->kvs.empty());
}

TEST_CASE("an etcd error answer is an error, and UNAVAILABLE sends the call to another member") {
  auto unavailable = decode_range_response(
      R"({"error":"etcdserver: no leader","message":"etcdserver: no leader","code":14})");
  REQUIRE_FALSE(unavailable.has_value());
  CHECK(unavailable.error().try_another_endpoint);
  CHECK(unavailable.error().message == "etcd: etcdserver: no leader");
  auto compacted = decode_range_response(
      R"({"error":"etcdserver: mvcc: required revision has been compacted","code":11})");
  REQUIRE_FALSE(compacted.has_value());
  CHECK_FALSE(compacted.error().try_another_endpoint);
}

TEST_CASE("a transaction on a key compares its mod_revision, and a lost compare reads the key") {
  auto body = nlohmann::json::parse(encode_txn_request(
      EtcdTxn{.key = "/vmgate/v1/vms/x", .mod_revision = 0, .value = "v", .lease = 12}));
  CHECK(body["compare"][0]["target"] == "MOD");
  CHECK(body["compare"][0]["result"] == "EQUAL");
  CHECK(body["compare"][0]["mod_revision"] == "0");
  CHECK(body["success"][0]["request_put"]["lease"] == "12");
  CHECK(body["failure"][0]["request_range"]["key"] == base64_encode("/vmgate/v1/vms/x"));
  auto removal = nlohmann::json::parse(
      encode_txn_request(EtcdTxn{.key = "k", .mod_revision = 5, .remove = true}));
  CHECK(removal["success"][0].contains("request_delete_range"));

  auto won = decode_txn_response(
      R"({"header":{"revision":"3"},"succeeded":true,"responses":[{"response_put":{"header":{"revision":"3"}}}]})");
  REQUIRE(won.has_value());
  CHECK(won->succeeded);
  CHECK(won->revision == 3);
  auto lost = decode_txn_response(
      R"({"header":{"revision":"3"},"responses":[{"response_range":{"header":{"revision":"3"},)"
      R"("kvs":[{"key":"L3ZtZ2F0ZS92MS9i","create_revision":"3","mod_revision":"3","version":"1","value":"eA=="}],"count":"1"}}]})");
  REQUIRE(lost.has_value());
  CHECK_FALSE(lost->succeeded);
  REQUIRE(lost->current);
  CHECK(lost->current->value == "x");
  CHECK(lost->current->mod_revision == 3);
}

TEST_CASE("a keepalive of a lease etcd no longer knows says TTL 0") {
  auto alive = decode_lease_keepalive(
      R"({"result":{"header":{"revision":"3"},"ID":"4111120373580346380","TTL":"5"}})");
  REQUIRE(alive.has_value());
  CHECK(alive->id == 4111120373580346380);
  CHECK(alive->ttl == 5);
  auto gone = decode_lease_keepalive(R"({"result":{"header":{"revision":"3"},"ID":"12345"}})");
  REQUIRE(gone.has_value());
  CHECK(gone->ttl == 0);
}

TEST_CASE("watch messages give events, deletes and the compact revision of a canceled watch") {
  auto created = decode_watch_message(R"({"result":{"header":{"revision":"3"},"created":true}})");
  REQUIRE(created.has_value());
  CHECK(created->created);
  CHECK(created->events.empty());
  auto events = decode_watch_message(
      R"({"result":{"header":{"revision":"4"},"events":[{"kv":{"key":"L3ZtZ2F0ZS92MS9i",)"
      R"("create_revision":"3","mod_revision":"3","version":"1","value":"eA=="}},)"
      R"({"type":"DELETE","kv":{"key":"L3ZtZ2F0ZS92MS9h","mod_revision":"4"}}]}})");
  REQUIRE(events.has_value());
  CHECK(events->revision == 4);
  REQUIRE(events->events.size() == 2);
  CHECK_FALSE(events->events[0].deleted);
  CHECK(events->events[0].kv.value == "x");
  CHECK(events->events[1].deleted);
  CHECK(events->events[1].kv.key == "/vmgate/v1/a");
  auto compacted = decode_watch_message(
      R"({"result":{"header":{"raft_term":"2"},"canceled":true,"compact_revision":"6"}})");
  REQUIRE(compacted.has_value());
  CHECK(compacted->canceled);
  CHECK(compacted->compact_revision == 6);
}

TEST_CASE("a watch starts just after the revision it was read at, over the whole prefix") {
  auto body = nlohmann::json::parse(encode_watch_create("/vmgate/v1/", "/vmgate/v10", 8));
  CHECK(body["create_request"]["key"] == base64_encode("/vmgate/v1/"));
  CHECK(body["create_request"]["range_end"] == base64_encode("/vmgate/v10"));
  CHECK(body["create_request"]["start_revision"] == "8");
}
