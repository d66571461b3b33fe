// The peer listener: where other hostds forward requests for this host's
// VMs (peer_channels.hpp has the message). Mutual TLS with the cluster CA;
// the connecting host's certificate must name a host with a record in the
// directory, so only the cluster's hosts are heard. Then the receiver:
//   - delivers only to its own VMs, named by UUID (a name, or a VM the
//     directory places elsewhere, is refused: a forwarded request is never
//     forwarded again, so two hosts with different views cannot bounce it);
//   - trusts the Vmgate-Client and Vmgate-Identity fields only because the
//     sender authenticated as a cluster host; they go to guestd's preamble
//     and the log, while the ACLs were decided on the first host;
//   - logs one event=peer_request line per message.
// Two messages: CONNECT UUID:PORT (one VM, a link; peer_channels.hpp) and a
// fan-out's POST /vmgate/v1/fanout (its VMs on this host; peer_fanout_message.hpp),
// delivered with hostd/fanout's run_fanout and answered as NDJSON.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include <boost/asio/ssl/context.hpp>

#include "common/asio.hpp"
#include "hostd/channel/channel_budget.hpp"
#include "hostd/channel/channel_pool.hpp"
#include "hostd/channel/live_channels.hpp"
#include "hostd/cluster/cluster_directory.hpp"
#include "hostd/config/hostd_config.hpp"
#include "hostd/metrics/hostd_metrics.hpp"
#include "hostd/proxy/client_stream.hpp"

namespace vmgate::hostd {

// What a fan-out message is delivered with: the channels this host's own
// requests use. Without a budget, fan-out messages are refused (501).
struct PeerFanoutDelivery {
  ChannelBudget* budget = nullptr;
  ChannelPool* pool = nullptr;
  HostdMetrics* metrics = nullptr;
};

class PeerServer {
 public:
  PeerServer(asio::any_io_executor executor, const HostdConfig& config,
             const ClusterDirectory& directory, std::shared_ptr<asio::ssl::context> tls,
             LiveChannels* live, PeerFanoutDelivery fanout = {});
  ~PeerServer();
  PeerServer(const PeerServer&) = delete;
  PeerServer& operator=(const PeerServer&) = delete;

  // Binds cluster.peer_listen (throws std::runtime_error naming it) and accepts.
  void start();
  void stop();

  std::uint64_t received() const { return received_; }

 private:
  awaitable<void> accept_loop();
  awaitable<void> serve(Stream socket, std::uint64_t id);
  struct FanoutMessage;
  awaitable<void> serve_fanout(FanoutMessage& message);

  asio::any_io_executor executor_;
  const HostdConfig& config_;
  const ClusterDirectory& directory_;
  std::shared_ptr<asio::ssl::context> tls_;
  LiveChannels* live_;
  PeerFanoutDelivery fanout_;
  std::unique_ptr<Acceptor> acceptor_;
  std::atomic<std::uint64_t> received_{0};
  std::uint64_t next_id_ = 1;
};

}  // namespace vmgate::hostd
