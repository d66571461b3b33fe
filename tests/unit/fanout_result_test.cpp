// fanout_result: each VM's class, the summary that names every VM once, and
// the two encodings a client reads (multipart/mixed parts, NDJSON lines),
// read back here as a client would.
#include "hostd/fanout/fanout_result.hpp"

#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

using namespace vmgate::hostd;
using json = nlohmann::json;

namespace {

AgentResponse response(unsigned status, std::string body) {
  AgentResponse r;
  r.status = status;
  r.reason = status == 200 ? "OK" : "Internal Server Error";
  r.fields = {{"Content-Type", "text/plain"}, {"X-Agent", "test"}};
  r.body = std::move(body);
  return r;
}

// The parts between `--boundary` delimiters, as RFC 2046 §5.1.1 cuts them
// (the CRLF before each delimiter belongs to it).
std::vector<std::string> split_parts(const std::string& body, const std::string& boundary) {
  std::vector<std::string> parts;
  const std::string delimiter = "--" + boundary;
  std::size_t pos = body.find(delimiter);
  while (pos != std::string::npos) {
    const std::size_t start = pos + delimiter.size();
    if (body.compare(start, 2, "--") == 0) break;  // the close delimiter
    const std::size_t next = body.find("\r\n" + delimiter, start);
    REQUIRE(next != std::string::npos);
    parts.push_back(body.substr(start + 2, next - start - 2));  // after the delimiter's CRLF
    pos = next + 2;
  }
  return parts;
}

}  // namespace

TEST_CASE("an agent answer below 400 is answered, from 400 on an agent error") {
  CHECK(agent_result("web01", "u", response(200, "ok")).vm_class == VmClass::answered);
  CHECK(agent_result("web01", "u", response(399, "")).vm_class == VmClass::answered);
  CHECK(agent_result("web01", "u", response(404, "")).vm_class == VmClass::agent_error);
  CHECK(agent_result("web01", "u", response(500, "")).vm_class == VmClass::agent_error);
  CHECK(agent_result("web01", "u", response(500, "")).status == 500);
}

TEST_CASE("hostd's refusals for a VM are refused at 403, timed out at 504, else unreachable") {
  CHECK(refused_result("a", "u", Refusal{403, "acl"}).vm_class == VmClass::refused);
  CHECK(refused_result("a", "u", Refusal{504, "slow"}).vm_class == VmClass::timed_out);
  CHECK(refused_result("a", "u", Refusal{404, "who"}).vm_class == VmClass::not_found);
  CHECK(refused_result("a", "u", Refusal{502, "gone"}).vm_class == VmClass::unreachable);
  CHECK(refused_result("a", "u", Refusal{503, "busy"}).vm_class == VmClass::unreachable);
  const VmResult r = refused_result("a", "u", Refusal{502, "guestd on vm a is unreachable"});
  CHECK(r.status == 502);
  CHECK(r.reason == "guestd on vm a is unreachable");
  CHECK_FALSE(r.response);
}

TEST_CASE("the summary names every VM in exactly one class, every class present") {
  FanoutSummary s;
  s.add(agent_result("web02", "u2", response(200, "")));
  s.add(agent_result("web01", "u1", response(200, "")));
  s.add(agent_result("web03", "u3", response(500, "")));
  s.add(refused_result("db1", "", Refusal{403, "no"}));
  VmResult off = refused_result("web04", "u4", Refusal{503, "vm web04 is shut_off"});
  off.vm_class = VmClass::not_running;
  s.add(off);
  s.add(refused_result("web05", "u5", Refusal{504, "late"}));
  CHECK(s.total() == 6);
  CHECK(s.failed() == 4);
  const json j = json::parse(s.json("req1", std::chrono::milliseconds(12)));
  CHECK(j["summary"] == true);
  CHECK(j["request_id"] == "req1");
  CHECK(j["vms"] == 6);
  CHECK(j["answered"] == 2);
  CHECK(j["failed"] == 4);
  CHECK(j["classes"].size() == vm_class_count);
  CHECK(j["classes"]["answered"]["vms"] == json({"web01", "web02"}));  // in name order
  CHECK(j["classes"]["agent_error"]["vms"] == json({"web03"}));
  CHECK(j["classes"]["refused"]["vms"] == json({"db1"}));
  CHECK(j["classes"]["not_running"]["vms"] == json({"web04"}));
  CHECK(j["classes"]["timed_out"]["vms"] == json({"web05"}));
  CHECK(j["classes"]["unreachable"]["count"] == 0);
  CHECK(j["classes"]["too_large"]["vms"] == json::array());
  std::size_t named = 0;
  for (const auto& [name, c] : j["classes"].items())
    named += c["vms"].size();
  CHECK(named == 6);
}

TEST_CASE("a multipart part carries the VM's headers, then the agent's response as HTTP") {
  const std::string boundary = new_boundary();
  const std::string body =
      multipart_part(agent_result("web01", "u1", response(200, "hi\n")), boundary) +
      multipart_part(refused_result("db1", "", Refusal{403, "no\r\nX: y"}), boundary) +
      multipart_summary(FanoutSummary{}, boundary, "r", {}) + multipart_close(boundary);
  const auto parts = split_parts(body, boundary);
  REQUIRE(parts.size() == 3);
  CHECK(parts[0] ==
        "Content-Type: application/http; msgtype=response\r\nX-VM-Id: web01\r\nX-VM-Uuid: "
        "u1\r\nX-VM-Status: 200\r\nX-VM-Class: answered\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: "
        "text/plain\r\nX-Agent: test\r\nContent-Length: 3\r\n\r\nhi\n");
  // hostd's own answer for a VM no agent answered for; a reason cannot add a line
  CHECK(parts[1].find("X-VM-Status: 403\r\nX-VM-Class: refused\r\nX-VM-Reason: no  X: y\r\n") !=
        std::string::npos);
  CHECK(parts[1].find("\r\n\r\nHTTP/1.1 403 Forbidden\r\n") != std::string::npos);
  CHECK(parts[1].find("\r\nX: y") == std::string::npos);
  CHECK(parts[2].starts_with("Content-Type: application/json\r\nX-VM-Summary: true\r\n\r\n{"));
  CHECK(body.ends_with("\r\n--" + boundary + "--\r\n"));
}

TEST_CASE("boundaries differ from one response to the next and stay within RFC 2046's 70") {
  const std::string a = new_boundary();
  CHECK(a != new_boundary());
  CHECK(a.size() <= 70);
}

TEST_CASE("an NDJSON line carries the response, its body as text or base64") {
  const json text = json::parse(ndjson_line(agent_result("web01", "u1", response(200, "héllo"))));
  CHECK(text["vm"] == "web01");
  CHECK(text["uuid"] == "u1");
  CHECK(text["class"] == "answered");
  CHECK(text["status"] == 200);
  CHECK(text["response"]["body"] == "héllo");
  CHECK(text["response"]["body_encoding"] == "utf-8");
  CHECK(text["response"]["headers"] ==
        json::parse(R"([["Content-Type","text/plain"],["X-Agent","test"]])"));
  const json binary = json::parse(
      ndjson_line(agent_result("web01", "u1", response(200, std::string("\xff\x00\x01", 3)))));
  CHECK(binary["response"]["body"] == "/wAB");
  CHECK(binary["response"]["body_encoding"] == "base64");
  const json failed = json::parse(ndjson_line(refused_result("db1", "", Refusal{504, "late"})));
  CHECK(failed["class"] == "timed_out");
  CHECK(failed["reason"] == "late");
  CHECK_FALSE(failed.contains("response"));
  CHECK(ndjson_line(refused_result("a", "", Refusal{502, "x\ny"})).find('\n') ==
        ndjson_line(refused_result("a", "", Refusal{502, "x\ny"})).size() - 1);
}

TEST_CASE("base64 pads the last group as RFC 4648 §4 does") {
  auto body_of = [](std::string bytes) {
    return json::parse(ndjson_line(
        agent_result("a", "u", response(200, std::move(bytes)))))["response"]["body"]
        .get<std::string>();
  };
  CHECK(body_of(std::string("\xff", 1)) == "/w==");
  CHECK(body_of(std::string("\xff\xfe", 2)) == "//4=");
  CHECK(body_of(std::string("\xff\xfe\xfd", 3)) == "//79");
}

TEST_CASE("NDJSON is chosen by Accept, unless at q=0") {
  CHECK(wants_ndjson("application/x-ndjson"));
  CHECK(wants_ndjson("text/plain, Application/X-NDJSON;q=0.5"));
  CHECK(wants_ndjson("application/x-ndjson; q=1"));
  CHECK_FALSE(wants_ndjson("application/x-ndjson;q=0"));
  CHECK_FALSE(wants_ndjson("application/x-ndjson;q=0.000"));
  CHECK_FALSE(wants_ndjson(""));
  CHECK_FALSE(wants_ndjson("*/*"));
  CHECK_FALSE(wants_ndjson("multipart/mixed"));
}

TEST_CASE("UTF-8 is told from bytes that are not") {
  CHECK(valid_utf8("plain ascii"));
  CHECK(valid_utf8("h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80"));
  CHECK_FALSE(valid_utf8("\xc0\xaf"));          // overlong '/'
  CHECK_FALSE(valid_utf8("\xed\xa0\x80"));      // a surrogate
  CHECK_FALSE(valid_utf8("\xf4\x90\x80\x80"));  // past U+10FFFF
  CHECK_FALSE(valid_utf8("\xe2\x82"));          // cut short
  CHECK_FALSE(valid_utf8("\xff"));
}
