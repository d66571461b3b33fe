#include "hostd/cluster/etcd_codec.hpp"

#include <array>
#include <charconv>

#include <nlohmann/json.hpp>

namespace vmgate::hostd {
namespace {

using json = nlohmann::json;

constexpr std::string_view alphabet =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// gRPC status codes (grpc/include/grpc/impl/codegen/status.h) after which
// another member may answer: UNAVAILABLE, DEADLINE_EXCEEDED.
constexpr int grpc_unavailable = 14;
constexpr int grpc_deadline_exceeded = 4;

EtcdError malformed(std::string_view what) {
  return EtcdError{std::string("etcd answered something unexpected: ") + std::string(what), false};
}

// A 64-bit integer as the gateway writes it: a string (or, from other
// encoders, a number). Missing means 0, protobuf's default.
std::optional<std::int64_t> integer(const json& object, std::string_view key) {
  auto it = object.find(key);
  if (it == object.end()) return 0;
  if (it->is_number_integer()) return it->get<std::int64_t>();
  if (!it->is_string()) return std::nullopt;
  const std::string& text = it->get_ref<const std::string&>();
  std::int64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

bool boolean(const json& object, std::string_view key) {
  auto it = object.find(key);
  return it != object.end() && it->is_boolean() && it->get<bool>();
}

EtcdResult<json> parse_object(std::string_view body) {
  json object = json::parse(body, nullptr, false);
  if (!object.is_object()) return malformed("not a JSON object");
  if (auto error = object.find("error"); error != object.end()) {
    const int code = object.value("code", 0);
    std::string message = error->is_string() ? error->get<std::string>() : "error";
    return EtcdError{"etcd: " + message,
                     code == grpc_unavailable || code == grpc_deadline_exceeded};
  }
  return {boost::system::in_place_value, std::move(object)};
}

EtcdResult<std::int64_t> header_revision(const json& object) {
  auto header = object.find("header");
  if (header == object.end() || !header->is_object()) return 0;
  auto revision = integer(*header, "revision");
  if (!revision) return malformed("header.revision");
  return *revision;
}

EtcdResult<EtcdKeyValue> key_value(const json& object) {
  if (!object.is_object()) return malformed("a kv that is not an object");
  EtcdKeyValue kv;
  auto key = base64_decode(object.value("key", ""));
  auto value = base64_decode(object.value("value", ""));
  if (!key || !value) return malformed("a kv's key or value is not base64");
  kv.key = std::move(*key);
  kv.value = std::move(*value);
  auto create = integer(object, "create_revision");
  auto mod = integer(object, "mod_revision");
  auto lease = integer(object, "lease");
  if (!create || !mod || !lease) return malformed("a kv's revisions");
  kv.create_revision = *create;
  kv.mod_revision = *mod;
  kv.lease = *lease;
  return kv;
}

EtcdResult<std::vector<EtcdKeyValue>> key_values(const json& object) {
  std::vector<EtcdKeyValue> out;
  auto kvs = object.find("kvs");
  if (kvs == object.end()) return out;
  if (!kvs->is_array()) return malformed("kvs is not a list");
  for (const auto& item : *kvs) {
    auto kv = key_value(item);
    if (!kv) return kv.error();
    out.push_back(std::move(*kv));
  }
  return out;
}

EtcdResult<EtcdLease> lease(const json& object) {
  auto id = integer(object, "ID");
  auto ttl = integer(object, "TTL");
  if (!id || !ttl) return malformed("a lease's ID or TTL");
  return EtcdLease{*id, *ttl};
}

}  // namespace

std::string base64_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const unsigned n = (static_cast<unsigned char>(bytes[i]) << 16) |
                       (static_cast<unsigned char>(bytes[i + 1]) << 8) |
                       static_cast<unsigned char>(bytes[i + 2]);
    out += alphabet[(n >> 18) & 63];
    out += alphabet[(n >> 12) & 63];
    out += alphabet[(n >> 6) & 63];
    out += alphabet[n & 63];
  }
  if (i < bytes.size()) {
    unsigned n = static_cast<unsigned char>(bytes[i]) << 16;
    if (i + 1 < bytes.size()) n |= static_cast<unsigned char>(bytes[i + 1]) << 8;
    out += alphabet[(n >> 18) & 63];
    out += alphabet[(n >> 12) & 63];
    out += i + 1 < bytes.size() ? alphabet[(n >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::optional<std::string> base64_decode(std::string_view text) {
  std::array<int, 256> value{};
  value.fill(-1);
  for (std::size_t i = 0; i < alphabet.size(); ++i)
    value[static_cast<unsigned char>(alphabet[i])] = static_cast<int>(i);
  if (text.size() % 4 != 0) return std::nullopt;
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (std::size_t i = 0; i < text.size(); i += 4) {
    unsigned n = 0;
    int padding = 0;
    for (std::size_t j = 0; j < 4; ++j) {
      const char c = text[i + j];
      if (c == '=' && i + 4 == text.size() && j >= 2) {
        ++padding;
        n <<= 6;
        continue;
      }
      const int v = value[static_cast<unsigned char>(c)];
      if (v < 0 || padding > 0) return std::nullopt;
      n = (n << 6) | static_cast<unsigned>(v);
    }
    out += static_cast<char>((n >> 16) & 0xff);
    if (padding < 2) out += static_cast<char>((n >> 8) & 0xff);
    if (padding < 1) out += static_cast<char>(n & 0xff);
  }
  return out;
}

std::string encode_range_request(std::string_view key, std::string_view range_end,
                                 std::int64_t revision) {
  json body{{"key", base64_encode(key)}};
  if (!range_end.empty()) body["range_end"] = base64_encode(range_end);
  if (revision > 0) body["revision"] = std::to_string(revision);
  return body.dump();
}

std::string encode_put_request(std::string_view key, std::string_view value, std::int64_t lease) {
  json body{{"key", base64_encode(key)}, {"value", base64_encode(value)}};
  if (lease != 0) body["lease"] = std::to_string(lease);
  return body.dump();
}

std::string encode_txn_request(const EtcdTxn& txn) {
  const std::string key = base64_encode(txn.key);
  // MOD compared EQUAL to 0 holds exactly when the key does not exist.
  json compare{{"key", key},
               {"target", "MOD"},
               {"result", "EQUAL"},
               {"mod_revision", std::to_string(txn.mod_revision)}};
  json success;
  if (txn.remove) {
    success = {{"request_delete_range", {{"key", key}}}};
  } else {
    json put{{"key", key}, {"value", base64_encode(txn.value)}};
    if (txn.lease != 0) put["lease"] = std::to_string(txn.lease);
    success = {{"request_put", put}};
  }
  json failure{{"request_range", {{"key", key}}}};
  return json{{"compare", json::array({compare})},
              {"success", json::array({success})},
              {"failure", json::array({failure})}}
      .dump();
}

std::string encode_lease_grant(std::int64_t ttl_seconds) {
  return json{{"TTL", std::to_string(ttl_seconds)}}.dump();
}

std::string encode_lease_id(std::int64_t lease) {
  return json{{"ID", std::to_string(lease)}}.dump();
}

std::string encode_watch_create(std::string_view key, std::string_view range_end,
                                std::int64_t start_revision) {
  json create{{"key", base64_encode(key)}, {"range_end", base64_encode(range_end)}};
  if (start_revision > 0) create["start_revision"] = std::to_string(start_revision);
  return json{{"create_request", create}}.dump();
}

EtcdResult<EtcdRange> decode_range_response(std::string_view body) {
  auto object = parse_object(body);
  if (!object) return object.error();
  EtcdRange range;
  auto revision = header_revision(*object);
  if (!revision) return revision.error();
  range.revision = *revision;
  auto kvs = key_values(*object);
  if (!kvs) return kvs.error();
  range.kvs = std::move(*kvs);
  return range;
}

EtcdResult<EtcdTxnResult> decode_txn_response(std::string_view body) {
  auto object = parse_object(body);
  if (!object) return object.error();
  EtcdTxnResult result;
  result.succeeded = boolean(*object, "succeeded");
  auto revision = header_revision(*object);
  if (!revision) return revision.error();
  result.revision = *revision;
  if (!result.succeeded) {
    auto responses = object->find("responses");
    if (responses != object->end() && responses->is_array() && !responses->empty()) {
      const json& first = responses->front();
      if (auto range = first.find("response_range"); range != first.end()) {
        auto kvs = key_values(*range);
        if (!kvs) return kvs.error();
        if (!kvs->empty()) result.current = std::move(kvs->front());
      }
    }
  }
  return result;
}

EtcdResult<EtcdLease> decode_lease_grant(std::string_view body) {
  auto object = parse_object(body);
  if (!object) return object.error();
  return lease(*object);
}

EtcdResult<EtcdLease> decode_lease_keepalive(std::string_view body) {
  auto object = parse_object(body);
  if (!object) return object.error();
  auto result = object->find("result");
  if (result == object->end() || !result->is_object()) return malformed("no keepalive result");
  return lease(*result);
}

EtcdResult<EtcdWatchMessage> decode_watch_message(std::string_view line) {
  auto object = parse_object(line);
  if (!object) return object.error();
  auto result = object->find("result");
  if (result == object->end() || !result->is_object()) return malformed("no watch result");
  EtcdWatchMessage message;
  message.created = boolean(*result, "created");
  message.canceled = boolean(*result, "canceled");
  auto compact = integer(*result, "compact_revision");
  if (!compact) return malformed("compact_revision");
  message.compact_revision = *compact;
  message.cancel_reason = result->value("cancel_reason", "");
  auto revision = header_revision(*result);
  if (!revision) return revision.error();
  message.revision = *revision;
  if (auto events = result->find("events"); events != result->end()) {
    if (!events->is_array()) return malformed("events is not a list");
    for (const auto& item : *events) {
      EtcdEvent event;
      event.deleted = item.value("type", "PUT") == "DELETE";
      auto kv = key_value(item.value("kv", json::object()));
      if (!kv) return kv.error();
      event.kv = std::move(*kv);
      message.events.push_back(std::move(event));
    }
  }
  return message;
}

}  // namespace vmgate::hostd
