// libFuzzer target for the reader of another host's fan-out results
// (hostd/fanout/fanout_part_reader.hpp): the NDJSON a peer streams back to
// the first host, which any host of the cluster can write.
//
// The input is fed whole, then again in two pieces cut where its first byte
// says; besides "no crash, no sanitizer report", it checks that:
//   - how the stream is cut changes nothing: the same results, the same
//     verdict, finished or not;
//   - every result is one the encoder could have written (a status in
//     100..599), and writing it again with ndjson_line reads back the same;
//   - no line over the bound is ever parsed.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "hostd/fanout/fanout_part_reader.hpp"

namespace hostd = vmgate::hostd;

namespace {

void check(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "fanout part property violated: %s\n", what);
  std::abort();
}

constexpr std::size_t max_line = 2048;

struct Outcome {
  std::vector<hostd::VmResult> results;
  bool failed = false;
  bool finished = false;
};

Outcome read(std::string_view input, std::size_t cut) {
  hostd::FanoutPartReader reader(max_line);
  Outcome out;
  for (std::string_view piece : {input.substr(0, cut), input.substr(cut)}) {
    if (piece.empty()) continue;
    if (!reader.feed(piece, out.results)) {
      out.failed = true;
      break;
    }
  }
  out.finished = reader.finished();
  return out;
}

bool same(const hostd::VmResult& a, const hostd::VmResult& b) {
  if (a.name != b.name || a.uuid != b.uuid || a.vm_class != b.vm_class || a.status != b.status ||
      a.reason != b.reason || a.elapsed != b.elapsed || bool(a.response) != bool(b.response))
    return false;
  if (!a.response) return true;
  return a.response->status == b.response->status && a.response->body == b.response->body &&
         a.response->fields.size() == b.response->fields.size();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  const Outcome whole = read(input, input.size());
  const std::size_t cut = size == 0 ? 0 : data[0] % (size + 1);
  const Outcome pieces = read(input, cut);
  check(whole.failed == pieces.failed, "the verdict does not depend on the cut");
  check(whole.finished == pieces.finished, "finishing does not depend on the cut");
  check(whole.results.size() == pieces.results.size(), "the results do not depend on the cut");
  for (std::size_t i = 0; i < whole.results.size(); ++i) {
    const hostd::VmResult& r = whole.results[i];
    check(same(r, pieces.results[i]), "the same results whatever the cut");
    check(r.status >= 100 && r.status <= 599, "a status in 100..599");
    check(hostd::class_name(r.vm_class).size() > 0, "a known class");
    std::string line = hostd::ndjson_line(r);
    check(!line.empty() && line.back() == '\n', "a line is written whole");
    line.pop_back();
    if (!hostd::valid_utf8(r.name) || !hostd::valid_utf8(r.uuid) || !hostd::valid_utf8(r.reason))
      continue;  // JSON replaced what was not UTF-8: not read back the same
    if (r.response) {
      bool text = hostd::valid_utf8(r.response->reason);
      for (const auto& [name, value] : r.response->fields)
        text = text && hostd::valid_utf8(name) && hostd::valid_utf8(value);
      if (!text) continue;
    }
    auto again = hostd::parse_ndjson_line(line);
    check(again && again->result && same(*again->result, r), "a result written again reads back");
  }
  return 0;
}
