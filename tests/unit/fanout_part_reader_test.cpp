// FanoutPartReader and parse_ndjson_line: another host's results, as its
// NDJSON arrives in pieces of any size, read back into the results that
// were written, and anything else refused before it can count.
#include "hostd/fanout/fanout_part_reader.hpp"

#include <doctest/doctest.h>

using namespace vmgate::hostd;

namespace {

VmResult answered(std::string name, std::string uuid, std::string body) {
  AgentResponse r;
  r.status = 200;
  r.reason = "OK";
  r.fields = {{"Content-Type", "text/plain"}, {"X-Agent", "test"}};
  r.body = std::move(body);
  VmResult result = agent_result(std::move(name), std::move(uuid), std::move(r));
  result.elapsed = std::chrono::milliseconds(12);
  return result;
}

std::string stream_of(const std::vector<VmResult>& results) {
  std::string out;
  FanoutSummary summary;
  for (const VmResult& r : results) {
    out += ndjson_line(r);
    summary.add(r);
  }
  out += ndjson_summary(summary, "5b2c0e9a", std::chrono::milliseconds(40));
  return out;
}

const std::string uuid1 = "aaaaaaaa-0000-0000-0000-000000000001";
const std::string uuid2 = "aaaaaaaa-0000-0000-0000-000000000002";

}  // namespace

TEST_CASE("results written as NDJSON are read back whole, whatever pieces the stream comes in") {
  VmResult refused = refused_result("web02", uuid2, Refusal{502, "guestd on vm web02 is gone"});
  const std::vector<VmResult> written = {answered("web01", uuid1, "hello from web01\n"), refused};
  const std::string stream = stream_of(written);
  for (std::size_t piece : {std::size_t(1), std::size_t(7), std::size_t(100), stream.size()}) {
    FanoutPartReader reader(max_result_line(1024 * 1024, 32 * 1024));
    std::vector<VmResult> read;
    for (std::size_t at = 0; at < stream.size(); at += piece) {
      CHECK_FALSE(reader.finished());
      REQUIRE(reader.feed(std::string_view(stream).substr(at, piece), read));
    }
    CHECK(reader.finished());
    REQUIRE(read.size() == 2);
    CHECK(read[0].name == "web01");
    CHECK(read[0].uuid == uuid1);
    CHECK(read[0].vm_class == VmClass::answered);
    CHECK(read[0].status == 200);
    CHECK(read[0].elapsed.count() == 12);
    REQUIRE(read[0].response);
    CHECK(read[0].response->reason == "OK");
    CHECK(read[0].response->fields == written[0].response->fields);
    CHECK(read[0].response->body == "hello from web01\n");
    CHECK(read[1].vm_class == VmClass::unreachable);
    CHECK(read[1].status == 502);
    CHECK(read[1].reason == "guestd on vm web02 is gone");
    CHECK_FALSE(read[1].response);
  }
}

TEST_CASE("a body that is not UTF-8 comes back from another host byte for byte") {
  std::string binary;
  for (int i = 0; i < 256; ++i)
    binary += static_cast<char>(i);
  for (std::size_t cut : {std::size_t(0), std::size_t(1), std::size_t(2)}) {
    const std::string body = binary.substr(0, binary.size() - cut);
    auto line = ndjson_line(answered("web01", uuid1, body));
    REQUIRE(line.find("\"base64\"") != std::string::npos);
    line.pop_back();  // the line end
    auto parsed = parse_ndjson_line(line);
    REQUIRE(parsed);
    REQUIRE(parsed->result);
    CHECK(parsed->result->response->body == body);
  }
}

TEST_CASE("a result line over the bound is refused before it is parsed") {
  FanoutPartReader reader(64);
  std::vector<VmResult> read;
  const std::string line = ndjson_line(answered("web01", uuid1, std::string(100, 'x')));
  auto fed = reader.feed(line.substr(0, 50), read);
  CHECK(fed);
  fed = reader.feed(line.substr(50), read);
  REQUIRE_FALSE(fed);
  CHECK(fed.error().find("over 64 bytes") != std::string::npos);
  CHECK(read.empty());
  CHECK_FALSE(reader.feed("{}\n", read));  // nothing more is read
}

TEST_CASE("a malformed line ends another host's stream, and the results before it stand") {
  FanoutPartReader reader(4096);
  std::vector<VmResult> read;
  const std::string stream = ndjson_line(answered("web01", uuid1, "ok")) + "not json\n";
  auto fed = reader.feed(stream, read);
  REQUIRE_FALSE(fed);
  CHECK(fed.error() == "a malformed result line");
  CHECK(read.size() == 1);
  CHECK_FALSE(reader.finished());
}

TEST_CASE("bytes after another host's summary are refused") {
  FanoutPartReader reader(4096);
  std::vector<VmResult> read;
  const std::string stream = stream_of({}) + ndjson_line(answered("web01", uuid1, "late"));
  auto fed = reader.feed(stream, read);
  REQUIRE_FALSE(fed);
  CHECK(fed.error() == "bytes after the summary");
  CHECK(read.empty());
}

TEST_CASE(
    "a result line is refused for an unknown class, a bad status, a wrong type or bad base64") {
  const std::string good = R"({"vm":"web01","uuid":"u","class":"answered","status":200,"ms":3})";
  REQUIRE(parse_ndjson_line(good));
  CHECK_FALSE(
      parse_ndjson_line(R"({"vm":"web01","uuid":"u","class":"happy","status":200,"ms":3})"));
  CHECK_FALSE(
      parse_ndjson_line(R"({"vm":"web01","uuid":"u","class":"answered","status":99,"ms":3})"));
  CHECK_FALSE(
      parse_ndjson_line(R"({"vm":"web01","uuid":"u","class":"answered","status":600,"ms":3})"));
  CHECK_FALSE(parse_ndjson_line(R"({"vm":1,"uuid":"u","class":"answered","status":200,"ms":3})"));
  CHECK_FALSE(parse_ndjson_line(R"({"uuid":"u","class":"answered","status":200,"ms":3})"));
  CHECK_FALSE(
      parse_ndjson_line(R"({"vm":"a","uuid":"u","class":"answered","status":200,"ms":-1})"));
  CHECK_FALSE(parse_ndjson_line(
      R"({"vm":"a","uuid":"u","class":"answered","status":200,"ms":3,"response":{"status":200,)"
      R"("reason":"OK","headers":[],"body":"!!!!","body_encoding":"base64"}})"));
  CHECK_FALSE(parse_ndjson_line(
      R"({"vm":"a","uuid":"u","class":"answered","status":200,"ms":3,"response":{"status":200,)"
      R"("reason":"OK","headers":[["a"]],"body":"","body_encoding":"utf-8"}})"));
  CHECK_FALSE(parse_ndjson_line(R"({"summary":false})"));
  CHECK_FALSE(parse_ndjson_line("[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]"));
  CHECK_FALSE(parse_ndjson_line(""));
  auto summary = parse_ndjson_line(R"({"summary":true,"vms":0})");
  REQUIRE(summary);
  CHECK_FALSE(summary->result);
}
