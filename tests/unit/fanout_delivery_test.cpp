// run_fanout(): one request to several VMs, each a fake guestd on a unix
// socket that answers the real preamble and then plays its agent (answers,
// answers late, never answers, is not there), and the client the far end of
// a socket pair reading the chunked multipart or NDJSON stream.
#include "hostd/fanout/fanout_delivery.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <sstream>

#include <doctest/doctest.h>

#include <fmt/format.h>

#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "common/log.hpp"
#include "common/transport.hpp"

using namespace std::chrono_literals;
using namespace vmgate;
using namespace vmgate::hostd;
namespace http = boost::beast::http;
using json = nlohmann::json;

namespace {

enum class Agent { answers, answers_late, never_answers, fails, absent };

struct FakeVm {
  std::string name;
  Agent agent = Agent::answers;
};

// What the fake guestds saw.
struct Seen {
  std::map<std::string, std::string> bodies;  // by VM: the request body its agent got
  std::map<std::string, std::string> heads;   // by VM: the request head
  int in_flight = 0;
  int most_in_flight = 0;
};

// Reads until the peer closes.
awaitable<std::string> read_all(Stream& s) {
  std::string got;
  co_await asio::async_read(s, asio::dynamic_buffer(got), use_tuple);
  co_return got;
}

// One guestd session: the preamble and its answer, then one HTTP exchange.
awaitable<void> guestd_session(Stream s, FakeVm vm, Seen& seen) {
  ++seen.in_flight;
  seen.most_in_flight = std::max(seen.most_in_flight, seen.in_flight);
  std::string in;
  auto [ec, n] =
      co_await asio::async_read_until(s, asio::dynamic_buffer(in), "\r\n\r\n", use_tuple);
  if (!ec) {
    in.erase(0, n);
    static const std::string ok = "VMGATE/1 200 OK\r\n\r\n";
    co_await asio::async_write(s, asio::buffer(ok), use_tuple);
    boost::beast::flat_buffer buffer;
    buffer.commit(asio::buffer_copy(buffer.prepare(in.size()), asio::buffer(in)));
    http::request<http::string_body> req;
    auto [rec, rn] = co_await http::async_read(s, buffer, req, use_tuple);
    if (!rec) {
      seen.bodies[vm.name] = req.body();
      std::ostringstream head;
      head << req.base();
      seen.heads[vm.name] = head.str();
      asio::steady_timer wait(s.get_executor());
      if (vm.agent == Agent::answers_late) wait.expires_after(300ms);
      if (vm.agent == Agent::never_answers) wait.expires_after(60s);
      if (vm.agent != Agent::answers) co_await wait.async_wait(use_tuple);
      http::response<http::string_body> res{
          vm.agent == Agent::fails ? http::status::internal_server_error : http::status::ok, 11};
      res.set(http::field::content_type, "text/plain");
      res.body() = "hello from " + vm.name + "\n";
      res.prepare_payload();
      co_await http::async_write(s, res, use_tuple);
    }
  }
  --seen.in_flight;
}

awaitable<void> fake_guestd(Acceptor& acceptor, FakeVm vm, Seen& seen) {
  for (;;) {
    auto [ec, s] = co_await acceptor.async_accept(use_tuple);
    if (ec) co_return;
    asio::co_spawn(acceptor.get_executor(), guestd_session(std::move(s), vm, seen), asio::detached);
  }
}

VmRecord record_of(const FakeVm& vm, std::uint32_t cid) {
  VmRecord r;
  r.name = vm.name;
  r.uuid = fmt::format("00000000-0000-0000-0000-{:012}", cid);
  r.cid = cid;
  r.state = VmState::running;
  return r;
}

// The chunked body, dechunked (RFC 9112 §7.1), and whether the last chunk came.
std::pair<std::string, bool> dechunk(std::string_view in) {
  std::string out;
  while (!in.empty()) {
    const auto line_end = in.find("\r\n");
    if (line_end == std::string_view::npos) break;
    const std::size_t size = std::stoul(std::string(in.substr(0, line_end)), nullptr, 16);
    if (size == 0) return {out, true};
    out += in.substr(line_end + 2, size);
    in.remove_prefix(line_end + 2 + size + 2);
  }
  return {out, false};
}

struct Outcome {
  std::string head;  // the response head the client got
  std::string body;  // dechunked
  bool complete = false;
  bool keep_alive = false;
  RequestRecord::clock::duration took{};
  unsigned status = 0;
  std::uint32_t vms = 0;
  std::uint32_t failed = 0;
};

struct Lab {
  std::vector<FakeVm> vms;
  HostdConfig config;
  Seen seen;
  std::string dir;
  const PreparedFanout* prepared = nullptr;  // another host's message: its head and body

  Lab() {
    char pattern[] = "/tmp/vmgate-fanout-XXXXXX";
    dir = ::mkdtemp(pattern);
    config.channel.transport_template = "unix:" + dir + "/{name}.sock";
    config.fanout.vm_timeout = 1000ms;
    // A guestd that is not there is tried again until the connect timeout
    // (hostd/channel): well inside the VM's own, so that it is unreachable,
    // not timed out.
    config.channel.connect_timeout = 300ms;
  }
  ~Lab() { std::filesystem::remove_all(dir); }

  Outcome run(const std::string& request) {
    log::set_min_level(log::Level::error);
    asio::io_context io;
    std::vector<std::unique_ptr<Acceptor>> acceptors;
    std::vector<VmRecord> records;
    for (std::size_t i = 0; i < vms.size(); ++i) {
      records.push_back(record_of(vms[i], static_cast<std::uint32_t>(3 + i)));
      if (vms[i].agent == Agent::absent) continue;
      error_code ec;
      auto address = transport::parse("unix:" + dir + "/" + vms[i].name + ".sock");
      REQUIRE(address.has_value());
      acceptors.push_back(
          std::make_unique<Acceptor>(transport::listen(io.get_executor(), *address, ec)));
      REQUIRE_FALSE(ec);
      asio::co_spawn(io, fake_guestd(*acceptors.back(), vms[i], seen), asio::detached);
    }
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds) == 0);
    const asio::generic::stream_protocol unix_stream(AF_UNIX, 0);
    ClientStream client(Stream(io, unix_stream, fds[0]));
    Stream client_peer(io, unix_stream, fds[1]);
    ChannelBudget budget(config.channel);
    Outcome out;
    std::string saw;
    asio::co_spawn(
        io,
        [&]() -> awaitable<void> {
          co_await asio::async_write(client_peer, asio::buffer(request), use_tuple);
          saw = co_await read_all(client_peer);
          io.stop();  // what the fake agents still wait on is of no interest
        },
        asio::detached);
    asio::co_spawn(
        io,
        [&]() -> awaitable<void> {
          boost::beast::flat_buffer buffer;
          http::request_parser<http::empty_body> head;
          co_await http::async_read_header(client, buffer, head, use_tuple);
          auto route =
              route_request(head.get(), RouteOptions{.vm_header = "X-VM-Id", .guest_port = 5986});
          REQUIRE(route.has_value());
          const FanoutPlan plan =
              plan_fanout(records, route->target, Identity{Identity::Kind::trusted_listener, "t"},
                          5986, AccessPolicy(), config.channel);
          Deadline deadline(io.get_executor());
          {
            RequestRecord record;
            const FanoutEnds ends{.client = client,
                                  .client_buffer = buffer,
                                  .deadline = deadline,
                                  .config = config,
                                  .budget = budget,
                                  .peer = "test"};
            const auto start = RequestRecord::clock::now();
            out.keep_alive =
                co_await run_fanout(ends, FanoutRequest{head, *route, plan, prepared}, record);
            out.took = RequestRecord::clock::now() - start;
            out.status = record.status;
            out.vms = record.fanout_vms;
            out.failed = record.fanout_failed;
          }
          error_code ignored;
          client.close(ignored);
          for (auto& a : acceptors)
            a->close(ignored);
        },
        asio::detached);
    io.run_for(20s);
    log::set_min_level(log::Level::info);
    const auto split = saw.find("\r\n\r\n");
    REQUIRE(split != std::string::npos);
    out.head = saw.substr(0, split + 4);
    std::tie(out.body, out.complete) = dechunk(std::string_view(saw).substr(split + 4));
    return out;
  }
};

std::string boundary_of(const std::string& head) {
  const auto at = head.find("boundary=");
  REQUIRE(at != std::string::npos);
  return head.substr(at + 9, head.find("\r\n", at) - at - 9);
}

// Each part's headers (X-VM-Id, X-VM-Class...) in the order the parts came.
std::vector<std::map<std::string, std::string>> parts_of(const std::string& body,
                                                         const std::string& boundary) {
  std::vector<std::map<std::string, std::string>> parts;
  const std::string delimiter = "--" + boundary + "\r\n";
  for (auto pos = body.find(delimiter); pos != std::string::npos;
       pos = body.find(delimiter, pos + 1)) {
    std::map<std::string, std::string> headers;
    std::size_t line = pos + delimiter.size();
    for (;;) {
      const std::size_t end = body.find("\r\n", line);
      if (end == line) break;
      const std::string field = body.substr(line, end - line);
      const auto colon = field.find(": ");
      headers[field.substr(0, colon)] = field.substr(colon + 2);
      line = end + 2;
    }
    headers["content"] = body.substr(line + 2, body.find("\r\n--" + boundary, line) - line - 2);
    parts.push_back(std::move(headers));
  }
  return parts;
}

const std::string body_text(3000, 'b');

std::string post(const std::string& target, const std::string& extra = "") {
  return "POST /sha256 HTTP/1.1\r\nHost: h\r\nX-VM-Id: " + target + "\r\n" + extra +
         "Content-Length: " + std::to_string(body_text.size()) + "\r\n\r\n" + body_text;
}

}  // namespace

TEST_CASE("a fan-out streams one part per VM, a dead or silent one in its class, then a summary") {
  Lab lab;
  lab.vms = {{"web1"},
             {"web2", Agent::fails},
             {"web3", Agent::never_answers},
             {"web4", Agent::absent},
             {"web5"}};
  const Outcome out = lab.run(post("web1,web2,web3,web4,web5"));
  CHECK(out.head.starts_with("HTTP/1.1 200 OK\r\n"));
  CHECK(out.head.find("Transfer-Encoding: chunked\r\n") != std::string::npos);
  CHECK(out.head.find("X-VM-Count: 5\r\n") != std::string::npos);
  CHECK(out.complete);
  CHECK(out.keep_alive);
  const auto parts = parts_of(out.body, boundary_of(out.head));
  REQUIRE(parts.size() == 6);
  std::map<std::string, std::string> class_of;
  for (std::size_t i = 0; i + 1 < parts.size(); ++i)
    class_of[parts[i].at("X-VM-Id")] = parts[i].at("X-VM-Class");
  CHECK(class_of == std::map<std::string, std::string>{{"web1", "answered"},
                                                       {"web2", "agent_error"},
                                                       {"web3", "timed_out"},
                                                       {"web4", "unreachable"},
                                                       {"web5", "answered"}});
  // The silent VM is the last: every other part came before its timeout.
  CHECK(parts[4].at("X-VM-Id") == "web3");
  CHECK(parts[4].at("X-VM-Status") == "504");
  for (const auto& part : parts)
    if (part.count("X-VM-Id") && part.at("X-VM-Id") == "web1")
      CHECK(part.at("content").find("\r\n\r\nhello from web1\n") != std::string::npos);
  const json summary = json::parse(parts[5].at("content"));
  CHECK(summary["vms"] == 5);
  CHECK(summary["answered"] == 2);
  CHECK(summary["classes"]["timed_out"]["vms"] == json({"web3"}));
  CHECK(summary["classes"]["unreachable"]["vms"] == json({"web4"}));
  CHECK(out.vms == 5);
  CHECK(out.failed == 3);
  // Every VM that answered the preamble got the whole body, once.
  CHECK(lab.seen.bodies.size() == 4);
  for (const auto& [name, body] : lab.seen.bodies)
    CHECK(body == body_text);
  // The routing header stays at hostd; the body is framed by its length.
  CHECK(lab.seen.heads["web1"].find("X-VM-Id") == std::string::npos);
  CHECK(lab.seen.heads["web1"].find("Content-Length: 3000") != std::string::npos);
}

TEST_CASE("a slow VM's part comes after the fast ones', and holds nobody up") {
  Lab lab;
  lab.vms = {{"slow", Agent::answers_late}, {"fast1"}, {"fast2"}};
  const Outcome out = lab.run(post("slow,fast1,fast2"));
  const auto parts = parts_of(out.body, boundary_of(out.head));
  REQUIRE(parts.size() == 4);
  CHECK(parts[2].at("X-VM-Id") == "slow");
  CHECK(parts[2].at("X-VM-Class") == "answered");
}

TEST_CASE("no more VMs are in flight at once than fanout.max_parallel") {
  Lab lab;
  lab.config.fanout.max_parallel = 2;
  for (int i = 0; i < 8; ++i)
    lab.vms.push_back({fmt::format("vm{}", i), Agent::answers_late});
  std::string list;
  for (const auto& vm : lab.vms)
    list += (list.empty() ? "" : ",") + vm.name;
  const Outcome out = lab.run(post(list));
  CHECK(out.vms == 8);
  CHECK(out.failed == 0);
  CHECK(lab.seen.most_in_flight == 2);
  // Four rounds of two VMs at 300 ms each.
  CHECK(out.took >= 1200ms);
}

TEST_CASE("a fan-out body over fanout.max_body is refused 413 before any VM is tried") {
  Lab lab;
  lab.config.fanout.max_body = 1000;
  lab.vms = {{"web1"}, {"web2"}};
  const Outcome out = lab.run(post("web1,web2"));
  CHECK(out.head.starts_with("HTTP/1.1 413 "));
  CHECK(out.status == 413);
  CHECK(lab.seen.bodies.empty());
  CHECK_FALSE(out.keep_alive);
}

TEST_CASE("a chunked body over fanout.max_body is refused 413 as it is read") {
  Lab lab;
  lab.config.fanout.max_body = 1000;
  lab.vms = {{"web1"}, {"web2"}};
  const std::string chunk(600, 'c');
  const Outcome out = lab.run(
      "POST /sha256 HTTP/1.1\r\nHost: h\r\nX-VM-Id: web1,web2\r\nTransfer-Encoding: "
      "chunked\r\n\r\n258\r\n" +
      chunk + "\r\n258\r\n" + chunk + "\r\n0\r\n\r\n");
  CHECK(out.head.starts_with("HTTP/1.1 413 "));
  CHECK(lab.seen.bodies.empty());
}

TEST_CASE("a response over fanout.max_response is that VM's too_large part, the rest go on") {
  Lab lab;
  lab.config.fanout.max_response = 5;
  lab.vms = {{"web1"}, {"web2"}};
  const Outcome out = lab.run(post("web1,web2"));
  const auto parts = parts_of(out.body, boundary_of(out.head));
  REQUIRE(parts.size() == 3);
  CHECK(parts[0].at("X-VM-Class") == "too_large");
  CHECK(parts[0].at("X-VM-Reason").find("fanout.max_response") != std::string::npos);
}

TEST_CASE("NDJSON gives one object per VM, then the summary's") {
  Lab lab;
  lab.vms = {{"web1"}, {"web2", Agent::absent}};
  const Outcome out = lab.run(post("web1,web2", "Accept: application/x-ndjson\r\n"));
  CHECK(out.head.find("Content-Type: application/x-ndjson\r\n") != std::string::npos);
  std::vector<json> lines;
  std::istringstream in(out.body);
  for (std::string line; std::getline(in, line);)
    lines.push_back(json::parse(line));
  REQUIRE(lines.size() == 3);
  std::map<std::string, std::string> class_of;
  for (std::size_t i = 0; i < 2; ++i)
    class_of[lines[i]["vm"]] = lines[i]["class"];
  CHECK(class_of["web1"] == "answered");
  CHECK(class_of["web2"] == "unreachable");
  CHECK(lines[2]["summary"] == true);
  CHECK(lines[2]["failed"] == 1);
}

TEST_CASE("another host's fan-out goes to each VM with the head and body it prepared, as NDJSON") {
  Lab lab;
  lab.vms = {{"web1"}, {"web2"}};
  // What the first host rewrote once for every agent; delivered as it is.
  const std::string agent_head =
      "POST /prepared HTTP/1.1\r\nHost: web\r\nX-Prepared: kvm1\r\nContent-Length: 5\r\n\r\n";
  const PreparedFanout prepared{.agent_head = agent_head, .body = "hello"};
  lab.prepared = &prepared;
  // The head the harness routes by (the peer message's, standing in).
  const Outcome out = lab.run("POST /x HTTP/1.1\r\nHost: h\r\nX-VM-Id: web1,web2\r\n\r\n");
  CHECK(out.head.find("Content-Type: application/x-ndjson\r\n") != std::string::npos);
  CHECK(out.head.find("Connection: close\r\n") != std::string::npos);
  CHECK(out.complete);
  CHECK_FALSE(out.keep_alive);
  std::istringstream lines(out.body);
  std::vector<json> objects;
  for (std::string line; std::getline(lines, line);)
    objects.push_back(json::parse(line));
  REQUIRE(objects.size() == 3);
  CHECK(objects[2]["summary"] == true);
  CHECK(objects[2]["answered"] == 2);
  for (const char* vm : {"web1", "web2"}) {
    CHECK(lab.seen.heads[vm].starts_with("POST /prepared HTTP/1.1\r\n"));
    CHECK(lab.seen.heads[vm].find("X-Prepared: kvm1\r\n") != std::string::npos);
    CHECK(lab.seen.heads[vm].find("Forwarded") == std::string::npos);  // not rewritten again
    CHECK(lab.seen.bodies[vm] == "hello");
  }
}
