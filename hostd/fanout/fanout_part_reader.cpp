#include "hostd/fanout/fanout_part_reader.hpp"

#include <fmt/format.h>

namespace vmgate::hostd {

std::size_t max_result_line(std::uint64_t max_response, std::size_t header_bytes) {
  // The fixed members and a hostd reason are well within the 4 KiB added.
  return static_cast<std::size_t>(6 * (max_response + header_bytes) + 4096);
}

boost::system::result<void, std::string> FanoutPartReader::feed(std::string_view bytes,
                                                                std::vector<VmResult>& out) {
  if (failed_) return std::string("the stream failed already");
  auto fail = [this](std::string why) -> boost::system::result<void, std::string> {
    failed_ = true;
    line_.clear();
    return why;
  };
  while (!bytes.empty()) {
    if (finished_) return fail("bytes after the summary");
    const std::size_t end = bytes.find('\n');
    const std::size_t take = end == std::string_view::npos ? bytes.size() : end;
    if (line_.size() + take > max_line_)
      return fail(fmt::format("a result line over {} bytes", max_line_));
    line_.append(bytes.substr(0, take));
    if (end == std::string_view::npos) break;
    bytes.remove_prefix(end + 1);
    auto parsed = parse_ndjson_line(line_);
    line_.clear();
    if (!parsed) return fail("a malformed result line");
    if (parsed->result) {
      out.push_back(std::move(*parsed->result));
    } else {
      finished_ = true;
    }
  }
  return {};
}

}  // namespace vmgate::hostd
