// Delivering one request to many VMs and streaming their results back
// (docs/architecture.md, "Fan-out"). The client connection hands a request
// over here once admission gave it a FanoutPlan; the unicast exchange never
// sees it.
//
//  - The body is read whole, once, within fanout.max_body (413 above it,
//    before any VM is tried), into one buffer that every VM's write points
//    at; the rewritten head is made once too. Memory is one body, whatever
//    the number of VMs.
//  - Workers, at most fanout.max_parallel, each take the next VM, deliver to
//    it over a channel exactly as unicast gets one (its pooled channel, else
//    a new one within its VM's channel budget, with the preamble), and give a
//    clean channel back. Each VM has fanout.vm_timeout_ms for the whole of
//    it; one that is slow or dead holds its worker only, never the others or
//    the stream.
//  - The client connection's coroutine writes results as they come, several
//    at a time when several are ready, as multipart/mixed parts or NDJSON
//    lines (fanout_result.hpp), in a chunked 200 (HTTP/1.0: ended by the
//    close), then the summary. Workers start no new VM while
//    2 x max_parallel results wait to be written, so a client that reads
//    slowly bounds what hostd holds rather than growing it.
//  - VMs on other hosts (cluster mode) are not taken by the workers: each
//    such host gets one message (PeerChannels::open_fanout) with its VMs'
//    UUIDs, the head and the body, sent in parallel with local delivery; its
//    results are read as it streams them and written with the local ones.
//    A host that cannot be reached, refuses, stops answering or cuts its
//    stream: each of its VMs without a result yet gets a 502 naming it.
//  - A message such a host receives (peer_server.hpp) is run here as well,
//    its head and body as the first host prepared them (PreparedFanout), its
//    results written back as NDJSON.
//  - One request record for the request (vms=, failed=), one `event=fanout_vm`
//    line per VM with the same req=, and the fan-out metrics.
#pragma once

#include <string_view>

#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/parser.hpp>

#include "common/asio.hpp"
#include "common/deadline.hpp"
#include "hostd/channel/channel_budget.hpp"
#include "hostd/channel/channel_pool.hpp"
#include "hostd/channel/live_channels.hpp"
#include "hostd/config/hostd_config.hpp"
#include "hostd/fanout/fanout_plan.hpp"
#include "hostd/metrics/hostd_metrics.hpp"
#include "hostd/proxy/client_stream.hpp"
#include "hostd/proxy/request_record.hpp"
#include "hostd/route/request_route.hpp"

namespace vmgate::hostd {

class PeerChannels;

// What a fan-out works with: the client connection's ends, and what the
// unicast path opens channels with.
struct FanoutEnds {
  ClientStream& client;
  boost::beast::flat_buffer& client_buffer;  // client bytes read past the request head
  Deadline& deadline;                        // the connection's: bounds each write to the client
  const HostdConfig& config;
  ChannelBudget& budget;
  ChannelPool* pool = nullptr;      // null: channels close after their VM's exchange
  LiveChannels* live = nullptr;     // null: channels are not cut when their VM goes
  HostdMetrics* metrics = nullptr;  // null: not counted
  std::string_view peer;            // the client, for the preamble and Forwarded
  bool trusted_listener = false;    // what Forwarded may keep (header_rewrite.hpp)
  // Cluster mode: the plan's remote members go through their hosts. Null on
  // a host delivering another host's message, which never forwards again.
  PeerChannels* peers = nullptr;
  std::string_view identity;  // Identity::to_string() of the client, for the peers
};

// A fan-out another host already read and rewrote (a peer fan-out message):
// its head and body are delivered as they are, its results written as
// NDJSON, and the connection closes after the summary.
struct PreparedFanout {
  std::string_view agent_head;  // ends with the empty line
  std::string_view body;
  bool is_head = false;  // the agent head is a HEAD request: responses have no body
};

struct FanoutRequest {
  boost::beast::http::request_parser<boost::beast::http::empty_body>& head;  // body unread
  const Route& route;
  const FanoutPlan& plan;
  const PreparedFanout* prepared = nullptr;  // set: `head` is not read at all
};

// Runs a fan-out request to its end. True when the client connection can
// carry another request. Nothing is thrown for anything a client, guestd or
// agent does; the record gets the status, the counts and the byte counts.
awaitable<bool> run_fanout(FanoutEnds ends, FanoutRequest request, RequestRecord& record);

}  // namespace vmgate::hostd
