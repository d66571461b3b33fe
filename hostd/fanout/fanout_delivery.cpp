#include "hostd/fanout/fanout_delivery.hpp"

#include <strings.h>

#include <algorithm>
#include <array>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>
#include <boost/beast/http.hpp>

#include "common/log.hpp"
#include "hostd/channel/channel.hpp"
#include "hostd/cluster/peer_channels.hpp"
#include "hostd/cluster/peer_fanout_message.hpp"
#include "hostd/fanout/fanout_result.hpp"
#include "hostd/proxy/error_response.hpp"
#include "hostd/proxy/head_bytes.hpp"
#include "hostd/route/header_rewrite.hpp"

namespace vmgate::hostd {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
using clock = std::chrono::steady_clock;

std::chrono::milliseconds ms_since(clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - start);
}

// What one VM's exchange came to, and what its channel can do next.
struct VmExchange {
  VmResult result;
  bool channel_reusable = false;
  // The channel ended before any byte of an answer: a kept channel the agent
  // closed as the request arrived.
  bool channel_failed = false;
};

// The stream a worker is using now, so that a client that goes away stops
// every VM's exchange at once.
class InFlight {
 public:
  InFlight(Stream*& slot, Stream& stream) : slot_(slot) { slot_ = &stream; }
  ~InFlight() { slot_ = nullptr; }
  InFlight(const InFlight&) = delete;
  InFlight& operator=(const InFlight&) = delete;

 private:
  Stream*& slot_;
};

class Fanout {
 public:
  Fanout(const FanoutEnds& ends, const FanoutRequest& request, RequestRecord& record)
      : ends_(ends),
        request_(request),
        plan_(request.plan),
        config_(ends.config.fanout),
        rec_(record),
        executor_(ends.client.get_executor()),
        wake_(executor_),
        room_(executor_) {
    reported_.assign(plan_.members.size(), false);
  }
  Fanout(const Fanout&) = delete;
  Fanout& operator=(const Fanout&) = delete;
  ~Fanout() { ends_.deadline.expires_never(); }

  awaitable<bool> run() {
    if (const PreparedFanout* prepared = request_.prepared) {
      // Another host's message: its answer is read by that host, as NDJSON,
      // and ends with the connection.
      version_ = 11;
      keep_alive_ = false;
      ndjson_ = true;
      is_head_ = prepared->is_head;
      had_body_ = !prepared->body.empty();
      agent_head_ = prepared->agent_head;
    } else {
      const auto& head = request_.head.get();
      version_ = head.version();
      keep_alive_ = head.keep_alive();
      ndjson_ = wants_ndjson(head[http::field::accept]);
      is_head_ = head.method() == http::verb::head;
      if (!co_await read_body()) co_return false;
      make_agent_head();
    }
    if (!co_await write_response_head()) {
      rec_.status = 499;
      rec_.reason = "client closed the connection";
      co_return false;
    }
    rec_.status = 200;
    start_ = clock::now();
    co_await deliver_all();
    if (client_ok_) co_await finish();
    rec_.fanout_vms = static_cast<std::uint32_t>(summary_.total());
    rec_.fanout_failed = static_cast<std::uint32_t>(summary_.failed());
    if (ends_.metrics) ends_.metrics->fanout_done(summary_, clock::now() - start_);
    if (!client_ok_) {
      rec_.note_aborted(Aborted::client);
      co_return false;
    }
    co_return keep_alive_&& version_ >= 11;
  }

 private:
  // -- the request ---------------------------------------------------------

  // The body, whole, within fanout.max_body; false when the client was
  // answered (413, 400) or went away instead.
  awaitable<bool> read_body() {
    auto& head = request_.head;
    const std::uint64_t limit = config_.max_body;
    if (auto declared = head.content_length(); declared && *declared > limit) {
      // Named, not a temporary in the co_await: GCC 12 destroys those twice.
      const Refusal refusal{413, too_large_reason(*declared)};
      co_await refuse(refusal);
      co_return false;
    }
    if (head.is_done()) co_return true;  // no body
    had_body_ = true;
    const auto& fields = head.get();
    // The body is hostd's to read, not the agents': the client that waits to
    // be told to send it is told now (RFC 9110 §10.1.1).
    if (version_ >= 11 &&
        ::strcasecmp(std::string(fields[http::field::expect]).c_str(), "100-continue") == 0) {
      static constexpr std::string_view go_on = "HTTP/1.1 100 Continue\r\n\r\n";
      if (!co_await write_client(asio::buffer(go_on.data(), go_on.size()))) co_return false;
    }
    http::request_parser<http::string_body> parser{std::move(head)};
    parser.body_limit(limit);
    expire_client_after(ends_.config.limits.idle_timeout);
    auto [ec, n] = co_await http::async_read(ends_.client, ends_.client_buffer, parser, use_tuple);
    ends_.deadline.expires_never();
    if (ec == http::error::body_limit) {
      const Refusal refusal{413, too_large_reason(std::nullopt)};
      co_await refuse(refusal);
      co_return false;
    }
    if (ec == http::error::end_of_stream || ec == http::error::partial_message ||
        ec == asio::error::eof || ec == asio::error::connection_reset ||
        ec == asio::error::operation_aborted || ec == asio::error::bad_descriptor) {
      rec_.status = 499;
      rec_.reason = "client closed the connection mid-body";
      rec_.note_aborted(Aborted::client);
      co_return false;
    }
    if (ec) {
      const Refusal refusal{400, fmt::format("malformed request body: {}", ec.message())};
      co_await refuse(refusal);
      co_return false;
    }
    message_.emplace(parser.release());
    rec_.bytes_in += message_->body().size();
    co_return true;
  }

  std::string too_large_reason(std::optional<std::uint64_t> declared) const {
    if (declared)
      return fmt::format("request body of {} bytes exceeds fanout.max_body ({} bytes)", *declared,
                         config_.max_body);
    return fmt::format("request body exceeds fanout.max_body ({} bytes)", config_.max_body);
  }

  // The head every VM gets, made once: rewritten as for unicast, framed by
  // Content-Length whatever framing the client used.
  void make_agent_head() {
    http::request_header<>& h = message_ ? message_->base() : request_.head.get().base();
    rewrite_request(
        h, request_.route, ends_.config.routing.vm_header,
        ForwardedClient{
            .peer = ends_.peer, .trusted = ends_.trusted_listener, .tls = ends_.client.is_tls()});
    h.erase(http::field::expect);
    h.erase(http::field::transfer_encoding);
    h.erase(http::field::content_length);
    if (had_body_) h.set(http::field::content_length, std::to_string(body().size()));
    append_head(h, agent_head_);
  }

  std::string_view body() const {
    if (request_.prepared) return request_.prepared->body;
    return message_ ? std::string_view(message_->body()) : std::string_view();
  }

  // -- the client ------------------------------------------------------------

  void expire_client_after(std::chrono::milliseconds limit) {
    ends_.deadline.expires_after(limit, [this] {
      error_code ignored;
      ends_.client.close(ignored);
    });
  }

  // One write to the client within the idle timeout; false when it failed.
  template <class Buffers>
  awaitable<bool> write_client(const Buffers& buffers) {
    expire_client_after(ends_.config.limits.idle_timeout);
    auto [ec, n] = co_await asio::async_write(ends_.client, buffers, use_tuple);
    ends_.deadline.expires_never();
    rec_.bytes_out += n;
    co_return !ec;
  }

  awaitable<void> refuse(const Refusal& refusal) {
    rec_.status = refusal.status;
    rec_.reason = refusal.reason;
    auto res = make_error_response(refusal, rec_.id, version_, false);
    expire_client_after(ends_.config.limits.idle_timeout);
    auto [ec, n] = co_await http::async_write(ends_.client, res, use_tuple);
    ends_.deadline.expires_never();
    rec_.bytes_out += n;
  }

  awaitable<bool> write_response_head() {
    http::response_header<> res;
    res.result(http::status::ok);
    res.version(version_ >= 11 ? 11 : 10);
    res.set(http::field::server, "vmgate");
    res.set("X-Request-Id", rec_.id);
    if (ndjson_) {
      res.set(http::field::content_type, ndjson_content_type);
    } else {
      boundary_ = new_boundary();
      res.set(http::field::content_type, multipart_content_type(boundary_));
    }
    res.set(http::field::cache_control, "no-store");
    // How many parts come before the summary, for a client's progress.
    res.set("X-VM-Count", std::to_string(plan_.members.size()));
    if (version_ >= 11 && !is_head_) {
      res.set(http::field::transfer_encoding, "chunked");
    }
    if (!keep_alive_ || version_ < 11) res.set(http::field::connection, "close");
    std::string out;
    append_head(res, out);
    co_return co_await write_client(asio::buffer(out));
  }

  // A piece of the body: one chunk (RFC 9112 §7.1) to an HTTP/1.1 client.
  awaitable<bool> write_piece(const std::string& piece) {
    if (piece.empty() || is_head_) co_return true;
    if (version_ < 11) co_return co_await write_client(asio::buffer(piece));
    const std::string size_line = fmt::format("{:x}\r\n", piece.size());
    static constexpr std::string_view crlf = "\r\n";
    const std::array<asio::const_buffer, 3> chunk{asio::buffer(size_line), asio::buffer(piece),
                                                  asio::buffer(crlf.data(), crlf.size())};
    co_return co_await write_client(chunk);
  }

  awaitable<void> finish() {
    const auto elapsed = ms_since(start_);
    std::string tail;
    if (ndjson_) {
      tail = ndjson_summary(summary_, rec_.id, elapsed);
    } else {
      tail = multipart_summary(summary_, boundary_, rec_.id, elapsed);
      tail += multipart_close(boundary_);
    }
    if (!co_await write_piece(tail)) {
      client_ok_ = false;
      co_return;
    }
    if (version_ >= 11 && !is_head_) {
      static constexpr std::string_view last_chunk = "0\r\n\r\n";
      if (!co_await write_client(asio::buffer(last_chunk.data(), last_chunk.size())))
        client_ok_ = false;
    }
  }

  // -- delivery --------------------------------------------------------------

  // Settled VMs first, in the plan's order; then workers for the others, and
  // the results written as they come until every worker is done.
  awaitable<void> deliver_all() {
    // Other hosts' VMs, by host, in the plan's order: one message each.
    std::vector<std::pair<std::string, std::vector<std::size_t>>> hosts;
    std::size_t local = 0;
    for (std::size_t i = 0; i < plan_.members.size(); ++i) {
      const FanoutMember& member = plan_.members[i];
      if (member.settled) {
        push(i, VmResult(*member.settled));
      } else if (!member.remote) {
        ++local;
      } else if (!ends_.peers) {
        push(i, refused_result(member.vm.name, member.vm.uuid,
                               Refusal{502, fmt::format("vm {} is on host {}, and this hostd has "
                                                        "no links to other hosts",
                                                        member.vm.name, member.vm.host)}));
      } else {
        auto it = std::find_if(hosts.begin(), hosts.end(),
                               [&](const auto& h) { return h.first == member.vm.host; });
        if (it == hosts.end()) it = hosts.insert(hosts.end(), {member.vm.host, {}});
        it->second.push_back(i);
      }
    }
    const std::size_t workers = std::min<std::size_t>(config_.max_parallel, local);
    max_ready_ = std::max<std::size_t>(2 * config_.max_parallel, 16);
    in_flight_.assign(workers + hosts.size(), nullptr);
    workers_left_ = workers + hosts.size();
    auto done = [this, id = rec_.id](std::exception_ptr e) {
      if (e) log::error("fanout_worker_failed").kv("req", id).kv("error", log::describe(e));
      if (--workers_left_ == 0) wake_.cancel();
    };
    for (std::size_t slot = 0; slot < workers; ++slot)
      asio::co_spawn(executor_, worker(slot), done);
    for (std::size_t h = 0; h < hosts.size(); ++h) {
      asio::co_spawn(
          executor_,
          host_worker(workers + h, std::move(hosts[h].first), std::move(hosts[h].second)), done);
    }
    for (;;) {
      if (!ready_.empty()) {
        co_await write_ready();
        continue;
      }
      if (workers_left_ == 0) break;
      wake_.expires_at(asio::steady_timer::time_point::max());
      co_await wake_.async_wait(use_tuple);
    }
    // A VM whose worker ended without a result (it threw) is not left out.
    for (std::size_t i = 0; i < plan_.members.size(); ++i) {
      if (reported_[i]) continue;
      const VmRecord& vm = plan_.members[i].vm;
      push(i, refused_result(vm.name, vm.uuid, Refusal{502, "delivery failed inside hostd"}));
    }
    if (!ready_.empty()) co_await write_ready();
  }

  // Every result waiting, logged, counted, and written to the client in one piece.
  awaitable<void> write_ready() {
    std::string piece;
    while (!ready_.empty()) {
      VmResult result = std::move(ready_.front());
      ready_.pop_front();
      summary_.add(result);
      log_result(result);
      if (!client_ok_) continue;
      piece += ndjson_ ? ndjson_line(result) : multipart_part(result, boundary_);
    }
    room_.cancel();  // workers waiting for room may go on
    if (!client_ok_ || piece.empty()) co_return;
    if (!co_await write_piece(piece)) stop_delivering();
  }

  // The client went away: every exchange in flight is cancelled, and no VM
  // is started; their results are still logged.
  void stop_delivering() {
    client_ok_ = false;
    stopped_ = true;
    error_code ignored;
    for (Stream* stream : in_flight_)
      if (stream) stream->cancel(ignored);
    room_.cancel();
  }

  void log_result(const VmResult& r) {
    auto line = log::info("fanout_vm");
    line.kv("req", rec_.id)
        .kv("vm", r.name)
        .kv("uuid", r.uuid.empty() ? std::string("-") : r.uuid)
        .kv("class", class_name(r.vm_class))
        .kv("status", r.status)
        .kv("ms", static_cast<long long>(r.elapsed.count()));
    if (!r.reason.empty()) line.kv("reason", r.reason);
  }

  void push(std::size_t index, VmResult result) {
    reported_[index] = true;
    ready_.push_back(std::move(result));
    wake_.cancel();
  }

  awaitable<void> worker(std::size_t slot) {
    for (;;) {
      co_await wait_for_room();
      while (next_ < plan_.members.size() &&
             (plan_.members[next_].settled || plan_.members[next_].remote))
        ++next_;
      if (stopped_ || next_ >= plan_.members.size()) co_return;
      const std::size_t index = next_++;
      const FanoutMember& member = plan_.members[index];
      const auto start = clock::now();
      auto delivered = co_await within(config_.vm_timeout, deliver(member, slot));
      VmResult result = delivered ? std::move(*delivered) : timed_out(member.vm);
      result.elapsed = ms_since(start);
      push(index, std::move(result));
    }
  }

  // Waits while too many results wait to be written (a slow client).
  awaitable<void> wait_for_room() {
    while (!stopped_ && ready_.size() >= max_ready_) {
      room_.expires_at(asio::steady_timer::time_point::max());
      co_await room_.async_wait(use_tuple);
    }
  }

  // The VMs of another host: one message to it, its results as it streams
  // them. Each read waits at most a VM's timeout (the receiver gives each VM
  // that, and some VM of its completes within it) plus the link's connect
  // timeout; whatever it has not answered for when the link ends is a 502
  // naming the host.
  awaitable<void> host_worker(std::size_t slot, std::string host,
                              std::vector<std::size_t> indices) {
    PeerFanoutMessage message{.target_host = host,
                              .client = ends_.peer,
                              .identity = std::string(ends_.identity),
                              .request_id = rec_.id,
                              .port = request_.route.port,
                              .agent_head = agent_head_,
                              .body = body()};
    message.vms.reserve(indices.size());
    // Its results name VMs by UUID: each is found at once, however many.
    std::unordered_map<std::string_view, std::size_t> by_uuid;
    for (std::size_t i : indices) {
      message.vms.push_back(plan_.members[i].vm.uuid);
      by_uuid.emplace(plan_.members[i].vm.uuid, i);
    }
    const auto start = clock::now();
    std::string why;
    auto link = co_await ends_.peers->open_fanout(host, message);
    if (!link) {
      why = link.error().reason;
    } else {
      const InFlight in_flight(in_flight_[slot], (*link)->socket());
      const auto gap = config_.vm_timeout + ends_.config.cluster.peer_connect_timeout;
      while (!(*link)->finished()) {
        co_await wait_for_room();
        if (stopped_) {
          why = "the client went away";
          break;
        }
        // A silent host's socket is cancelled, which ends the read for sure.
        Deadline silence(executor_);
        silence.expires_after(gap, [&link] {
          error_code ignored;
          (*link)->socket().cancel(ignored);
        });
        auto batch = co_await (*link)->next();
        silence.expires_never();
        if (silence.expired()) {
          why = fmt::format("host {} sent no result for {} ms", host,
                            std::chrono::duration_cast<std::chrono::milliseconds>(gap).count());
        } else if (!batch) {
          why = batch.error().reason;
        }
        if (!why.empty()) {
          ends_.peers->count_failure();
          break;
        }
        for (VmResult& result : *batch)
          take_remote(by_uuid, std::move(result));
      }
    }
    for (std::size_t i : indices) {
      if (reported_[i]) continue;
      const VmRecord& vm = plan_.members[i].vm;
      VmResult result = refused_result(
          vm.name, vm.uuid,
          Refusal{502, fmt::format("vm {} on host {}: no result from its host ({})", vm.name, host,
                                   why.empty() ? "its stream ended without it" : why)});
      result.elapsed = ms_since(start);
      push(i, std::move(result));
    }
  }

  // A result another host sent, for one of the VMs asked of it (by UUID),
  // once; under the name this host's plan has for it.
  void take_remote(const std::unordered_map<std::string_view, std::size_t>& by_uuid,
                   VmResult result) {
    if (auto it = by_uuid.find(result.uuid); it != by_uuid.end() && !reported_[it->second]) {
      result.name = plan_.members[it->second].vm.name;
      push(it->second, std::move(result));
      return;
    }
    log::warn("fanout_peer_result_ignored")
        .kv("req", rec_.id)
        .kv("uuid", result.uuid.empty() ? std::string("-") : result.uuid);
  }

  VmResult timed_out(const VmRecord& vm) const {
    VmResult r = refused_result(
        vm.name, vm.uuid,
        Refusal{504, fmt::format("vm {} did not answer within {} ms (fanout.vm_timeout_ms)",
                                 vm.name, config_.vm_timeout.count())});
    r.vm_class = VmClass::timed_out;
    return r;
  }

  // One VM: a channel as unicast takes one, the request, the response. A
  // kept channel that the agent had closed is replaced once, for a request
  // without a body, as unicast does (a body may have reached the agent).
  awaitable<VmResult> deliver(const FanoutMember& member, std::size_t slot) {
    const VmRecord& vm = member.vm;
    const std::uint16_t port = request_.route.port;
    const ChannelKey key = ChannelKey::of(vm, port);
    for (int attempt = 0;; ++attempt) {
      std::optional<Channel> channel;
      bool reused = false;
      if (ends_.pool && attempt == 0) channel = ends_.pool->take(key, executor_);
      if (channel) {
        reused = true;
      } else {
        auto grant = co_await ends_.budget.acquire(vm, key, [this, &vm] {
          return ends_.pool != nullptr && ends_.pool->evict_one(vm.uuid);
        });
        if (!grant) co_return refused_result(vm.name, vm.uuid, grant.error());
        if (grant->channel) {
          channel = std::move(*grant->channel);
          reused = true;
        } else {
          ChannelConnectTimer timer(ends_.metrics);
          auto opened = co_await open_channel(ends_.config.channel, vm, member.address, port,
                                              ends_.peer, rec_.id);
          timer.done(bool(opened));
          if (!opened) co_return refused_result(vm.name, vm.uuid, opened.error());
          channel = std::move(*opened);
          channel->ticket = std::move(grant->ticket);
        }
      }
      if (ends_.metrics) ends_.metrics->channel_used(reused);
      VmExchange outcome;
      {
        const InFlight in_flight(in_flight_[slot], channel->stream);
        const ChannelWatch watch(ends_.live, channel->key, channel->stream);
        outcome = co_await exchange(*channel, vm);
        if (watch.revoked()) {
          outcome.result = refused_result(vm.name, vm.uuid, Refusal{503, watch.why()});
          outcome.result.vm_class = VmClass::not_running;
          outcome.channel_reusable = false;
        }
      }
      if (outcome.channel_failed && reused && !had_body_ && attempt == 0 && !stopped_) continue;
      if (outcome.channel_reusable) give_back(std::move(*channel));
      co_return std::move(outcome.result);
    }
  }

  awaitable<VmExchange> exchange(Channel& channel, const VmRecord& vm) {
    VmExchange out;
    const std::string_view b = body();
    const std::array<asio::const_buffer, 2> message{asio::buffer(agent_head_),
                                                    asio::buffer(b.data(), b.size())};
    auto [wec, written] = co_await asio::async_write(channel.stream, message, use_tuple);
    if (wec) {
      out.channel_failed = true;
      out.result = refused_result(
          vm.name, vm.uuid,
          Refusal{502, fmt::format("channel to vm {} failed: {}", vm.name, wec.message())});
      co_return out;
    }
    for (;;) {
      http::response_parser<http::string_body> parser;
      parser.header_limit(ends_.config.limits.header_bytes);
      parser.body_limit(config_.max_response);
      if (is_head_) parser.skip(true);
      const std::size_t buffered = channel.buffer.size();
      auto [ec, n] = co_await http::async_read(channel.stream, channel.buffer, parser, use_tuple);
      if (ec == http::error::body_limit) {
        VmResult r = refused_result(
            vm.name, vm.uuid,
            Refusal{502, fmt::format("response of vm {} exceeds fanout.max_response ({} bytes)",
                                     vm.name, config_.max_response)});
        r.vm_class = VmClass::too_large;
        if (parser.is_header_done()) r.status = parser.get().result_int();
        out.result = std::move(r);
        co_return out;
      }
      if (ec) {
        out.channel_failed = n == 0 && buffered == 0 && !parser.got_some();
        std::string why = stopped_ ? "the client went away"
                                   : fmt::format(
                                         "agent on vm {} port {} closed the connection before "
                                         "answering whole ({})",
                                         vm.name, request_.route.port, ec.message());
        out.result = refused_result(vm.name, vm.uuid, Refusal{502, std::move(why)});
        co_return out;
      }
      auto& res = parser.get();
      const unsigned code = res.result_int();
      if (code == 101) {
        out.result = refused_result(
            vm.name, vm.uuid,
            Refusal{502, "agent switched protocols; a fan-out cannot carry an upgrade"});
        co_return out;
      }
      if (code >= 100 && code < 200) continue;  // interim: the final response follows
      out.channel_reusable = res.keep_alive() && !parser.need_eof();
      rewrite_response(res);
      AgentResponse response;
      response.status = code;
      response.reason = std::string(res.reason());
      for (const auto& f : res) {
        // Re-framed by Content-Length in the part.
        if (f.name() == http::field::content_length || f.name() == http::field::transfer_encoding)
          continue;
        response.fields.emplace_back(std::string(f.name_string()), std::string(f.value()));
      }
      response.body = std::move(res.body());
      out.result = agent_result(vm.name, vm.uuid, std::move(response));
      co_return out;
    }
  }

  // As the unicast path does: a waiting request of the VM comes first, then the pool.
  void give_back(Channel channel) {
    if (channel.buffer.size() != 0 || channel.ticket.is_private()) return;
    channel.buffer.shrink_to_fit();
    if (ends_.budget.hand_over(channel)) return;
    if (ends_.pool) ends_.pool->put(std::move(channel));
  }

  const FanoutEnds& ends_;
  const FanoutRequest& request_;
  const FanoutPlan& plan_;
  const FanoutConfig& config_;
  RequestRecord& rec_;
  asio::any_io_executor executor_;

  unsigned version_ = 11;
  bool keep_alive_ = false;
  bool ndjson_ = false;
  bool is_head_ = false;
  bool had_body_ = false;
  // The client's request, body included: the one copy every VM's write reads.
  std::optional<http::request<http::string_body>> message_;
  std::string agent_head_;
  std::string boundary_;

  clock::time_point start_ = clock::now();
  FanoutSummary summary_;
  std::deque<VmResult> ready_;    // results not yet written to the client
  std::size_t max_ready_ = 0;     // workers wait while this many are
  std::size_t next_ = 0;          // the next member a worker takes
  std::size_t workers_left_ = 0;  // spawned and not yet ended
  std::vector<Stream*> in_flight_;
  std::vector<bool> reported_;  // by member: its result was pushed
  bool client_ok_ = true;
  bool stopped_ = false;
  asio::steady_timer wake_;  // the writer waits here for a result or the last worker
  asio::steady_timer room_;  // workers wait here while too many results wait
};

}  // namespace

awaitable<bool> run_fanout(FanoutEnds ends, FanoutRequest request, RequestRecord& record) {
  Fanout fanout(ends, request, record);
  co_return co_await fanout.run();
}

}  // namespace vmgate::hostd
