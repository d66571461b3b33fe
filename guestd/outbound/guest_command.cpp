#include "guestd/outbound/guest_command.hpp"

#include <cstdio>
#include <fstream>
#include <iterator>
#include <optional>

#include <fmt/format.h>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "common/config_reader.hpp"
#include "common/log.hpp"
#include "common/preamble.hpp"
#include "guestd/outbound/host_channel.hpp"

namespace vmgate::guestd {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;

struct CommandArgs {
  std::string verb;
  std::string argument;  // TARGET or GROUP
  std::string config_path = default_config_path;
  std::uint16_t port = 80;
  std::optional<std::string> method;
  std::string path = "/";
  std::optional<std::string> data;
  std::vector<std::pair<std::string, std::string>> headers;
};

// Returns the reason when the arguments are unusable.
std::optional<std::string> parse(const std::vector<std::string>& args, CommandArgs& out) {
  out.verb = args.at(0);
  for (std::size_t i = 1; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&]() -> std::optional<std::string> {
      if (i + 1 >= args.size()) return std::nullopt;
      return args[++i];
    };
    if (a == "--config" || a == "-c") {
      auto v = value();
      if (!v) return fmt::format("{} needs a file name", a);
      out.config_path = *v;
    } else if (out.verb == "send" && a == "--port") {
      auto v = value();
      unsigned port = 0;
      if (!v || std::sscanf(v->c_str(), "%u", &port) != 1 || port < 1 || port > 65535 ||
          std::to_string(port) != *v)
        return "--port needs a port 1..65535";
      out.port = static_cast<std::uint16_t>(port);
    } else if (out.verb == "send" && a == "--method") {
      auto v = value();
      if (!v || http::string_to_verb(*v) == http::verb::unknown)
        return "--method needs an HTTP method (GET, POST, PUT, ...)";
      out.method = *v;
    } else if (out.verb == "send" && a == "--path") {
      auto v = value();
      if (!v || !v->starts_with('/')) return "--path needs a path starting with '/'";
      out.path = *v;
    } else if (out.verb == "send" && a == "--data") {
      auto v = value();
      if (!v) return "--data needs TEXT or @FILE";
      if (v->starts_with('@')) {
        std::ifstream file(v->substr(1), std::ios::binary);
        if (!file) return fmt::format("cannot read {}", v->substr(1));
        out.data = std::string(std::istreambuf_iterator<char>(file), {});
      } else {
        out.data = *v;
      }
    } else if (out.verb == "send" && a == "--header") {
      auto v = value();
      const auto colon = v ? v->find(':') : std::string::npos;
      if (!v || colon == std::string::npos || colon == 0) return "--header needs 'Name: value'";
      std::string field = v->substr(colon + 1);
      field.erase(0, field.find_first_not_of(' '));
      out.headers.emplace_back(v->substr(0, colon), field);
    } else if (a.starts_with("-")) {
      return fmt::format("unknown option '{}' for {}", a, out.verb);
    } else if (out.argument.empty()) {
      out.argument = a;
    } else {
      return fmt::format("unexpected argument '{}'", a);
    }
  }
  if (out.argument.empty())
    return out.verb == "send" ? "send needs a TARGET (host:NAME or a VM)"
                              : fmt::format("{} needs a GROUP", out.verb);
  return std::nullopt;
}

struct Outcome {
  int status = 1;
  std::string out;  // to stdout
  std::string err;  // to stderr
};

awaitable<Outcome> membership(const OutboundConfig& config, const CommandArgs& args) {
  preamble::Request request{
      .verb = args.verb == "join" ? preamble::Verb::join : preamble::Verb::leave,
      .argument = args.argument};
  auto channel = co_await open_host_channel(config, request);
  if (!channel)
    co_return Outcome{
        1,
        {},
        fmt::format("vmgate-guestd: {} {}: refused ({} {}): {}\n", args.verb, args.argument,
                    channel.error().status, channel.error().token, channel.error().reason)};
  co_return Outcome{
      0, fmt::format("{} {}\n", args.verb == "join" ? "joined" : "left", args.argument), {}};
}

// A SEND naming many VMs is answered as a fan-out (X-VM-Count, a part or
// line per VM, a summary last): its status is 200 even when VMs failed, so
// a script learns of those from the summary. Returns {failed, vms}, or
// nothing when the body is not a fan-out's.
std::optional<std::pair<std::uint64_t, std::uint64_t>> fanout_failures(
    const http::response<http::string_body>& res) {
  if (res.find("X-VM-Count") == res.end()) return std::nullopt;
  const std::string_view body = res.body();
  const std::string_view type = res[http::field::content_type];
  std::string_view summary;
  if (type.starts_with("application/x-ndjson")) {
    std::string_view lines = body;
    while (lines.ends_with('\n'))
      lines.remove_suffix(1);
    const auto last = lines.rfind('\n');
    summary = last == std::string_view::npos ? lines : lines.substr(last + 1);
  } else if (auto at = type.find("boundary="); at != std::string_view::npos) {
    // RFC 2046 §5.1.1: the summary is the last part, before "--B--".
    const std::string close = fmt::format("\r\n--{}--", type.substr(at + 9));
    const auto end = body.rfind(close);
    if (end == std::string_view::npos) return std::nullopt;
    const auto start = body.rfind("\r\n\r\n", end);
    if (start == std::string_view::npos) return std::nullopt;
    summary = body.substr(start + 4, end - start - 4);
  } else {
    return std::nullopt;
  }
  auto json = nlohmann::json::parse(summary, nullptr, false);
  if (!json.is_object() || !json.value("summary", false)) return std::nullopt;
  return std::pair{json.value("failed", std::uint64_t{0}), json.value("vms", std::uint64_t{0})};
}

awaitable<Outcome> send(const OutboundConfig& config, const CommandArgs& args) {
  preamble::Request request{.verb = preamble::Verb::send, .argument = args.argument};
  request.fields.emplace_back("Port", std::to_string(args.port));
  request.fields.emplace_back("Form", "http");
  auto channel = co_await open_host_channel(config, request);
  if (!channel)
    co_return Outcome{
        1,
        {},
        fmt::format("vmgate-guestd: send {}: refused ({} {}): {}\n", args.argument,
                    channel.error().status, channel.error().token, channel.error().reason)};
  http::request<http::string_body> req;
  req.method_string(args.method.value_or(args.data ? "POST" : "GET"));
  req.target(args.path);
  req.version(11);
  const std::string_view target = args.argument;
  // A group, list or range is no authority (RFC 9110 §7.2): each agent of
  // such a target is asked as "localhost", where guestd reaches it.
  const std::string_view host = target.starts_with("host:") ? target.substr(5) : target;
  const bool names_one = host.find_first_of(":,[]!") == std::string_view::npos;
  req.set(http::field::host, names_one ? host : std::string_view("localhost"));
  req.set(http::field::user_agent, "vmgate-guestd");
  for (const auto& [name, value] : args.headers)
    req.set(name, value);
  if (args.data) req.body() = *args.data;
  req.keep_alive(false);
  req.prepare_payload();
  auto [wec, wn] = co_await http::async_write(channel->stream, req, use_tuple);
  if (wec)
    co_return Outcome{1,
                      {},
                      fmt::format("vmgate-guestd: send {}: hostd closed the channel: {}\n",
                                  args.argument, wec.message())};
  beast::flat_buffer buffer;
  buffer.commit(
      asio::buffer_copy(buffer.prepare(channel->leftover.size()), asio::buffer(channel->leftover)));
  http::response_parser<http::string_body> parser;
  parser.body_limit(boost::none);
  auto [rec, rn] = co_await http::async_read(channel->stream, buffer, parser, use_tuple);
  if (rec)
    co_return Outcome{1,
                      {},
                      fmt::format("vmgate-guestd: send {}: no complete response: {}\n",
                                  args.argument, rec.message())};
  const auto& res = parser.get();
  const unsigned status = res.result_int();
  if (status >= 400)
    co_return Outcome{1, res.body(),
                      fmt::format("vmgate-guestd: send {}: {} {}\n", args.argument, status,
                                  std::string_view(res.reason()))};
  if (auto failures = fanout_failures(res); failures && failures->first > 0)
    co_return Outcome{1, res.body(),
                      fmt::format("vmgate-guestd: send {}: {} of {} VMs did not answer below "
                                  "400 (the summary names them)\n",
                                  args.argument, failures->first, failures->second)};
  co_return Outcome{0, res.body(), {}};
}

}  // namespace

bool is_command(std::string_view word) {
  return word == "send" || word == "join" || word == "leave";
}

int run_command(const std::vector<std::string>& args) {
  CommandArgs parsed;
  if (auto problem = parse(args, parsed)) {
    fmt::print(stderr, "vmgate-guestd: {}\nusage:\n{}", *problem, command_usage);
    return 2;
  }
  GuestdConfig config;
  try {
    config = load_guestd_config(parsed.config_path);
  } catch (const config::ConfigError& e) {
    fmt::print(stderr, "vmgate-guestd: {}\n", e.what());
    return 1;
  }
  asio::io_context io(1);
  Outcome outcome;
  asio::co_spawn(
      io,
      [&]() -> awaitable<void> {
        // Not one ?: with a co_await in each arm: g++ 12 destroys its result twice.
        if (parsed.verb == "send")
          outcome = co_await send(config.outbound, parsed);
        else
          outcome = co_await membership(config.outbound, parsed);
      },
      [&](std::exception_ptr e) {
        if (e) outcome = Outcome{1, {}, fmt::format("vmgate-guestd: {}\n", log::describe(e))};
      });
  io.run();
  std::fwrite(outcome.out.data(), 1, outcome.out.size(), stdout);
  std::fflush(stdout);
  if (!outcome.err.empty()) fmt::print(stderr, "{}", outcome.err);
  return outcome.status;
}

}  // namespace vmgate::guestd
