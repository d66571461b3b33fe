// The life of one connection a guest started (docs/architecture.md,
// "Guest-originated traffic"): its preamble, then
//
//   SEND host:NAME   a host service from [host_services]        (the allowlist)
//   SEND VM          another VM's agent port, over its channel  (an ACL rule must allow it)
//   SEND group:G     every VM of a group, list, range or network the ACL
//                    rules let the caller reach: one request, a part per VM
//                    (hostd/fanout, as for a client)
//   JOIN / LEAVE     a group, for the calling VM                (the membership store)
//
// answered as guestd answers hostd ("VMGATE/1 200 OK", or a status, a
// reason token and a `Reason:` field saying why in words). After a 200 to
// SEND the connection carries one HTTP request and its response (hostd
// rewrites the request's head: the service learns the caller from
// `Forwarded: for="vm:NAME"` and `X-VM-Uuid`, and what the guest wrote in
// those is dropped), or, with `Form: tunnel`, raw bytes both ways.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include <boost/system/result.hpp>

#include "common/asio.hpp"
#include "common/preamble.hpp"
#include "hostd/config/hostd_config.hpp"
#include "hostd/directory/directory.hpp"
#include "hostd/guestside/guest_caller.hpp"
#include "hostd/reload/running_config.hpp"

namespace vmgate::hostd {

// The header naming the calling VM's UUID to a host service or agent.
inline constexpr std::string_view vm_uuid_header = "X-VM-Uuid";

// An answer to a guest, before anything else is sent on its connection.
struct GuestAnswer {
  unsigned status = 200;
  std::string token = "OK";  // the preamble's one-token reason
  std::string reason;        // words, in the Reason field (empty for 200)

  bool ok() const { return status == 200; }
};

// JOIN and LEAVE for `vm`, which the connection's arrival named. Empty: the
// verbs are answered 501.
using MembershipChange =
    std::function<GuestAnswer(const VmRecord& vm, preamble::Verb verb, std::string_view group)>;

class ChannelBudget;
class ChannelPool;
class LiveChannels;
class HostdMetrics;
class PeerChannels;

// What a guest's SEND to many VMs delivers with: the channels client
// fan-outs use, so that a guest's fan-out shares each VM's channel budget
// with the clients'.
struct GuestFanout {
  ChannelBudget& budget;
  ChannelPool* pool = nullptr;
  LiveChannels* live = nullptr;
  HostdMetrics* metrics = nullptr;
};

struct GuestServices {
  CurrentConfig& current;        // host services, ACL rules, timeouts: each connection's snapshot
  const ChannelConfig& channel;  // the running channel settings (restart-only)
  const Directory& directory;
  MembershipChange membership;
  // Null: a SEND naming many VMs is answered 501.
  const GuestFanout* fanout = nullptr;
  // In a cluster: a VM on another host is reached through that host, after
  // this host's ACL rules allowed it. Null: every VM is this host's.
  PeerChannels* peers = nullptr;
};

// Where the connection arrived, and how that names the calling VM: asked
// once the preamble is in, so a VM undefined (or a CID moved to another VM)
// while the connection waited is seen as it is then.
struct GuestArrival {
  std::function<Caller()> identify;
  std::string via;  // "vsock cid 3", "unix:/run/vmgate/in/vm1.sock"
  // Over inbound.max_connections: answered 503 busy once its preamble is in.
  bool busy = false;
};

// Serves the connection to its end on the stream's executor; never throws
// for what the guest sends.
awaitable<void> serve_guest(Stream stream, GuestArrival arrival, const GuestServices& services,
                            std::uint64_t id);

// The answer's preamble: "VMGATE/1 403 not-allowed" and `Reason: ...`.
std::string encode_answer(const GuestAnswer& answer);

}  // namespace vmgate::hostd
