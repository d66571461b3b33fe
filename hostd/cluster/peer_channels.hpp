// Forwarding to another host (docs/architecture.md, "Cluster"): a request
// for a VM that the directory places on another host goes to that host's
// peer listener, once. The link is HTTP/1.1 over mutual TLS:
//
//   CONNECT 6f1c...-uuid:5986 HTTP/1.1
//   Host: 6f1c...-uuid:5986
//   Vmgate-Host: kvm2                 the host the sender means to reach
//   Vmgate-Client: 203.0.113.7:51514  the original client, for guestd's log
//   Vmgate-Identity: token:alice      who admission let through, for the log
//   Vmgate-Request-Id: 5b2c0e9a
//
// and, once that host's guestd has connected the agent port, "200 Connection
// established" and the agent's bytes both ways. Everything HTTP (framing
// checks, the head rewritten for the agent, Forwarded) was done by the first
// host, which also decided the ACLs; the receiver only checks that the VM is
// its own, by UUID, and never forwards again (peer_server.hpp).
//
// To the client connection such a link is a channel like any other: its end
// here is one side of a socket pair, and a relay carries the other side over
// TLS, so exchanges, tunnels and the channel pool work unchanged.
//
// A fan-out sends each host one message for all of its VMs instead
// (open_fanout; peer_fanout_message.hpp has its form), over a link of its own
// that ends with the message's answer.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include <boost/asio/ssl/context.hpp>
#include <boost/system/result.hpp>

#include "common/asio.hpp"
#include "hostd/channel/channel.hpp"
#include "hostd/cluster/cluster_directory.hpp"
#include "hostd/config/hostd_config.hpp"
#include "hostd/fanout/fanout_result.hpp"
#include "hostd/identity/identity.hpp"
#include "hostd/proxy/client_stream.hpp"
#include "hostd/refusal.hpp"

namespace vmgate::hostd {

inline constexpr std::string_view peer_host_field = "Vmgate-Host";
inline constexpr std::string_view peer_client_field = "Vmgate-Client";
inline constexpr std::string_view peer_identity_field = "Vmgate-Identity";
inline constexpr std::string_view peer_request_id_field = "Vmgate-Request-Id";

// What one forwarded message carries besides the VM and port.
struct PeerRequest {
  std::string_view target_host;  // the host the directory places the VM on
  std::string_view client;       // the original client's address
  std::string identity;          // Identity::to_string() of the original client
  std::string_view request_id;
};

// The CONNECT head of a forwarded message; fields that would break a line
// are dropped.
std::string encode_peer_request(const VmRecord& vm, std::uint16_t port, const PeerRequest& request);

struct PeerFanoutMessage;

// A fan-out message's link to its host, once that host answered 200: the
// results it streams back, read as they come.
class PeerFanoutLink {
 public:
  struct State;
  explicit PeerFanoutLink(std::unique_ptr<State> state);
  ~PeerFanoutLink();
  PeerFanoutLink(const PeerFanoutLink&) = delete;
  PeerFanoutLink& operator=(const PeerFanoutLink&) = delete;

  // The next results, at least one unless the stream is now whole
  // (finished()); a refusal naming the host when the link failed, ended
  // before the summary, or sent what cannot be read. Not bounded in time:
  // the caller bounds it (and may cancel socket()).
  awaitable<boost::system::result<std::vector<VmResult>, Refusal>> next();
  bool finished() const;
  Stream& socket();

 private:
  std::unique_ptr<State> state_;
};

class PeerChannels {
 public:
  // `max_response`: fanout.max_response, what bounds a line of a host's
  // fan-out results.
  PeerChannels(const ClusterConfig& config, const ClusterDirectory& directory,
               std::shared_ptr<asio::ssl::context> tls, std::chrono::milliseconds relay_idle,
               std::uint64_t max_response = FanoutConfig{}.max_response);

  const std::string& local_host() const { return directory_.host(); }
  bool remote(const VmRecord& vm) const { return vm.host != directory_.host(); }

  // A channel to `vm`'s agent `port` through its host. A refusal names the
  // host: 502 when it cannot be reached (a dead host, before its lease
  // expires), or its peer listener's own answer (404, 503, 502...).
  awaitable<boost::system::result<Channel, Refusal>> open(const VmRecord& vm, std::uint16_t port,
                                                          const PeerRequest& request);

  // One fan-out message to `host` for its VMs in `message`, answered 200
  // within cluster.peer_connect_timeout; else a refusal naming the host (502
  // when it cannot be reached, or its own refusal of the whole message).
  // Counted once in sent(), whatever the number of VMs.
  awaitable<boost::system::result<std::unique_ptr<PeerFanoutLink>, Refusal>> open_fanout(
      const std::string& host, const PeerFanoutMessage& message);
  // A fan-out link that failed after its answer began.
  void count_failure() { ++failed_; }

  std::uint64_t sent() const { return sent_; }
  std::uint64_t failed() const { return failed_; }

 private:
  // A host's record and the peer address it publishes.
  struct Peer {
    HostRecord host;
    transport::Address address;
  };
  // The host to send to, or a 502 naming it (counted failed); `whose` ends
  // the no-record reason ("of vm web1").
  boost::system::result<Peer, Refusal> peer(std::string_view host, std::string_view whose);
  // The 502 for a host that did not answer within cluster.peer_connect_timeout.
  Refusal unanswered(const Peer& peer);

  using TlsLink = boost::system::result<std::unique_ptr<ClientStream::TlsStream>, Refusal>;
  // A TLS link to `host`'s peer listener, its certificate checked.
  awaitable<TlsLink> connect_tls(const HostRecord& host, const transport::Address& address);
  awaitable<boost::system::result<std::unique_ptr<PeerFanoutLink>, Refusal>> connect_fanout(
      const HostRecord& host, const transport::Address& address, const PeerFanoutMessage& message);

  awaitable<boost::system::result<Channel, Refusal>> connect(const HostRecord& host,
                                                             const transport::Address& address,
                                                             const VmRecord& vm, std::uint16_t port,
                                                             const PeerRequest& request);

  const ClusterConfig& config_;
  const ClusterDirectory& directory_;
  std::shared_ptr<asio::ssl::context> tls_;
  std::chrono::milliseconds relay_idle_;
  std::uint64_t max_response_;
  std::atomic<std::uint64_t> sent_{0};
  std::atomic<std::uint64_t> failed_{0};
};

// An admitted VM's channel, as every path that opens one does it: through
// its host when `peers` places it on another (`request.target_host` is
// taken from the VM), else over `address` here with the preamble naming
// `request.client`.
awaitable<boost::system::result<Channel, Refusal>> open_vm_channel(
    const ChannelConfig& config, PeerChannels* peers, const VmRecord& vm,
    const transport::Address& address, std::uint16_t port, const PeerRequest& request,
    std::optional<AttachedDevice> attached = std::nullopt);

}  // namespace vmgate::hostd
