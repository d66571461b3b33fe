#include "tests/agents/bits_upload.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <memory>

#include <fmt/format.h>
#include <openssl/rand.h>
#include <boost/beast/core/string.hpp>

#include "tests/agents/agent_content.hpp"

namespace vmgate::test_agent::bits {

namespace beast = boost::beast;

namespace {

// More open sessions than this are refused: a client that never closes its
// sessions must not make the agent hold descriptors without end.
constexpr std::size_t max_sessions = 256;

// HRESULTs in BITS-Error-Code (MS-BPAU 2.2.2.4): the argument (header, range,
// session) is wrong, or the server failed.
constexpr std::string_view e_invalidarg = "0x80070057";
constexpr std::string_view e_fail = "0x80004005";
// BITS-Error-Context: BG_ERROR_CONTEXT_REMOTE_FILE, the server's side.
constexpr std::string_view context_remote_file = "0x5";

Reply ack() {
  Reply r;
  r.headers.emplace_back("BITS-Packet-Type", "Ack");
  return r;
}

Reply error(http::status status, std::string_view code, std::string message) {
  Reply r = ack();
  r.status = status;
  r.headers.emplace_back("BITS-Error-Code", std::string(code));
  r.headers.emplace_back("BITS-Error-Context", std::string(context_remote_file));
  r.body = std::move(message) + "\n";
  return r;
}

std::string new_session_id() {
  std::array<unsigned char, 16> b{};
  if (RAND_bytes(b.data(), static_cast<int>(b.size())) != 1) std::abort();
  b[6] = static_cast<unsigned char>((b[6] & 0x0F) | 0x40);  // a version 4 GUID
  b[8] = static_cast<unsigned char>((b[8] & 0x3F) | 0x80);
  return fmt::format(
      "{{{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-"
      "{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}}}",
      b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
      b[15]);
}

// The remote file name: the last segment of the path, plain characters only,
// so that it cannot leave the directory.
std::optional<std::string> file_name(std::string_view path) {
  auto name = path.substr(path.rfind('/') + 1);
  if (name.empty() || name.front() == '.' || name.size() > 200) return std::nullopt;
  for (char c : name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-'))
      return std::nullopt;
  return std::string(name);
}

bool write_all(int fd, const char* data, std::size_t size, std::uint64_t offset) {
  while (size > 0) {
    ssize_t n = ::pwrite(fd, data, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data += n;
    size -= static_cast<std::size_t>(n);
    offset += static_cast<std::uint64_t>(n);
  }
  return true;
}

}  // namespace

struct Session {
  std::string id;
  std::string final_path;
  std::string part_path;
  int fd = -1;
  std::mutex mutex;
  std::optional<std::uint64_t> total;  // from the first fragment's Content-Range
  std::uint64_t received = 0;          // bytes 0 .. received-1 are in the file
  bool busy = false;                   // a fragment is being received

  ~Session() {
    if (fd >= 0) ::close(fd);
  }
};

std::optional<ContentRange> parse_content_range(std::string_view text) {
  constexpr std::string_view unit = "bytes ";
  if (text.size() <= unit.size() || !beast::iequals(text.substr(0, unit.size()), unit))
    return std::nullopt;
  text.remove_prefix(unit.size());
  auto dash = text.find('-');
  auto slash = text.find('/');
  if (dash == std::string_view::npos || slash == std::string_view::npos || slash < dash)
    return std::nullopt;
  auto first = parse_u64(text.substr(0, dash));
  auto last = parse_u64(text.substr(dash + 1, slash - dash - 1));
  auto total = parse_u64(text.substr(slash + 1));
  if (!first || !last || !total || *first > *last || *last >= *total) return std::nullopt;
  return ContentRange{*first, *last, *total};
}

// -- Fragment ------------------------------------------------------------------

Fragment::Fragment(std::shared_ptr<Session> session, std::uint64_t first, std::uint64_t last)
    : session_(std::move(session)), first_(first), last_(last), offset_(first) {}

Fragment::Fragment(Fragment&& other) noexcept
    : session_(std::move(other.session_)),
      first_(other.first_),
      last_(other.last_),
      offset_(other.offset_),
      write_failed_(other.write_failed_) {}

Fragment::~Fragment() {
  if (!session_) return;
  std::lock_guard lock(session_->mutex);
  session_->busy = false;
}

bool Fragment::write(const char* data, std::size_t size) {
  // Only this fragment changes `received` while it is busy: no lock needed
  // to read it, and the bytes below it are never written again.
  const std::uint64_t held = session_->received;
  const std::uint64_t begin = offset_;
  offset_ += size;
  // Bytes past the range's end are not the file's (finish() refuses them).
  const std::uint64_t end = std::min(offset_, last_ + 1);
  const std::uint64_t from = std::max(begin, held);
  if (from >= end || write_failed_) return !write_failed_;
  if (!write_all(session_->fd, data + (from - begin), static_cast<std::size_t>(end - from), from))
    write_failed_ = true;
  return !write_failed_;
}

Reply Fragment::finish(std::uint64_t body_bytes) {
  auto session = std::move(session_);
  std::lock_guard lock(session->mutex);
  session->busy = false;
  if (write_failed_)
    return error(http::status::internal_server_error, e_fail, "cannot write the session's file");
  if (body_bytes != last_ - first_ + 1)
    return error(http::status::bad_request, e_invalidarg,
                 fmt::format("the fragment's body has {} bytes, its Content-Range {}", body_bytes,
                             last_ - first_ + 1));
  session->received = std::max(session->received, last_ + 1);
  Reply r = ack();
  r.headers.emplace_back("BITS-Session-Id", session->id);
  r.headers.emplace_back("BITS-Received-Content-Range", std::to_string(session->received));
  return r;
}

// -- Uploads -------------------------------------------------------------------

Uploads::Uploads(std::string dir) : dir_(std::move(dir)) {}

Uploads::~Uploads() {
  for (auto& [id, session] : sessions_)
    ::unlink(session->part_path.c_str());
}

std::variant<Reply, Fragment> Uploads::receive(const http::request_header<>& head,
                                               std::string_view path) {
  if (dir_.empty())
    return error(http::status::not_implemented, e_fail, "this agent has no --bits-dir");
  const std::string_view type = head["BITS-Packet-Type"];
  if (beast::iequals(type, "Ping")) return ack();
  if (beast::iequals(type, "Create-Session")) return create_session(head, path);
  if (beast::iequals(type, "Fragment")) return fragment(head);
  if (beast::iequals(type, "Close-Session")) return close_session(head);
  if (beast::iequals(type, "Cancel-Session")) return cancel_session(head);
  return error(http::status::bad_request, e_invalidarg,
               fmt::format("unknown BITS-Packet-Type '{}'", type));
}

Reply Uploads::create_session(const http::request_header<>& head, std::string_view path) {
  // BITS-Supported-Protocols lists the client's protocol GUIDs, space-separated.
  const std::string_view offered = head["BITS-Supported-Protocols"];
  bool supported = false;
  for (std::size_t at = 0; at < offered.size();) {
    auto end = std::min(offered.find(' ', at), offered.size());
    supported |= beast::iequals(offered.substr(at, end - at), upload_protocol);
    at = end + 1;
  }
  if (!supported)
    return error(http::status::bad_request, e_invalidarg,
                 fmt::format("no supported protocol in '{}'", offered));
  auto name = file_name(path);
  if (!name)
    return error(http::status::bad_request, e_invalidarg,
                 fmt::format("'{}' does not end in a plain file name", path));
  auto session = std::make_shared<Session>();
  session->id = new_session_id();
  session->final_path = dir_ + "/" + *name;
  session->part_path = fmt::format("{}/.{}.{}.part", dir_, *name, session->id);
  {
    std::lock_guard lock(mutex_);
    if (sessions_.size() >= max_sessions)
      return error(http::status::service_unavailable, e_fail,
                   fmt::format("{} sessions are open already", max_sessions));
    session->fd = ::open(session->part_path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (session->fd < 0)
      return error(http::status::internal_server_error, e_fail,
                   fmt::format("cannot create {}", session->part_path));
    sessions_.emplace(session->id, session);
  }
  Reply r = ack();
  r.headers.emplace_back("BITS-Protocol", std::string(upload_protocol));
  r.headers.emplace_back("BITS-Session-Id", session->id);
  r.headers.emplace_back("Accept-Encoding", "Identity");
  return r;
}

std::shared_ptr<Session> Uploads::find(const http::request_header<>& head, Reply& failure) {
  const std::string_view id = head["BITS-Session-Id"];
  std::lock_guard lock(mutex_);
  auto it = sessions_.find(id);
  if (it != sessions_.end()) return it->second;
  failure = error(http::status::bad_request, e_invalidarg, fmt::format("no session '{}'", id));
  return nullptr;
}

std::variant<Reply, Fragment> Uploads::fragment(const http::request_header<>& head) {
  Reply failure;
  auto session = find(head, failure);
  if (!session) return failure;
  auto range = parse_content_range(head[http::field::content_range]);
  if (!range)
    return error(http::status::bad_request, e_invalidarg,
                 fmt::format("Content-Range '{}' is not bytes A-B/TOTAL",
                             std::string_view(head[http::field::content_range])));
  std::lock_guard lock(session->mutex);
  if (session->busy)
    return error(http::status::conflict, e_invalidarg,
                 "another fragment of this session is being received");
  if (session->total && *session->total != range->total)
    return error(
        http::status::bad_request, e_invalidarg,
        fmt::format("the total {} differs from the session's {}", range->total, *session->total));
  if (range->first > session->received) {
    // Fragments come in order; the server keeps no ranges past a gap.
    Reply r = error(http::status::range_not_satisfiable, e_invalidarg,
                    fmt::format("the fragment starts at {}; {} bytes are held", range->first,
                                session->received));
    r.headers.emplace_back("BITS-Session-Id", session->id);
    r.headers.emplace_back("BITS-Received-Content-Range", std::to_string(session->received));
    return r;
  }
  session->total = range->total;
  session->busy = true;
  return Fragment(std::move(session), range->first, range->last);
}

Reply Uploads::close_session(const http::request_header<>& head) {
  Reply failure;
  auto session = find(head, failure);
  if (!session) return failure;
  std::lock_guard lock(session->mutex);
  const std::uint64_t total = session->total.value_or(0);
  if (session->busy || session->received != total)
    return error(http::status::bad_request, e_invalidarg,
                 fmt::format("the file is incomplete: {} of {} bytes", session->received, total));
  // The digest of the file as assembled on disk, read back from it.
  Sha256 sha;
  auto block = std::make_unique<char[]>(piece_size);
  for (std::uint64_t at = 0; at < total;) {
    ssize_t n = ::pread(session->fd, block.get(), piece_size, static_cast<off_t>(at));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      return error(http::status::internal_server_error, e_fail, "cannot read the file back");
    sha.update(block.get(), static_cast<std::size_t>(n));
    at += static_cast<std::uint64_t>(n);
  }
  if (std::rename(session->part_path.c_str(), session->final_path.c_str()) != 0)
    return error(http::status::internal_server_error, e_fail,
                 fmt::format("cannot rename to {}", session->final_path));
  {
    std::lock_guard sessions_lock(mutex_);
    sessions_.erase(session->id);
  }
  Reply r = ack();
  r.headers.emplace_back("BITS-Session-Id", session->id);
  r.headers.emplace_back("X-Content-SHA256", sha.hex());
  r.headers.emplace_back("X-Content-Length", std::to_string(total));
  return r;
}

Reply Uploads::cancel_session(const http::request_header<>& head) {
  Reply failure;
  auto session = find(head, failure);
  if (!session) return failure;
  ::unlink(session->part_path.c_str());
  {
    std::lock_guard lock(mutex_);
    sessions_.erase(session->id);
  }
  Reply r = ack();
  r.headers.emplace_back("BITS-Session-Id", session->id);
  return r;
}

}  // namespace vmgate::test_agent::bits
