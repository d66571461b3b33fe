#include "hostd/cluster/cluster_records.hpp"

#include <boost/asio/ip/address.hpp>
#include <nlohmann/json.hpp>

namespace vmgate::hostd {
namespace {

using json = nlohmann::json;

bool running(const VmRecord& vm) {
  return vm.state == VmState::running;
}

// A string field, or an error naming it.
boost::system::result<std::string, RecordError> string_field(const json& object,
                                                             std::string_view key) {
  auto it = object.find(key);
  if (it == object.end() || !it->is_string())
    return RecordError{std::string("field '") + std::string(key) + "' is missing or not a string"};
  return {boost::system::in_place_value, it->get<std::string>()};
}

boost::system::result<std::vector<std::string>, RecordError> string_list(const json& object,
                                                                         std::string_view key) {
  std::vector<std::string> out;
  auto it = object.find(key);
  if (it == object.end()) return {boost::system::in_place_value, std::move(out)};
  if (!it->is_array())
    return RecordError{std::string("field '") + std::string(key) + "' is not a list"};
  for (const auto& item : *it) {
    if (!item.is_string())
      return RecordError{std::string("field '") + std::string(key) +
                         "' holds something not a string"};
    out.push_back(item.get<std::string>());
  }
  return {boost::system::in_place_value, std::move(out)};
}

}  // namespace

std::string cluster_host_key(std::string_view host) {
  return std::string(cluster_hosts_prefix) + std::string(host);
}

std::string cluster_vm_key(std::string_view uuid) {
  return std::string(cluster_vms_prefix) + std::string(uuid);
}

std::string prefix_range_end(std::string_view prefix) {
  std::string end(prefix);
  while (!end.empty()) {
    auto& last = reinterpret_cast<unsigned char&>(end.back());
    if (last < 0xff) {
      ++last;
      return end;
    }
    end.pop_back();
  }
  // Every byte 0xff: etcd reads "\0" as "to the end of the keyspace".
  return std::string(1, '\0');
}

ClusterKey parse_cluster_key(std::string_view key) {
  ClusterKey parsed;
  auto take = [&](std::string_view prefix, ClusterKey::Kind kind) {
    if (!key.starts_with(prefix)) return false;
    std::string_view id = key.substr(prefix.size());
    if (id.empty() || id.find('/') != std::string_view::npos) return false;
    parsed.kind = kind;
    parsed.id = std::string(id);
    return true;
  };
  if (!take(cluster_hosts_prefix, ClusterKey::Kind::host))
    take(cluster_vms_prefix, ClusterKey::Kind::vm);
  return parsed;
}

bool valid_host_name(std::string_view name) {
  if (name.empty() || name.size() > 253 || name == "." || name == "..") return false;
  for (unsigned char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '-' || c == '_';
    if (!ok) return false;
  }
  return true;
}

std::optional<VmState> state_from_name(std::string_view name) {
  for (VmState state : {VmState::running, VmState::paused, VmState::shut_off, VmState::crashed,
                        VmState::suspended, VmState::other}) {
    if (state_name(state) == name) return state;
  }
  return std::nullopt;
}

std::string encode_host_record(const HostRecord& host) {
  return json{{"name", host.name},
              {"peer_address", host.peer_address},
              {"version", host.version},
              {"client_addresses", host.client_addresses}}
      .dump();
}

boost::system::result<HostRecord, RecordError> decode_host_record(std::string_view text) {
  json object = json::parse(text, nullptr, false);
  if (!object.is_object()) return RecordError{std::string("host record is not a JSON object")};
  HostRecord host;
  auto name = string_field(object, "name");
  if (!name) return name.error();
  if (!valid_host_name(*name)) return RecordError{std::string("host record names an invalid host")};
  auto peer = string_field(object, "peer_address");
  if (!peer) return peer.error();
  // Absent from a host older than the field: read as none, so that its VMs
  // stay routable through it and only DNS has no address to give.
  auto addresses = string_list(object, "client_addresses");
  if (!addresses) return addresses.error();
  for (const std::string& address : *addresses) {
    boost::system::error_code ec;
    boost::asio::ip::make_address(address, ec);
    if (ec)
      return RecordError{
          std::string("host record's client_addresses holds something not an "
                      "IP address")};
  }
  host.name = std::move(*name);
  host.peer_address = std::move(*peer);
  if (auto version = string_field(object, "version")) host.version = std::move(*version);
  host.client_addresses = std::move(*addresses);
  return host;
}

std::string encode_vm_claim(const VmClaim& claim) {
  const VmRecord& vm = claim.vm;
  // The sequence as a string, like etcd's own 64-bit numbers: JSON readers
  // that hold numbers as doubles would round it.
  return json{{"uuid", vm.uuid},
              {"name", vm.name},
              {"state", state_name(vm.state)},
              {"groups", vm.groups},
              {"networks", vm.networks},
              {"host", vm.host},
              {"event",
               {{"time_ns", std::to_string(claim.event.time_ns)},
                {"sequence", std::to_string(claim.event.sequence)}}}}
      .dump();
}

boost::system::result<VmClaim, RecordError> decode_vm_claim(std::string_view text) {
  json object = json::parse(text, nullptr, false);
  if (!object.is_object()) return RecordError{std::string("vm claim is not a JSON object")};
  VmClaim claim;
  VmRecord& vm = claim.vm;
  auto uuid = string_field(object, "uuid");
  if (!uuid) return uuid.error();
  if (!looks_like_uuid(*uuid)) return RecordError{std::string("vm claim's uuid is not a UUID")};
  auto name = string_field(object, "name");
  if (!name) return name.error();
  if (!valid_vm_name(*name))
    return RecordError{std::string("vm claim's name is not a valid VM name")};
  auto state = string_field(object, "state");
  if (!state) return state.error();
  auto host = string_field(object, "host");
  if (!host) return host.error();
  if (!valid_host_name(*host)) return RecordError{std::string("vm claim names an invalid host")};
  auto groups = string_list(object, "groups");
  if (!groups) return groups.error();
  auto networks = string_list(object, "networks");
  if (!networks) return networks.error();
  vm.uuid = std::move(*uuid);
  vm.name = std::move(*name);
  vm.state = state_from_name(*state).value_or(VmState::other);
  vm.host = std::move(*host);
  vm.groups = std::move(*groups);
  vm.networks = std::move(*networks);
  if (auto event = object.find("event"); event != object.end() && event->is_object()) {
    auto number = [&](std::string_view key) -> std::optional<std::int64_t> {
      auto field = string_field(*event, key);
      if (!field) return std::nullopt;
      try {
        std::size_t used = 0;
        const long long value = std::stoll(*field, &used);
        if (used != field->size()) return std::nullopt;
        return value;
      } catch (const std::exception&) {
        return std::nullopt;
      }
    };
    auto time_ns = number("time_ns");
    auto sequence = number("sequence");
    if (!time_ns || !sequence || *sequence < 0)
      return RecordError{std::string("vm claim's event stamp is malformed")};
    claim.event = EventStamp{*time_ns, static_cast<std::uint64_t>(*sequence)};
  } else {
    return RecordError{std::string("field 'event' is missing")};
  }
  return claim;
}

bool claim_wins(const VmClaim& candidate, const VmClaim& holder) {
  if (candidate.vm.host == holder.vm.host) return true;
  if (running(candidate.vm) != running(holder.vm)) return running(candidate.vm);
  if (candidate.event != holder.event) return candidate.event > holder.event;
  return candidate.vm.host < holder.vm.host;
}

}  // namespace vmgate::hostd
