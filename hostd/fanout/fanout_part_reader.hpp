// Reading another host's results back, in a fan-out across hosts
// (docs/architecture.md, "Fan-out"): the host a remote VM runs on answers
// the one message it got with the NDJSON a client asking for it would get
// (fanout_result.hpp), one line per VM as each completes, then the summary.
// The first host reads that stream as it arrives, in pieces of any size.
//
// NDJSON rather than multipart: a line ends at the first '\n' (JSON escapes
// every line break inside a string), so finding a part is one search, with
// no boundary to learn and no headers to parse; a line is bounded before any
// of it is parsed, and each parsed line is checked member by member.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include <boost/system/result.hpp>

#include "hostd/fanout/fanout_result.hpp"

namespace vmgate::hostd {

// The longest line an answer of `max_response` bytes can make: JSON may
// write each byte of a body or a header as a six-byte \u escape.
std::size_t max_result_line(std::uint64_t max_response, std::size_t header_bytes);

class FanoutPartReader {
 public:
  explicit FanoutPartReader(std::size_t max_line) : max_line_(max_line) {}

  // Takes the next bytes of the stream; each VM result they complete is
  // appended to `out`. An error says why the stream cannot be read on (a
  // line too long or malformed, bytes after the summary): the results
  // already appended stand, the rest of the stream does not count.
  boost::system::result<void, std::string> feed(std::string_view bytes, std::vector<VmResult>& out);

  // The summary was read: the stream is whole.
  bool finished() const { return finished_; }

 private:
  std::size_t max_line_;
  std::string line_;  // a line begun and not yet ended
  bool finished_ = false;
  bool failed_ = false;
};

}  // namespace vmgate::hostd
