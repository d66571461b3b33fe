// The server side of the BITS upload protocol (MS-BPAU, "BITS Upload
// Protocol"), as an IIS BITS extension answers a Windows BITS client: every
// packet is a BITS_POST request whose BITS-Packet-Type header says what it is.
//
//   Ping            Ack
//   Create-Session  Ack with BITS-Session-Id and BITS-Protocol, the upload
//                   protocol being one of BITS-Supported-Protocols
//   Fragment        Content-Range: bytes A-B/TOTAL and B-A+1 body bytes,
//                   written at A into the session's file; Ack with
//                   BITS-Received-Content-Range: the bytes held so far
//   Close-Session   the file complete: renamed to DIR/NAME (NAME: the last
//                   segment of the request path); the Ack carries
//                   X-Content-SHA256 and X-Content-Length of what was assembled
//   Cancel-Session  the partial file removed
//
// Fragments come in order from offset 0; the server keeps one received length
// per session, not a set of ranges. A fragment that starts past it leaves a
// gap: 416 with the length held, so the client resends from there. One that
// overlaps what is held has only its new part written: BITS never overwrites
// content it already has. A fragment whose body ends early (the client died)
// is not counted, so the session cannot be closed until it is resent.
// Errors are the status with BITS-Error-Code (an HRESULT) and
// BITS-Error-Context, as the BITS server sends them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <boost/beast/http/message.hpp>
#include <boost/beast/http/status.hpp>

namespace vmgate::test_agent::bits {

namespace http = boost::beast::http;

// The BITS 1.5 upload protocol's identifier (MS-BPAU 2.2.1).
inline constexpr std::string_view upload_protocol = "{7df0354d-249b-430f-820d-3d2a9bef4931}";
inline constexpr std::string_view method = "BITS_POST";

// A response to one packet: its status, the headers to set, a short text body.
struct Reply {
  http::status status = http::status::ok;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
};

struct Session;

// One Fragment packet being received: write() takes the body piece by piece
// and writes the part the session does not yet hold; finish() counts the
// fragment, once its whole body arrived. Dropped unfinished, it counts for
// nothing and the session takes fragments again.
class Fragment {
 public:
  Fragment(std::shared_ptr<Session> session, std::uint64_t first, std::uint64_t last);
  Fragment(Fragment&& other) noexcept;
  Fragment& operator=(Fragment&&) = delete;
  ~Fragment();

  // false: the file could not be written (the fragment then fails at finish).
  bool write(const char* data, std::size_t size);
  // The Ack, or an error when the body's length does not match Content-Range.
  Reply finish(std::uint64_t body_bytes);

 private:
  std::shared_ptr<Session> session_;
  std::uint64_t first_;
  std::uint64_t last_;
  std::uint64_t offset_;  // where the next body byte belongs in the file
  bool write_failed_ = false;
};

// Every session of one agent; safe to use from several threads.
class Uploads {
 public:
  // Sessions assemble in `dir` (empty: BITS_POST is refused).
  explicit Uploads(std::string dir);
  ~Uploads();

  // A Fragment packet whose head is acceptable, to read the body into;
  // anything else (other packets, and fragments refused on their head)
  // answered at once, after the caller has skipped any body.
  std::variant<Reply, Fragment> receive(const http::request_header<>& head, std::string_view path);

 private:
  Reply create_session(const http::request_header<>& head, std::string_view path);
  std::variant<Reply, Fragment> fragment(const http::request_header<>& head);
  Reply close_session(const http::request_header<>& head);
  Reply cancel_session(const http::request_header<>& head);
  std::shared_ptr<Session> find(const http::request_header<>& head, Reply& error);

  std::string dir_;
  std::mutex mutex_;
  std::map<std::string, std::shared_ptr<Session>, std::less<>> sessions_;
};

// "bytes A-B/TOTAL" (RFC 9110 §14.4; BITS writes "Bytes"): {A, B, TOTAL}.
struct ContentRange {
  std::uint64_t first;
  std::uint64_t last;
  std::uint64_t total;
};
std::optional<ContentRange> parse_content_range(std::string_view text);

}  // namespace vmgate::test_agent::bits
