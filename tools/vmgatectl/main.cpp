// vmgatectl: asks a running vmgate-hostd, through its admin API, which VMs
// it knows, what a target resolves to, and whether a channel to a VM works;
// and makes the proxy-credential tokens hostd's tokens file names.
//
//   vmgatectl [--admin URL] [--json] vms | groups | resolve TARGET
//             | check [--as IDENTITY] TARGET [PORT]
//   vmgatectl token new NAME | token hash
//   vmgatectl send TARGET [...]        (tools/vmgatectl/send.hpp)
//
// Exit codes: 0 ok; 1 the thing asked about failed (unknown VM, channel
// refused); 2 usage error, or the admin API could not be reached.
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "hostd/identity/token_secret.hpp"
#include "tools/vmgatectl/send.hpp"

#ifndef VMGATE_VERSION
#define VMGATE_VERSION "0.0.0"
#endif

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using json = nlohmann::json;

constexpr int exit_ok = 0;
constexpr int exit_failed = 1;
constexpr int exit_usage = 2;

constexpr std::string_view default_admin = "http://127.0.0.1:9090";

constexpr std::string_view usage =
    "usage: vmgatectl [--admin URL] [--json] [--timeout SECONDS] COMMAND\n"
    "\n"
    "commands:\n"
    "  vms                    list the VMs hostd knows: name, uuid, cid, state, channel transport\n"
    "  groups                 list every group: its members and where each membership comes\n"
    "                         from (config, libvirt metadata, guest join)\n"
    "  resolve TARGET         what hostd's directory answers for TARGET: a name or UUID, or\n"
    "                         group:NAME, net:NETWORK, web[01-05,09], lists with !ITEM; each VM\n"
    "                         with the rule that added it, and what was excluded\n"
    "  check TARGET [PORT]    open a channel to TARGET's guestd for PORT and report each hop\n"
    "                         (PORT defaults to hostd's first listener's guest port)\n"
    "  check host:NAME --as vm:VM\n"
    "                         whether VM may reach host service NAME ([host_services]) and\n"
    "                         the service accepts a connection, as VM's request is answered\n"
    "  token new NAME         make a proxy-credential token: prints the token, once, on stdout,\n"
    "                         and the line for hostd's tokens file on stderr\n"
    "  token hash             read a token from stdin and print its sha256: hash\n"
    "  send TARGET ...        one request through a hostd listener to every VM TARGET names,\n"
    "                         the answers collapsed (vmgatectl send --help; its own exit\n"
    "                         status: 0 all answered, 1 some failed, 3 none matched)\n"
    "\n"
    "options:\n"
    "  --as IDENTITY          check: as this client instead of the operator, and say which ACL\n"
    "                         rule decided: token:NAME, cert:NAME[,NAME...] (SANs, then CN),\n"
    "                         source:ADDRESS; for a host service, vm:NAME (the VM asking)\n"
    "  --admin URL            hostd's admin API: http://HOST:PORT or unix:/PATH (as in hostd's\n"
    "                         [admin] address; default $VMGATE_ADMIN, else http://127.0.0.1:9090)\n"
    "  --json                 print the API's JSON instead of a table\n"
    "  --timeout SECONDS      give up waiting for hostd after this long (default 30)\n"
    "  --version, --help\n"
    "\n"
    "exit status: 0 ok, 1 the VM or channel failed the check, 2 usage or connection error\n";

// A failure to talk to hostd at all (exit 2), as opposed to hostd's answer.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct AdminUrl {
  std::string text;       // as given, for messages
  std::string unix_path;  // unix:/PATH; then host and port are unused
  std::string host;       // without brackets
  std::string port;
  std::string prefix;  // a path prefix when behind a reverse proxy; no trailing '/'
};

AdminUrl parse_admin_url(std::string_view text) {
  AdminUrl url{std::string(text), "", "", "", ""};
  if (text.starts_with("unix:")) {
    url.unix_path = std::string(text.substr(5));
    if (url.unix_path.empty()) throw UsageError(fmt::format("--admin {}: no socket path", text));
    url.host = "localhost";
    return url;
  }
  std::string_view rest = text;
  if (rest.starts_with("http://")) {
    rest.remove_prefix(7);
  } else if (rest.find("://") != std::string_view::npos) {
    throw UsageError(fmt::format("--admin {}: only http:// URLs are supported", text));
  }
  auto slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  if (slash != std::string_view::npos) url.prefix = std::string(rest.substr(slash));
  while (!url.prefix.empty() && url.prefix.back() == '/')
    url.prefix.pop_back();
  if (authority.starts_with('[')) {
    auto close = authority.find(']');
    if (close == std::string_view::npos)
      throw UsageError(fmt::format("--admin {}: unterminated [IPv6] address", text));
    url.host = std::string(authority.substr(1, close - 1));
    authority.remove_prefix(close + 1);
    if (authority.starts_with(':')) url.port = std::string(authority.substr(1));
  } else {
    auto colon = authority.rfind(':');
    url.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) url.port = std::string(authority.substr(colon + 1));
  }
  if (url.port.empty()) url.port = "80";
  if (url.host.empty()) throw UsageError(fmt::format("--admin {}: no host", text));
  return url;
}

std::string percent_encode(std::string_view in) {
  std::string out;
  for (unsigned char c : in) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

struct Answer {
  unsigned status = 0;
  json body;
};

UsageError unreachable(const AdminUrl& url, std::string_view what,
                       const boost::system::error_code& ec) {
  return UsageError(fmt::format(
      "cannot reach hostd's admin API at {} ({}: {}).\n"
      "Is vmgate-hostd running? Check the [admin] section of its config (address, enabled), "
      "or point --admin at it.",
      url.text, what, ec == beast::error::timeout ? "timed out" : ec.message()));
}

// Beast's stream timeouts apply to asynchronous operations only: each step
// is started asynchronously and run to completion here, one at a time.
template <class Start>
boost::system::error_code complete(asio::io_context& io, Start start) {
  boost::system::error_code result;
  start([&result](boost::system::error_code ec, auto&&...) { result = ec; });
  io.restart();
  io.run();
  return result;
}

template <class Stream>
Answer exchange(asio::io_context& io, Stream& stream, const AdminUrl& url, const std::string& path,
                std::chrono::seconds timeout);

// One GET to the admin API; anything but a JSON answer from hostd is a UsageError.
Answer get(const AdminUrl& url, const std::string& path, std::chrono::seconds timeout) {
  asio::io_context io;
  boost::system::error_code ec;
  if (!url.unix_path.empty()) {
    beast::basic_stream<asio::local::stream_protocol> stream(io);
    stream.expires_after(timeout);
    ec = complete(io, [&](auto done) {
      stream.async_connect(asio::local::stream_protocol::endpoint(url.unix_path), done);
    });
    if (ec) throw unreachable(url, "connect", ec);
    return exchange(io, stream, url, path, timeout);
  }
  asio::ip::tcp::resolver resolver(io);
  beast::tcp_stream stream(io);
  auto endpoints = resolver.resolve(url.host, url.port, ec);
  if (ec) throw unreachable(url, "resolve", ec);
  stream.expires_after(timeout);
  ec = complete(io, [&](auto done) { stream.async_connect(endpoints, done); });
  if (ec) throw unreachable(url, "connect", ec);
  return exchange(io, stream, url, path, timeout);
}

template <class Stream>
Answer exchange(asio::io_context& io, Stream& stream, const AdminUrl& url, const std::string& path,
                std::chrono::seconds timeout) {
  const std::string where = url.text + path;
  boost::system::error_code ec;

  http::request<http::empty_body> req{http::verb::get, url.prefix + path, 11};
  req.set(http::field::host, url.host);
  req.set(http::field::user_agent, "vmgatectl/" VMGATE_VERSION);
  req.set(http::field::accept, "application/json");
  req.keep_alive(false);
  stream.expires_after(timeout);
  ec = complete(io, [&](auto done) { http::async_write(stream, req, done); });
  if (ec) throw unreachable(url, "send", ec);

  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(256 * 1024 * 1024);  // /v1/vms on a host with many VMs
  stream.expires_after(timeout);
  ec = complete(io, [&](auto done) { http::async_read(stream, buffer, parser, done); });
  if (ec == beast::error::timeout)
    throw UsageError(fmt::format("hostd's admin API at {} did not answer {} within {} s", url.text,
                                 path, timeout.count()));
  if (ec) throw unreachable(url, "read", ec);
  const auto& res = parser.get();

  Answer answer{res.result_int(), json::parse(res.body(), nullptr, false)};
  if (answer.body.is_discarded() || !answer.body.is_structured()) {
    std::string first_line = res.body().substr(0, res.body().find('\n')).substr(0, 200);
    throw UsageError(
        fmt::format("{} answered {} {} without the admin API's JSON ({}).\n"
                    "Is this hostd's admin listener? Check the [admin] address in its config.",
                    where, answer.status, std::string(res.reason()),
                    first_line.empty() ? "empty body" : "\"" + first_line + "\""));
  }
  return answer;
}

std::string text_of(const json& value, std::string_view none = "-") {
  if (value.is_null()) return std::string(none);
  if (value.is_string()) return value.get<std::string>();
  return value.dump();
}

std::string ms_text(const json& value) {
  if (!value.is_number()) return "-";
  double ms = value.get<double>();
  return ms < 10 ? fmt::format("{:.3f} ms", ms) : fmt::format("{:.1f} ms", ms);
}

// Columns padded to their widest cell; the last one is not padded.
void print_table(const std::vector<std::vector<std::string>>& rows, std::string_view indent = "") {
  std::vector<std::size_t> widths;
  for (const auto& row : rows) {
    if (widths.size() < row.size()) widths.resize(row.size());
    for (std::size_t i = 0; i < row.size(); ++i)
      widths[i] = std::max(widths[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line(indent);
    for (std::size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(widths[i] - row[i].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ')
      line.pop_back();
    std::cout << line << "\n";
  }
}

std::string error_of(const Answer& a) {
  if (a.body.is_object() && a.body.contains("error")) return text_of(a.body["error"]);
  return fmt::format("hostd answered {}", a.status);
}

int show_vms(const Answer& a) {
  if (a.status != 200 || !a.body.is_array()) {
    std::cerr << "vmgatectl: " << error_of(a) << "\n";
    return exit_usage;
  }
  if (a.body.empty()) {
    std::cout << "no VMs: hostd's directory is empty (check its libvirt uri and log)\n";
    return exit_ok;
  }
  std::vector<std::vector<std::string>> rows{{"NAME", "UUID", "CID", "STATE", "TRANSPORT"}};
  for (const auto& vm : a.body) {
    rows.push_back({text_of(vm.value("name", json())), text_of(vm.value("uuid", json())),
                    text_of(vm.value("cid", json())), text_of(vm.value("state", json())),
                    vm.contains("via_host") ? "via host " + text_of(vm["via_host"])
                                            : text_of(vm.value("transport", json()))});
  }
  print_table(rows);
  return exit_ok;
}

std::vector<std::vector<std::string>> vm_rows(const json& vm) {
  std::vector<std::vector<std::string>> rows{
      {"name", text_of(vm.value("name", json()))},
      {"uuid", text_of(vm.value("uuid", json()))},
      {"cid", text_of(vm.value("cid", json()), "none (no vsock device)")},
      {"state", text_of(vm.value("state", json()))},
      {"transport", vm.contains("via_host") ? "via host " + text_of(vm["via_host"])
                    : vm.contains("transport_error") && vm["transport"].is_null()
                        ? "- (" + text_of(vm["transport_error"]) + ")"
                        : text_of(vm.value("transport", json()))}};
  auto list = [](const json& items) {
    std::string out;
    for (const auto& item : items)
      out += (out.empty() ? "" : ", ") + text_of(item);
    return out.empty() ? std::string("-") : out;
  };
  if (vm.contains("networks")) rows.push_back({"networks", list(vm["networks"])});
  if (vm.contains("groups")) rows.push_back({"groups", list(vm["groups"])});
  return rows;
}

std::string via_text(const json& provenance) {
  std::string rule = text_of(provenance.value("rule", json()));
  std::string via;
  for (const auto& group : provenance.value("via", json::array()))
    via += (via.empty() ? "" : " > ") + ("group:" + text_of(group));
  return via.empty() ? rule : rule + " (via " + via + ")";
}

// A target naming many VMs: one row per VM with the rule that added it.
int show_resolved_set(const Answer& a, std::string_view target) {
  const json& b = a.body;
  const std::string result = text_of(b.value("result", json()));
  if (result != "found") {
    std::cout << target << ": " << (result == "not_found" ? "not found" : result) << " ("
              << error_of(a) << ")\n";
    for (const auto& c : b.value("candidates", json::array()))
      std::cout << "  " << text_of(c) << "\n";
    return result == "invalid" ? exit_usage : exit_failed;
  }
  std::cout << target << ": " << text_of(b.value("count", json())) << " VMs";
  if (!b.value("routable", true)) std::cout << " (" << text_of(b.value("reason", json())) << ")";
  std::cout << "\n";
  std::vector<std::vector<std::string>> rows{{"NAME", "UUID", "STATE", "HOST", "ADDED BY"}};
  for (const auto& vm : b.value("vms", json::array()))
    rows.push_back({text_of(vm.value("name", json())), text_of(vm.value("uuid", json())),
                    text_of(vm.value("state", json())), text_of(vm.value("host", json())),
                    via_text(vm.value("added_by", json::object()))});
  print_table(rows, "  ");
  const json excluded = b.value("excluded", json::array());
  if (!excluded.empty()) {
    std::cout << "excluded:\n";
    std::vector<std::vector<std::string>> ex{{"NAME", "UUID", "EXCLUDED BY", "REACHED BY"}};
    for (const auto& vm : excluded)
      ex.push_back({text_of(vm.value("name", json())), text_of(vm.value("uuid", json())),
                    text_of(vm.value("excluded_by", json())),
                    via_text(vm.value("reached_by", json::object()))});
    print_table(ex, "  ");
  }
  const json unknown = b.value("unknown", json::array());
  if (!unknown.empty()) {
    std::string names;
    for (const auto& name : unknown)
      names += (names.empty() ? "" : ", ") + text_of(name);
    std::cout << "named but not known to this host: " << names << "\n";
  }
  return exit_ok;
}

int show_groups(const Answer& a) {
  if (a.status != 200 || !a.body.is_array()) {
    std::cerr << "vmgatectl: " << error_of(a) << "\n";
    return exit_usage;
  }
  if (a.body.empty()) {
    std::cout << "no groups: none in the config, no VM's metadata and no guest join names one\n";
    return exit_ok;
  }
  for (const auto& group : a.body) {
    std::vector<std::string> notes;
    if (group.value("in_config", false)) notes.push_back("config");
    if (group.value("joinable", false)) {
      std::string who;
      for (const auto& p : group.value("may_join", json::array()))
        who += (who.empty() ? "" : " ") + text_of(p);
      notes.push_back("joinable by " + who);
    }
    std::string header = "group:" + text_of(group.value("name", json()));
    if (!notes.empty()) {
      header += " (";
      for (std::size_t i = 0; i < notes.size(); ++i)
        header += (i ? "; " : "") + notes[i];
      header += ")";
    }
    std::cout << header << "\n";
    const json members = group.value("members", json::array());
    if (members.empty()) {
      std::cout << "  no members"
                << (group.contains("note") ? " (" + text_of(group["note"]) + ")" : std::string())
                << "\n";
      continue;
    }
    std::vector<std::vector<std::string>> rows{{"NAME", "UUID", "STATE", "FROM", "RULE"}};
    for (const auto& m : members)
      rows.push_back({text_of(m.value("name", json())), text_of(m.value("uuid", json())),
                      text_of(m.value("state", json())), text_of(m.value("from", json())),
                      via_text(m)});
    print_table(rows, "  ");
  }
  return exit_ok;
}

int show_resolve(const Answer& a, std::string_view target) {
  const json& b = a.body;
  if (b.is_object() && b.contains("vms")) return show_resolved_set(a, target);
  std::string result = b.is_object() ? text_of(b.value("result", json())) : "-";
  if (result == "found") {
    auto rows = vm_rows(b["vm"]);
    bool routable = b.value("routable", false);
    rows.push_back(
        {"routable", routable ? "yes" : "no (" + text_of(b.value("reason", json())) + ")"});
    std::cout << target << ": found\n";
    print_table(rows, "  ");
    return exit_ok;
  }
  if (result == "ambiguous") {
    std::cout << target << ": ambiguous, matches more than one VM:\n";
    for (const auto& c : b.value("candidates", json::array()))
      std::cout << "  " << text_of(c) << "\n";
    std::cout << "name it by UUID instead\n";
    return exit_failed;
  }
  if (result == "not_found" || result == "unsupported") {
    std::cout << target << ": " << (result == "not_found" ? "not found" : "unsupported") << " ("
              << error_of(a) << ")\n";
    return exit_failed;
  }
  std::cerr << "vmgatectl: resolve " << target << ": " << error_of(a) << "\n";
  return exit_usage;
}

std::string hop_detail(const json& hop) {
  const std::string name = text_of(hop.value("hop", json()));
  const bool ok = hop.value("ok", false);
  if (name == "directory" && hop.contains("vm")) {
    const json& vm = hop["vm"];
    std::string detail = fmt::format(
        "{} ({}) {}, cid {}", text_of(vm.value("name", json())), text_of(vm.value("uuid", json())),
        text_of(vm.value("state", json())), text_of(vm.value("cid", json()), "none"));
    if (!ok) detail += ": " + text_of(hop.value("error", json()));
    return detail;
  }
  if (name == "directory" && hop.contains("candidates")) {
    std::string detail = "ambiguous: ";
    bool first = true;
    for (const auto& c : hop["candidates"]) {
      detail += (first ? "" : ", ") + text_of(c);
      first = false;
    }
    return detail;
  }
  if (name == "channel") {
    if (ok)
      return "guestd answered " + text_of(hop.value("status", json())) + " " +
             text_of(hop.value("reason", json()));
    return text_of(hop.value("status", json())) + " " + text_of(hop.value("reason", json()));
  }
  if (name == "authorize") {
    std::string detail = fmt::format("rule \"{}\"", text_of(hop.value("rule", json())));
    if (!ok) detail += ": " + text_of(hop.value("error", json()));
    return detail;
  }
  if (!ok) return text_of(hop.value("error", json()), "failed");
  if (hop.contains("via_host")) return "through host " + text_of(hop["via_host"]);
  return text_of(hop.value("address", json()), "");
}

int show_check(const Answer& a, std::string_view target) {
  const json& b = a.body;
  if (!b.is_object() || !b.contains("hops")) {
    std::cerr << "vmgatectl: check " << target << ": " << error_of(a) << "\n";
    return exit_usage;
  }
  const bool ok = b.value("ok", false);
  // A host service's check has no port.
  const json port = b.value("port", json());
  std::string head = port.is_null() ? fmt::format("check {}: ", target)
                                    : fmt::format("check {} port {}: ", target, text_of(port));
  if (ok) {
    head += "ok in " + ms_text(b.value("elapsed_ms", json()));
  } else {
    head += fmt::format("FAILED {} {}", text_of(b.value("status", json())),
                        text_of(b.value("reason", json())));
  }
  std::cout << head << " (request " << text_of(b.value("request_id", json())) << ")\n";
  // A trusted client (the operator, without --as) is not subject to rules.
  if (b.contains("acl") && b["acl"].is_object() && b["acl"].value("rule", "") != "trusted") {
    const json& acl = b["acl"];
    std::cout << fmt::format("  {} acl: {} (rule \"{}\")\n", text_of(b.value("identity", json())),
                             acl.value("allowed", false) ? "allow" : "deny",
                             text_of(acl.value("rule", json())));
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& hop : b["hops"]) {
    rows.push_back({text_of(hop.value("hop", json())), hop.value("ok", false) ? "ok" : "FAIL",
                    ms_text(hop.value("ms", json())), hop_detail(hop)});
  }
  print_table(rows, "  ");
  if (ok) return exit_ok;
  return a.status == 400 ? exit_usage : exit_failed;
}

// `token new NAME`: the token alone on stdout, so that it can be captured
// (TOKEN=$(vmgatectl token new ci)); on stderr, a comment and the line for
// the tokens file, both of which the tokens file accepts as they are
// (2>>/etc/vmgate/tokens). The token itself is kept nowhere.
int token_new(const std::string& name) {
  if (!vmgate::hostd::valid_token_name(name)) {
    std::cerr << "vmgatectl: token name '" << name << "': 1 to "
              << vmgate::hostd::max_token_name_length << " of A-Z a-z 0-9 . _ -\n";
    return exit_usage;
  }
  try {
    const std::string token = vmgate::hostd::new_token();
    std::cout << token << std::endl;
    std::cerr << "# add to hostd's tokens file ([auth] tokens_file); the token is shown only once\n"
              << name << " " << vmgate::hostd::token_hash(token) << "\n";
  } catch (const std::runtime_error& e) {
    std::cerr << "vmgatectl: " << e.what() << "\n";
    return exit_failed;
  }
  return exit_ok;
}

// `token hash`: the first line of stdin, without its line end, is the token.
int token_hash_of_stdin() {
  std::string token;
  std::getline(std::cin, token);
  if (!token.empty() && token.back() == '\r') token.pop_back();
  if (token.empty()) {
    std::cerr << "vmgatectl: token hash reads a token from stdin, and got none\n";
    return exit_usage;
  }
  try {
    std::cout << vmgate::hostd::token_hash(token) << "\n";
  } catch (const std::runtime_error& e) {
    std::cerr << "vmgatectl: " << e.what() << "\n";
    return exit_failed;
  }
  return exit_ok;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  // send talks to a client listener, not the admin API: its options are its own.
  if (!args.empty() && args[0] == "send") {
    if (args.size() == 2 && (args[1] == "--help" || args[1] == "-h")) {
      std::cout << vmgate::ctl::send_usage_text;
      return exit_ok;
    }
    return vmgate::ctl::send_main(std::vector<std::string>(args.begin() + 1, args.end()));
  }
  std::string admin = std::getenv("VMGATE_ADMIN") ? std::getenv("VMGATE_ADMIN") : "";
  if (admin.empty()) admin = default_admin;
  bool as_json = false;
  long timeout_s = 30;
  std::string as;
  std::vector<std::string> positional;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const auto& a = args[i];
    if (a == "--admin" && i + 1 < args.size()) {
      admin = args[++i];
    } else if (a.starts_with("--admin=")) {
      admin = a.substr(8);
    } else if (a == "--as" && i + 1 < args.size()) {
      as = args[++i];
    } else if (a.starts_with("--as=")) {
      as = a.substr(5);
    } else if (a == "--json") {
      as_json = true;
    } else if (a == "--timeout" && i + 1 < args.size()) {
      char* end = nullptr;
      timeout_s = std::strtol(args[++i].c_str(), &end, 10);
      if (*end != '\0' || timeout_s < 1 || timeout_s > 3600) {
        std::cerr << "vmgatectl: --timeout takes seconds, 1..3600\n";
        return exit_usage;
      }
    } else if (a == "--version") {
      std::cout << "vmgatectl " << VMGATE_VERSION << "\n";
      return exit_ok;
    } else if (a == "--help" || a == "-h") {
      std::cout << usage;
      return exit_ok;
    } else if (a == "--admin" || a == "--timeout" || a == "--as") {
      std::cerr << "vmgatectl: " << a << " needs a value\n" << usage;
      return exit_usage;
    } else if (a.starts_with("-") && a != "-") {
      std::cerr << "vmgatectl: unknown option '" << a << "'\n" << usage;
      return exit_usage;
    } else {
      positional.push_back(a);
    }
  }
  if (positional.empty()) {
    std::cerr << "vmgatectl: a command is needed\n" << usage;
    return exit_usage;
  }
  const std::string& command = positional[0];
  const std::size_t operands = positional.size() - 1;
  if (!as.empty() && command != "check") {
    std::cerr << "vmgatectl: --as is an option of check\n";
    return exit_usage;
  }
  if (command == "token") {
    const std::string sub = operands >= 1 ? positional[1] : "";
    if (sub == "new" && operands == 2) return token_new(positional[2]);
    if (sub == "hash" && operands == 1) return token_hash_of_stdin();
    std::cerr << "vmgatectl: token takes 'new NAME' or 'hash'\n" << usage;
    return exit_usage;
  }
  std::string path;
  if (command == "vms" && operands == 0) {
    path = "/v1/vms";
  } else if (command == "groups" && operands == 0) {
    path = "/v1/groups";
  } else if (command == "resolve" && operands == 1) {
    path = "/v1/resolve?target=" + percent_encode(positional[1]);
  } else if (command == "check" && (operands == 1 || operands == 2)) {
    path = "/v1/check?target=" + percent_encode(positional[1]);
    if (operands == 2) path += "&port=" + percent_encode(positional[2]);
    if (!as.empty()) path += "&as=" + percent_encode(as);
  } else {
    std::cerr << "vmgatectl: "
              << (command == "vms" || command == "groups" || command == "resolve" ||
                          command == "check"
                      ? "wrong number of arguments for '" + command + "'"
                      : "unknown command '" + command + "'")
              << "\n"
              << usage;
    return exit_usage;
  }

  try {
    Answer answer = get(parse_admin_url(admin), path, std::chrono::seconds(timeout_s));
    if (as_json) {
      std::cout << answer.body.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
      if (command == "vms" || command == "groups")
        return answer.status == 200 ? exit_ok : exit_usage;
      if (answer.status == 200) return exit_ok;
      return answer.status == 400 ? exit_usage : exit_failed;
    }
    if (command == "vms") return show_vms(answer);
    if (command == "groups") return show_groups(answer);
    if (command == "resolve") return show_resolve(answer, positional[1]);
    return show_check(answer, positional[1]);
  } catch (const UsageError& e) {
    std::cerr << "vmgatectl: " << e.what() << "\n";
    return exit_usage;
  }
}
