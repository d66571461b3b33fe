// RequestRecord: the `event=request` line and the counts one request leaves,
// here for what the ACL rules decided about it.
#include "hostd/proxy/request_record.hpp"

#include <doctest/doctest.h>

#include <cstdio>
#include <sstream>
#include <string>

#include <unistd.h>

#include "hostd/directory/embedded_directory.hpp"

using namespace vmgate::hostd;

namespace {

// What `f` writes to stderr (log lines are one write(2) to fd 2 each).
template <typename F>
std::string stderr_of(F&& f) {
  std::FILE* file = std::tmpfile();
  REQUIRE(file != nullptr);
  const int saved = ::dup(2);
  ::dup2(::fileno(file), 2);
  f();
  ::dup2(saved, 2);
  ::close(saved);
  std::string out;
  std::rewind(file);
  for (int c; (c = std::fgetc(file)) != EOF;)
    out += static_cast<char>(c);
  std::fclose(file);
  return out;
}

double sample(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);)
    if (l.rfind(series + " ", 0) == 0) return std::stod(l.substr(series.size() + 1));
  return -1;
}

}  // namespace

TEST_CASE("a request's record logs who asked, the ACL's answer and the rule that gave it") {
  auto line = stderr_of([] {
    RequestRecord rec;
    rec.status = 403;
    rec.note_access(Identity{Identity::Kind::token, "ansible"}, AccessDecision{false, "no-db"});
  });
  CHECK(line.find("event=request ") != std::string::npos);
  CHECK(line.find(" identity=token:ansible ") != std::string::npos);
  CHECK(line.find(" acl=deny rule=no-db") != std::string::npos);

  // Refused before authorize decided (a 400): who asked, and no acl field.
  auto early = stderr_of([] {
    RequestRecord rec;
    rec.status = 400;
    rec.note_access(Identity{Identity::Kind::source, "10.1.2.3"}, std::nullopt);
  });
  CHECK(early.find(" identity=source:10.1.2.3 ") != std::string::npos);
  CHECK(early.find(" acl=") == std::string::npos);
}

TEST_CASE("ACL decisions are counted once per request, trusted listeners' not at all") {
  EmbeddedDirectory directory;
  HostdMetrics metrics(directory, nullptr);
  const Identity token{Identity::Kind::token, "ansible"};
  auto request = [&](std::optional<AccessDecision> decision, const Identity& who) {
    RequestRecord rec;
    rec.metrics = &metrics;
    rec.note_access(who, decision);
    RequestRecord moved(std::move(rec));  // only the record moved to is logged and counted
  };
  stderr_of([&] {
    request(AccessDecision{true, "ansible-web"}, token);
    request(AccessDecision{true, "ansible-web"}, token);
    request(AccessDecision{false, "default"}, token);
    request(AccessDecision{true, "trusted"}, Identity{Identity::Kind::trusted_listener, "lo"});
    request(std::nullopt, token);
  });
  const std::string text = metrics.render();
  CHECK(sample(text, R"(vmgate_acl_decisions_total{result="allow"})") == 2);
  CHECK(sample(text, R"(vmgate_acl_decisions_total{result="deny"})") == 1);
}
