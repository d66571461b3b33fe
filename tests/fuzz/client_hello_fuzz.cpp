// libFuzzer target for the SNI scan of passthrough listeners
// (hostd/route/client_hello.hpp).
//
// Every input is scanned whole and as each of a few prefixes (what hostd
// scans as a ClientHello arrives). Besides "no crash, no sanitizer report"
// (each scan gets a buffer of exactly its length, so ASan sees any read past
// it), it checks the properties serve_passthrough relies on:
//   - need_more asks for more bytes than it was given, so the read loop
//     always makes progress and stops at limits.client_hello_bytes;
//   - a name found is a valid, lowercase DNS hostname of at most 253 bytes;
//   - every other end has a reason for the log;
//   - a scan that ended does not change when more bytes follow (it reads
//     nothing past the ClientHello), and no whole ClientHello is shorter
//     than what a prefix of it said it needed.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <vector>

#include "hostd/route/client_hello.hpp"

using vmgate::hostd::ClientHelloScan;
using vmgate::hostd::scan_client_hello;
using vmgate::hostd::valid_sni_host_name;
using Status = ClientHelloScan::Status;

namespace {

void check(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "client_hello property violated: %s\n", what);
  std::abort();
}

ClientHelloScan scan_exactly(const std::uint8_t* data, std::size_t size) {
  std::vector<std::uint8_t> copy(data, data + size);  // no slack for a read past the end
  return scan_client_hello(std::span(copy.data(), copy.size()));
}

void check_one(const ClientHelloScan& r, std::size_t size) {
  switch (r.status) {
    case Status::need_more:
      check(r.need > size, "need_more asks for more than it has");
      break;
    case Status::found:
      check(valid_sni_host_name(r.name), "a found name is a DNS hostname");
      check(r.name.size() <= 253, "a found name is at most 253 bytes");
      for (char c : r.name)
        check(!(c >= 'A' && c <= 'Z'), "a found name is lowercase");
      break;
    case Status::no_sni:
    case Status::not_tls:
    case Status::malformed:
      check(!r.reason.empty(), "every end without a name has a reason");
      break;
  }
}

bool same(const ClientHelloScan& a, const ClientHelloScan& b) {
  return a.status == b.status && a.name == b.name && a.reason == b.reason &&
         (a.status != Status::need_more || a.need == b.need);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const ClientHelloScan whole = scan_exactly(data, size);
  check_one(whole, size);

  // Prefixes at a few cut points, as reads would deliver them.
  for (std::size_t cut : {std::size_t{1}, std::size_t{5}, std::size_t{9}, size / 2, size - 1}) {
    if (cut >= size) continue;
    const ClientHelloScan part = scan_exactly(data, cut);
    check_one(part, cut);
    if (part.status != Status::need_more) {
      check(same(part, whole), "an ended scan does not change with the bytes after it");
    } else if (part.need > size) {
      check(whole.status != Status::found && whole.status != Status::no_sni,
            "no whole ClientHello is shorter than a prefix's need");
    }
  }
  return 0;
}
