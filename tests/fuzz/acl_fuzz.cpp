// libFuzzer target for the ACL (hostd/authz): the rule patterns as the
// config loader parses them, and AccessPolicy::decide as admission asks it.
//
// An input is lines of text, each a rule or a part of the request:
//   allow|deny IDENTITY[;IDENTITY...] VM[;VM...] [PORT[,PORT...]]
//   as IDENTITY            (parse_identity: token:NAME, cert:NAME,..., source:ADDRESS)
//   vm NAME [UUID]
//   port N
// Patterns that do not parse are left out (the loader refuses them), and so
// is a rule left with no identity or VM. Besides "no crash, no sanitizer
// report, no exception", it checks:
//   - glob_match agrees with a plain dynamic-programming matcher;
//   - the decision is the documented one (access_policy.hpp), computed here
//     from the rules in order: the first matching deny, else the first
//     matching allow, else "default"; a trusted listener's client always
//     "trusted"; and it is the same when asked again or of another policy
//     built from the same rules;
//   - deny wins: a deny rule matching the request, added first or last,
//     makes the answer a deny; an allow rule added anywhere never undoes a
//     deny a rule made, and taking every deny rule away never undoes an allow;
//   - certificate names match without regard to case, and a v4 client the
//     same as its v4-mapped v6 address.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/ip/address.hpp>

#include "hostd/authz/access_policy.hpp"
#include "hostd/authz/acl_pattern.hpp"
#include "hostd/identity/identity.hpp"
#include "hostd/route/target.hpp"

using namespace vmgate::hostd;

namespace {

void check(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "acl property violated: %s\n", what);
  std::abort();
}

// Enough for any rule or name to meet any other; more only slows the
// reference matcher (length times length) down.
constexpr std::size_t max_rules = 16;
constexpr std::size_t max_line = 256;

std::vector<std::string_view> split(std::string_view text, char by) {
  std::vector<std::string_view> out;
  while (true) {
    const auto at = text.find(by);
    out.push_back(text.substr(0, at));
    if (at == std::string_view::npos) return out;
    text.remove_prefix(at + 1);
  }
}

char lower(char c) {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}
std::string upper(std::string_view text) {
  std::string out(text);
  for (char& c : out)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  return out;
}

// Whether `glob` matches `text`, by the book: after glob[i], matched[j]
// says whether glob[0..i] matches the first j characters of text.
bool reference_glob(std::string_view glob, std::string_view text, bool ignore_case) {
  std::vector<char> matched(text.size() + 1, 0), next(text.size() + 1, 0);
  matched[0] = 1;
  for (const char g : glob) {
    for (std::size_t j = 0; j <= text.size(); ++j) {
      if (g == '*') {
        next[j] = matched[j] || (j > 0 && next[j - 1]);
      } else {
        const bool same =
            j > 0 && (ignore_case ? lower(g) == lower(text[j - 1]) : g == text[j - 1]);
        next[j] = same && matched[j - 1];
      }
    }
    matched.swap(next);
  }
  return matched[text.size()];
}

struct Request {
  Identity identity;
  VmRecord vm;
  std::uint16_t port = 5986;
};

// One rule as written, and as this target reads its patterns.
struct WrittenRule {
  AclRule rule;
  std::vector<IdentityPattern> identities;
  std::vector<VmPattern> vms;
};

bool reference_identity(const IdentityPattern& p, const Identity& identity) {
  switch (p.kind) {
    case IdentityPattern::Kind::certificate:
      return identity.kind == Identity::Kind::certificate &&
             std::any_of(identity.certificate_names.begin(), identity.certificate_names.end(),
                         [&](const std::string& n) { return reference_glob(p.glob, n, true); });
    case IdentityPattern::Kind::token:
      return identity.kind == Identity::Kind::token && reference_glob(p.glob, identity.name, false);
    case IdentityPattern::Kind::cidr:
      return identity.kind == Identity::Kind::source && identity.address &&
             p.network.contains(*identity.address);
  }
  return false;
}

bool reference_matches(const WrittenRule& r, const Request& request) {
  const auto& ports = r.rule.ports;
  if (!ports.empty() && std::find(ports.begin(), ports.end(), request.port) == ports.end())
    return false;
  const bool identity = std::any_of(r.identities.begin(), r.identities.end(), [&](const auto& p) {
    return reference_identity(p, request.identity);
  });
  const bool vm = std::any_of(r.vms.begin(), r.vms.end(), [&](const VmPattern& p) {
    return p.uuid ? request.vm.uuid == p.text : reference_glob(p.text, request.vm.name, false);
  });
  return identity && vm;
}

AccessDecision reference_decide(const std::vector<WrittenRule>& rules, const Request& request) {
  if (request.identity.kind == Identity::Kind::trusted_listener)
    return {true, std::string(trusted_rule)};
  for (const auto& r : rules)
    if (r.rule.deny && reference_matches(r, request)) return {false, r.rule.name};
  for (const auto& r : rules)
    if (!r.rule.deny && reference_matches(r, request)) return {true, r.rule.name};
  return {false, std::string(default_rule)};
}

std::vector<AclRule> rules_of(const std::vector<WrittenRule>& rules) {
  std::vector<AclRule> out;
  for (const auto& r : rules)
    out.push_back(r.rule);
  return out;
}

AccessDecision decide(const std::vector<WrittenRule>& rules, const Request& request) {
  return AccessPolicy(rules_of(rules)).decide(request.identity, request.vm, request.port);
}

std::optional<WrittenRule> read_rule(std::string_view line, std::size_t index) {
  const auto words = split(line, ' ');
  if (words.size() < 3 || words.size() > 4) return std::nullopt;
  WrittenRule r;
  r.rule.name = "acl[" + std::to_string(index) + "]";
  if (words[0] == "deny") {
    r.rule.deny = true;
  } else if (words[0] != "allow") {
    return std::nullopt;
  }
  for (auto text : split(words[1], ';')) {
    auto parsed = parse_identity_pattern(text);
    if (!parsed) {
      check(!parsed.error().empty(), "a refused identity pattern has a reason");
      continue;
    }
    r.rule.identities.emplace_back(text);
    r.identities.push_back(*parsed);
  }
  for (auto text : split(words[2], ';')) {
    auto parsed = parse_vm_pattern(text);
    if (!parsed) {
      check(!parsed.error().empty(), "a refused VM pattern has a reason");
      continue;
    }
    check(!parsed->uuid || looks_like_uuid(parsed->text), "a UUID pattern is a UUID");
    r.rule.vms.emplace_back(text);
    r.vms.push_back(*parsed);
  }
  if (words.size() == 4) {
    for (auto text : split(words[3], ',')) {
      unsigned port = 0;
      for (char c : text) {
        if (c < '0' || c > '9' || port > 65535) return std::nullopt;
        port = port * 10 + static_cast<unsigned>(c - '0');
      }
      if (text.empty() || port == 0 || port > 65535) return std::nullopt;
      r.rule.ports.push_back(static_cast<std::uint16_t>(port));
    }
  }
  if (r.identities.empty() || r.vms.empty()) return std::nullopt;
  return r;
}

// A deny rule that matches exactly this request, when the request's
// identity is one a rule can name.
std::optional<WrittenRule> matching_deny(const Request& request) {
  std::string identity;
  const Identity& id = request.identity;
  switch (id.kind) {
    case Identity::Kind::token:
      identity = "token:" + id.name;
      break;
    case Identity::Kind::certificate:
      identity = "cert:" + id.certificate_names.front();
      break;
    case Identity::Kind::source:
      identity = "cidr:" + id.address->to_string() + (id.address->is_v4() ? "/32" : "/128");
      break;
    case Identity::Kind::anonymous:
    case Identity::Kind::trusted_listener:
      return std::nullopt;
  }
  const std::string vm = request.vm.uuid.empty() ? request.vm.name : request.vm.uuid;
  // Names that this target's rule lines cannot spell; a name with '*' is a
  // glob that matches itself, among others.
  auto spellable = [](std::string_view text) {
    return text.find_first_of(" ;\n") == std::string_view::npos;
  };
  if (!spellable(identity) || !spellable(vm)) return std::nullopt;
  // A pattern that looks like a UUID is one (acl_pattern.hpp): a VM whose
  // name looks like one, and has no UUID here, no rule names.
  if (request.vm.uuid.empty() && looks_like_uuid(vm)) return std::nullopt;
  std::string line = "deny " + identity + " " + vm;
  if (request.port != 0) line += " " + std::to_string(request.port);
  auto rule = read_rule(line, 99);
  if (!rule) return std::nullopt;  // a VM name no pattern takes
  rule->rule.name = "added-deny";
  return rule;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  try {
    std::vector<WrittenRule> rules;
    Request request;
    request.identity.kind = Identity::Kind::token;
    request.identity.name = "deploy";
    request.vm.name = "web1";
    for (auto line : split(input, '\n')) {
      if (line.size() > max_line) continue;
      if (line.starts_with("as ")) {
        auto identity = parse_identity(line.substr(3));
        if (identity) {
          request.identity = std::move(*identity);
        } else {
          check(!identity.error().empty(), "a refused identity has a reason");
        }
      } else if (line.starts_with("vm ")) {
        const auto words = split(line.substr(3), ' ');
        request.vm.name = std::string(words[0]);
        request.vm.uuid.clear();
        if (words.size() > 1 && looks_like_uuid(words[1])) {
          for (char c : words[1])
            request.vm.uuid += lower(c);
        }
      } else if (line.starts_with("port ")) {
        unsigned port = 0;
        for (char c : line.substr(5))
          port = (port * 10 + static_cast<unsigned>(c - '0')) % 65536;
        request.port = static_cast<std::uint16_t>(port);
      } else if (line == "trusted") {
        request.identity = Identity{.kind = Identity::Kind::trusted_listener, .name = "local"};
      } else if (rules.size() < max_rules) {
        if (auto rule = read_rule(line, rules.size())) rules.push_back(std::move(*rule));
      }
    }

    for (const auto& r : rules) {
      for (std::size_t i = 0; i < r.identities.size(); ++i) {
        const auto& p = r.identities[i];
        if (p.kind == IdentityPattern::Kind::cidr) continue;
        for (const auto& name : request.identity.certificate_names)
          check(glob_match(p.glob, name, true) == reference_glob(p.glob, name, true),
                "glob_match agrees with the reference (ignoring case)");
        check(glob_match(p.glob, request.identity.name) ==
                  reference_glob(p.glob, request.identity.name, false),
              "glob_match agrees with the reference");
      }
      for (const auto& p : r.vms) {
        if (p.uuid) continue;
        check(glob_match(p.text, request.vm.name) == reference_glob(p.text, request.vm.name, false),
              "glob_match agrees with the reference on VM names");
      }
    }

    const AccessPolicy policy(rules_of(rules));
    const AccessDecision decision = policy.decide(request.identity, request.vm, request.port);
    check(decision == reference_decide(rules, request), "the decision is the documented one");
    check(decision == policy.decide(request.identity, request.vm, request.port),
          "the decision is the same when asked again");
    check(decision == decide(rules, request), "another policy of the same rules decides the same");
    if (request.identity.kind == Identity::Kind::trusted_listener)
      check(decision.allowed && decision.rule == trusted_rule, "a trusted client reaches all");

    // Deny wins.
    if (auto deny = matching_deny(request)) {
      auto last = rules;
      last.push_back(*deny);
      auto first = rules;
      first.insert(first.begin(), *deny);
      const auto after_last = decide(last, request);
      const auto after_first = decide(first, request);
      check(!after_last.allowed && !after_first.allowed, "a matching deny rule denies");
      check(after_first.rule == "added-deny", "the first matching deny decides");
      if (!decision.allowed && decision.rule != default_rule)
        check(after_last.rule == decision.rule, "the first matching deny still decides");
    }
    if (!decision.allowed && decision.rule != default_rule) {
      WrittenRule allow_all = *read_rule("allow token:*;cert:*;cidr:::/0;cidr:0.0.0.0/0 *", 99);
      allow_all.rule.name = "added-allow";
      auto first = rules;
      first.insert(first.begin(), allow_all);
      auto last = rules;
      last.push_back(allow_all);
      check(!decide(first, request).allowed && !decide(last, request).allowed,
            "an allow rule never undoes a deny");
    }
    if (decision.allowed) {
      auto allows = rules;
      std::erase_if(allows, [](const WrittenRule& r) { return r.rule.deny; });
      check(decide(allows, request) == decision, "without deny rules an allow stays");
    }

    // What does not change a decision.
    if (request.identity.kind == Identity::Kind::certificate) {
      Request shouting = request;
      for (auto& name : shouting.identity.certificate_names)
        name = upper(name);
      check(policy.decide(shouting.identity, shouting.vm, shouting.port) == decision,
            "certificate names match without regard to case");
    }
    if (request.identity.kind == Identity::Kind::source && request.identity.address->is_v4()) {
      Request mapped = request;
      namespace ip = boost::asio::ip;
      mapped.identity.address =
          ip::make_address_v6(ip::v4_mapped, request.identity.address->to_v4());
      check(policy.decide(mapped.identity, mapped.vm, mapped.port) == decision,
            "a v4 client decides as its v4-mapped address");
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "acl: exception escaped: %s\n", e.what());
    std::abort();
  }
  return 0;
}
