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
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include <boost/asio/ssl/context.hpp>

#include "common/asio.hpp"
#include "hostd/channel/live_channels.hpp"
#include "hostd/cluster/cluster_directory.hpp"
#include "hostd/config/hostd_config.hpp"

namespace vmgate::hostd {

class PeerServer {
 public:
  PeerServer(asio::any_io_executor executor, const HostdConfig& config,
             const ClusterDirectory& directory, std::shared_ptr<asio::ssl::context> tls,
             LiveChannels* live);
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

  asio::any_io_executor executor_;
  const HostdConfig& config_;
  const ClusterDirectory& directory_;
  std::shared_ptr<asio::ssl::context> tls_;
  LiveChannels* live_;
  std::unique_ptr<Acceptor> acceptor_;
  std::atomic<std::uint64_t> received_{0};
  std::uint64_t next_id_ = 1;
};

}  // namespace vmgate::hostd
