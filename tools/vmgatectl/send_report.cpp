#include "tools/vmgatectl/send_report.hpp"

#include <map>
#include <tuple>

#include <fmt/format.h>

#include "tools/vmgatectl/name_ranges.hpp"

namespace vmgate::ctl {
namespace {

using json = nlohmann::json;

// The classes as the summary names them, in the order the report lists them.
constexpr std::string_view class_order[] = {"answered",    "agent_error", "refused",
                                            "not_found",   "unreachable", "timed_out",
                                            "not_running", "too_large"};

std::string readable(std::string_view vm_class) {
  std::string out(vm_class);
  for (char& c : out)
    if (c == '_') c = ' ';
  return out;
}

// A body shown: its text (base64 ones are said to be binary), without the last line end.
std::string body_text(const json& vm) {
  if (!vm.contains("response")) return "";
  const json& r = vm["response"];
  if (r.value("body_encoding", "utf-8") != "utf-8")
    return fmt::format("({} bytes of binary, base64 in --json)",
                       r.value("body", "").size() * 3 / 4);
  std::string body = r.value("body", "");
  while (!body.empty() && (body.back() == '\n' || body.back() == '\r'))
    body.pop_back();
  return body;
}

}  // namespace

void SendReport::add(const json& line) {
  if (line.value("summary", false)) {
    summary_ = line;
    return;
  }
  if (line.value("class", "") != "answered") ++failed_;
  vms_.push_back(line);
}

std::string SendReport::progress() const {
  const std::size_t done = vms_.size();
  const std::size_t total = std::max(expected_, done);
  return fmt::format("done {}, failed {}, pending {} of {}", done - failed_, failed_, total - done,
                     total);
}

std::string SendReport::collapsed() const {
  // Alike: same class, status and body (agent answers), or same class and
  // status (hostd's, whose reasons name each VM).
  using Key = std::tuple<std::string, unsigned, std::string>;
  std::map<Key, std::vector<const json*>> alike;
  std::vector<Key> order;
  for (const json& vm : vms_) {
    const std::string vm_class = vm.value("class", "");
    Key key{vm_class, vm.value("status", 0u), vm.contains("response") ? body_text(vm) : ""};
    auto& members = alike[key];
    if (members.empty()) order.push_back(key);
    members.push_back(&vm);
  }
  std::string out;
  for (const Key& key : order) {
    const auto& members = alike.at(key);
    const auto& [vm_class, status, body] = key;
    std::vector<std::string> names;
    for (const json* vm : members)
      names.push_back(vm->value("vm", "?"));
    std::string who = fold_names(names);
    if (members.size() > 1) who += fmt::format(" ({})", members.size());
    const json& first = *members.front();
    std::string what;
    if (first.contains("response")) {
      what = fmt::format("{}", status);
      if (vm_class != "answered") what += " " + readable(vm_class);
      if (body.find('\n') == std::string::npos && body.size() <= 100) {
        if (!body.empty()) what += " " + body;
        out += fmt::format("{}: {}\n", who, what);
      } else {
        out += fmt::format("{}: {}\n", who, what);
        std::size_t start = 0;
        while (start <= body.size()) {
          const std::size_t end = body.find('\n', start);
          out += "    " + body.substr(start, end - start) + "\n";
          if (end == std::string::npos) break;
          start = end + 1;
        }
      }
    } else {
      what = fmt::format("{} {}", status, readable(vm_class));
      if (members.size() == 1 && first.contains("reason"))
        what += ": " + first["reason"].get<std::string>();
      out += fmt::format("{}: {}\n", who, what);
    }
  }
  if (!summary_.is_null()) {
    const json& classes = summary_.value("classes", json::object());
    std::string failed;
    for (std::string_view c : class_order) {
      if (c == "answered" || !classes.contains(c)) continue;
      const json& entry = classes[std::string(c)];
      if (entry.value("count", 0) == 0) continue;
      std::vector<std::string> names = entry.value("vms", std::vector<std::string>{});
      failed += fmt::format("{}{} {} ({})", failed.empty() ? "" : ", ", readable(c),
                            entry.value("count", 0), fold_names(names));
    }
    out += fmt::format("{} VMs: {} answered{}{} (request {})\n", summary_.value("vms", 0),
                       summary_.value("answered", 0), failed.empty() ? "" : "; failed: ", failed,
                       summary_.value("request_id", "-"));
  } else {
    out += fmt::format("the stream ended before its summary: {}\n", progress());
  }
  return out;
}

json SendReport::document() const {
  return {{"vms", vms_}, {"summary", summary_}};
}

int SendReport::exit_status() const {
  if (summary_.is_null()) return send_some_failed;  // cut short: some VM may be missing
  if (summary_.value("vms", 0) == 0) return send_none_matched;
  return summary_.value("failed", 1) == 0 ? send_all_answered : send_some_failed;
}

}  // namespace vmgate::ctl
