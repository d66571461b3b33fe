// Admission: everything a request needs before anything is opened for it,
// in one function (docs/architecture.md, "The path of one request"):
//
//   route      which VM and port the head names           400
//   select     which VMs the directory says that is       501 404 409
//   authorize  whether this client may reach them         403
//   state      whether they can be reached now            503
//   size       whether the declared body is acceptable    413
//   channel    which transport reaches the VM's guestd    503 502
//
// select's answers would tell any client which VMs exist, so for a client
// that is not trusted, authorize reaches into it: a name that is not found
// is refused 403, not 404, unless the client could reach a VM of that name;
// an ambiguous name lists only the candidates it may reach, and is 403 when
// there are none. The 403 names the client and what it wrote, never a rule
// or a VM it did not name. Trusted clients get select's answers as they are.
//
// The client connection, /v1/resolve and /v1/check all go through admit(),
// so each refusal is written once and the admin API answers exactly what a
// request would get.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <boost/beast/http/message.hpp>
#include <boost/system/result.hpp>

#include "common/transport.hpp"
#include "hostd/authz/access_policy.hpp"
#include "hostd/config/hostd_config.hpp"
#include "hostd/directory/directory.hpp"
#include "hostd/fanout/fanout_plan.hpp"
#include "hostd/refusal.hpp"
#include "hostd/route/request_route.hpp"

namespace vmgate::hostd {

// What admission reads, besides the request.
struct AdmissionContext {
  const RoutingConfig& routing;
  const ChannelConfig& channel;
  const LimitsConfig& limits;
  const Directory& directory;
  const AccessPolicy& policy;
  // In a cluster, this host's name: a VM the directory places on another
  // host is admitted without a channel address here (its own host has
  // it), and delivered through that host (hostd/cluster/peer_channels.hpp).
  // Empty: every VM is this host's.
  std::string_view local_host = {};
};

// The request as the client connection has it: its head, what its framing
// declares, and who sent it on which listener.
struct AdmissionRequest {
  const boost::beast::http::request_header<>& head;
  std::optional<std::uint64_t> content_length;  // a declared Content-Length
  std::uint16_t guest_port = 0;                 // the listener's default agent port
  const Identity& identity;
};

// A VM the request goes to, and the channel transport that reaches it.
struct Destination {
  VmRecord vm;
  transport::Address address;
};

struct Admitted {
  Route route;
  Destination destination;  // unicast: the one VM
  AccessDecision access;    // what let it through (rule "trusted" for a trusted client)
  // A group, network or list target (names_many): every VM it names, and
  // `destination` is empty. Null for unicast, which pays nothing for it.
  std::shared_ptr<const FanoutPlan> fanout;
};

// The steps, in order; a refusal names the one that refused.
enum class AdmissionStep { route, select, authorize, state, size, channel };

// Why not, with what was learnt on the way (for the request's record and
// the admin API's answer).
struct Refused {
  AdmissionStep step = AdmissionStep::route;
  Refusal refusal;
  std::optional<Route> route;           // when the head named a target
  std::optional<VmRecord> vm;           // when the directory found one
  std::vector<std::string> candidates;  // when the name was ambiguous: "name (uuid)"
  // When authorize decided: the denial (step authorize), or the allow of a
  // request a later step refused.
  std::optional<AccessDecision> access;
};

boost::system::result<Admitted, Refused> admit(const AdmissionRequest& request,
                                               const AdmissionContext& context);

// The steps after `route`, for a route found some other way: a passthrough
// listener's SNI name, or a target the admin API is asked about.
boost::system::result<Admitted, Refused> admit_route(Route route, const Identity& identity,
                                                     std::optional<std::uint64_t> content_length,
                                                     const AdmissionContext& context);

}  // namespace vmgate::hostd
