#include "tools/vmgatectl/send.hpp"

#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <optional>
#include <sstream>

#include <fmt/format.h>
#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "tools/vmgatectl/send_report.hpp"

#ifndef VMGATE_VERSION
#define VMGATE_VERSION "0.0.0"
#endif

namespace vmgate::ctl {

const char* const send_usage_text =
    "usage: vmgatectl send TARGET [--host HOST] [--port N] [--path PATH] [--method METHOD]\n"
    "                      [--data @FILE|TEXT] [--header 'NAME: VALUE']... [--json|--ndjson]\n"
    "                      [--timeout SECONDS]\n"
    "\n"
    "Sends one request through a hostd listener to every VM TARGET names (a VM, group:NAME,\n"
    "net:NETWORK, a range web[01-20], a comma list, !NAME to exclude), as the X-VM-Id header\n"
    "form. On a terminal it shows done / failed / pending as the answers come, then the\n"
    "results collapsed: VMs that answered alike once, their names as a range\n"
    "(web[01-17,19] (18): 200 ...), the others one by one, and the summary.\n"
    "\n"
    "  --host HOST            hostd's listener address (default $VMGATE_HOST, else 127.0.0.1)\n"
    "  --port N               its port (default 5986; the listener's guest port is the agent's)\n"
    "  --path PATH            the request-target the agents see (default /)\n"
    "  --method METHOD        default POST with --data, else GET\n"
    "  --data @FILE|TEXT      the request body: a file's bytes, or TEXT itself\n"
    "  --header 'NAME: VALUE' a request header (repeatable), e.g. Proxy-Authorization\n"
    "  --json                 one JSON document: {\"vms\": [...], \"summary\": {...}}\n"
    "  --ndjson               hostd's stream as it comes: one object per VM, then the summary\n"
    "  --timeout SECONDS      give up after this long (default 300)\n"
    "\n"
    "exit status: 0 every VM answered below 400; 1 some VM did not (refused, unreachable,\n"
    "timed out, not running, agent status >= 400, response too large), or hostd refused the\n"
    "request; 2 usage error or hostd unreachable; 3 the target names no VM\n";

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using json = nlohmann::json;

struct SendOptions {
  std::string target;
  std::string host;
  std::string port = "5986";
  std::string path = "/";
  std::string method;
  std::optional<std::string> data;
  std::vector<std::pair<std::string, std::string>> headers;
  bool json_out = false;
  bool ndjson_out = false;
  long timeout_s = 300;
};

struct SendUsage : std::runtime_error {
  using std::runtime_error::runtime_error;
};

SendOptions parse(const std::vector<std::string>& args) {
  SendOptions o;
  const char* env_host = std::getenv("VMGATE_HOST");
  o.host = env_host && *env_host ? env_host : "127.0.0.1";
  auto value = [&](std::size_t& i) -> const std::string& {
    if (i + 1 >= args.size()) throw SendUsage(args[i] + " needs a value");
    return args[++i];
  };
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--host") {
      o.host = value(i);
    } else if (a == "--port") {
      o.port = value(i);
      if (o.port.empty() || o.port.find_first_not_of("0123456789") != std::string::npos ||
          std::stoul(o.port) == 0 || std::stoul(o.port) > 65535)
        throw SendUsage("--port takes 1..65535");
    } else if (a == "--path") {
      o.path = value(i);
      if (!o.path.starts_with('/')) throw SendUsage("--path starts with '/'");
    } else if (a == "--method") {
      o.method = value(i);
    } else if (a == "--data") {
      const std::string& d = value(i);
      if (d.starts_with('@')) {
        std::ifstream in(d.substr(1), std::ios::binary);
        if (!in) throw SendUsage(fmt::format("--data {}: cannot read the file", d));
        o.data = std::string(std::istreambuf_iterator<char>(in), {});
      } else {
        o.data = d;
      }
    } else if (a == "--header") {
      const std::string& h = value(i);
      const auto colon = h.find(':');
      if (colon == std::string::npos || colon == 0)
        throw SendUsage(fmt::format("--header '{}': NAME: VALUE", h));
      std::string v = h.substr(colon + 1);
      while (!v.empty() && v.front() == ' ')
        v.erase(v.begin());
      o.headers.emplace_back(h.substr(0, colon), v);
    } else if (a == "--json") {
      o.json_out = true;
    } else if (a == "--ndjson") {
      o.ndjson_out = true;
    } else if (a == "--timeout") {
      char* end = nullptr;
      o.timeout_s = std::strtol(value(i).c_str(), &end, 10);
      if (*end != '\0' || o.timeout_s < 1 || o.timeout_s > 86400)
        throw SendUsage("--timeout takes seconds, 1..86400");
    } else if (a.starts_with("-")) {
      throw SendUsage(fmt::format("unknown option '{}'", a));
    } else if (o.target.empty()) {
      o.target = a;
    } else {
      throw SendUsage(fmt::format("one TARGET only ('{}' and '{}')", o.target, a));
    }
  }
  if (o.target.empty()) throw SendUsage("a TARGET is needed");
  if (o.json_out && o.ndjson_out) throw SendUsage("--json or --ndjson, not both");
  if (o.method.empty()) o.method = o.data ? "POST" : "GET";
  return o;
}

// Beast's stream timeouts apply to asynchronous operations only: each step
// is started asynchronously and run to completion here.
template <class Start>
boost::system::error_code complete(asio::io_context& io, Start start) {
  boost::system::error_code result;
  start([&result](boost::system::error_code ec, auto&&...) { result = ec; });
  io.restart();
  io.run();
  return result;
}

class Progress {
 public:
  Progress() : shown_(::isatty(STDOUT_FILENO) == 1) {}
  void show(const std::string& line) {
    if (!shown_) return;
    std::cout << "\r\033[K" << line << std::flush;
  }
  void clear() {
    if (shown_) std::cout << "\r\033[K" << std::flush;
  }

 private:
  bool shown_;
};

}  // namespace

int send_main(const std::vector<std::string>& args) {
  SendOptions o;
  try {
    o = parse(args);
  } catch (const SendUsage& e) {
    std::cerr << "vmgatectl send: " << e.what() << "\n" << send_usage_text;
    return send_usage;
  }
  const auto timeout = std::chrono::seconds(o.timeout_s);
  const std::string where = fmt::format("hostd at {}:{}", o.host, o.port);
  asio::io_context io;
  asio::ip::tcp::resolver resolver(io);
  beast::tcp_stream stream(io);
  boost::system::error_code ec;
  auto endpoints = resolver.resolve(o.host, o.port, ec);
  if (!ec) {
    stream.expires_after(timeout);
    ec = complete(io, [&](auto done) { stream.async_connect(endpoints, done); });
  }
  if (ec) {
    std::cerr << fmt::format(
        "vmgatectl send: cannot reach {} ({}): is a hostd listener there? "
        "(--host, --port)\n",
        where, ec.message());
    return send_usage;
  }

  http::request<http::string_body> req{http::string_to_verb(o.method), o.path, 11};
  if (req.method() == http::verb::unknown) req.method_string(o.method);
  req.set(http::field::host, o.host);
  req.set(http::field::user_agent, "vmgatectl/" VMGATE_VERSION);
  req.set("X-VM-Id", o.target);
  req.set(http::field::accept, "application/x-ndjson");
  for (const auto& [name, value] : o.headers)
    req.set(name, value);
  if (o.data) req.body() = *o.data;
  req.keep_alive(false);
  req.prepare_payload();
  stream.expires_after(timeout);
  ec = complete(io, [&](auto done) { http::async_write(stream, req, done); });
  if (ec) {
    std::cerr << fmt::format("vmgatectl send: {} closed the connection ({})\n", where,
                             ec.message());
    return send_usage;
  }

  beast::flat_buffer buffer;
  http::response_parser<http::buffer_body> parser;
  parser.body_limit(boost::none);
  ec = complete(io, [&](auto done) { http::async_read_header(stream, buffer, parser, done); });
  if (ec) {
    std::cerr << fmt::format("vmgatectl send: no answer from {} ({})\n", where,
                             ec == beast::error::timeout ? "timed out" : ec.message());
    return send_usage;
  }
  const auto& head = parser.get();
  const bool streamed =
      head.result_int() == 200 &&
      std::string_view(head[http::field::content_type]).starts_with("application/x-ndjson");
  std::size_t expected = 0;
  if (auto count = head["X-VM-Count"]; !count.empty())
    expected = std::strtoul(std::string(count).c_str(), nullptr, 10);

  SendReport report(expected);
  Progress progress;
  std::string pending;  // bytes of a line not yet ended
  std::string whole;    // a refusal's body
  std::array<char, 64 * 1024> chunk;
  while (!parser.is_done()) {
    parser.get().body().data = chunk.data();
    parser.get().body().size = chunk.size();
    ec = complete(io, [&](auto done) { http::async_read(stream, buffer, parser, done); });
    if (ec == http::error::need_buffer) ec = {};
    const std::size_t got = chunk.size() - parser.get().body().size;
    if (!streamed) {
      whole.append(chunk.data(), got);
    } else {
      pending.append(chunk.data(), got);
      for (auto nl = pending.find('\n'); nl != std::string::npos; nl = pending.find('\n')) {
        const std::string line = pending.substr(0, nl);
        pending.erase(0, nl + 1);
        if (o.ndjson_out) std::cout << line << "\n" << std::flush;
        json parsed = json::parse(line, nullptr, false);
        if (!parsed.is_object()) continue;
        report.add(parsed);
        progress.show(report.progress());
      }
    }
    if (ec) break;
  }
  progress.clear();
  if (!streamed) {
    while (!whole.empty() && whole.back() == '\n')
      whole.pop_back();
    std::cerr << fmt::format("vmgatectl send: {} answered {}: {}\n", where, head.result_int(),
                             whole);
    if (head.result_int() == 404) return send_none_matched;
    if (head.result_int() == 400) return send_usage;
    return send_some_failed;
  }
  if (ec && !report.has_summary()) {
    std::cerr << fmt::format("vmgatectl send: the stream from {} broke ({})\n", where,
                             ec == beast::error::timeout ? "timed out" : ec.message());
  }
  if (o.json_out) {
    std::cout << report.document().dump(2, ' ', false, json::error_handler_t::replace) << "\n";
  } else if (!o.ndjson_out) {
    std::cout << report.collapsed();
  }
  return report.exit_status();
}

}  // namespace vmgate::ctl
