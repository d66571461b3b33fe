#include "common/hybrid_vsock.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>

#include <doctest/doctest.h>

#include "common/transport.hpp"

namespace hv = vmgate::hybrid_vsock;
using vmgate::awaitable;
using vmgate::error_code;
using vmgate::Stream;
namespace asio = vmgate::asio;

TEST_CASE("the host asks the VMM for a guest port with one CONNECT line") {
  CHECK(hv::connect_line(5500) == "CONNECT 5500\n");
  CHECK(hv::connect_line(4294967294u) == "CONNECT 4294967294\n");
}

TEST_CASE("an OK answer gives the host-side port the VMM chose") {
  auto firecracker = hv::parse_answer("OK 1073741824");
  REQUIRE(firecracker.has_value());
  CHECK(*firecracker == 1073741824u);
  CHECK(hv::parse_answer("OK 0").value() == 0u);
  CHECK(hv::parse_answer("OK 4294967295").value() == 4294967295u);
}

TEST_CASE("an answer that is not OK and a port is refused as not OK") {
  for (const char* line :
       {"", "OK", "OK ", "ok 1", "OK  1", " OK 1", "OK -1", "OK +1", "OK 1x", "OK 1 ", "OK 1\r",
        "OK 4294967296", "OK 99999999999999999999", "FAILURE", "CONNECT 5500", "OK\t1"}) {
    auto answer = hv::parse_answer(line);
    REQUIRE_MESSAGE(!answer.has_value(), "'" << line << "'");
    CHECK(answer.error() == hv::Error::not_ok);
  }
}

TEST_CASE("an answer line longer than the bound is refused as too long, whatever it holds") {
  std::string line = "OK " + std::string(hv::max_answer_bytes, '1');
  CHECK(hv::parse_answer(line).error() == hv::Error::too_long);
  std::string at_bound = "OK " + std::string(hv::max_answer_bytes - 3, '9');
  CHECK(hv::parse_answer(at_bound).error() == hv::Error::not_ok);  // too large a number
}

TEST_CASE("each handshake failure says what the VMM did, in its own words") {
  error_code closed = hv::Error::closed;
  error_code not_ok = hv::Error::not_ok;
  error_code too_long = hv::Error::too_long;
  CHECK(std::string(closed.category().name()) == "hybrid_vsock");
  CHECK(closed.message().find("closed the hybrid vsock socket without answering") !=
        std::string::npos);
  CHECK(not_ok.message().find("something other than 'OK PORT'") != std::string::npos);
  CHECK(too_long.message().find("longer than 64 bytes") != std::string::npos);
  CHECK(closed != not_ok);
}

namespace {

// A stand-in for the VMM's side of one hybrid vsock socket: accepts one
// connection, reads the CONNECT line and writes `answer`, then `after` (the
// guest's first bytes), and closes only if `close` says so.
struct StandInVmm {
  std::filesystem::path dir;
  std::string path;
  StandInVmm() {
    char tmpl[] = "/tmp/vmgate-hybrid-vsock-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    dir = tmpl;
    path = (dir / "v.sock").string();
  }
  ~StandInVmm() { std::filesystem::remove_all(dir); }
};

struct Handshake {
  error_code ec = asio::error::would_block;
  std::string request;      // what the VMM read
  std::string guest_bytes;  // what the host read after the handshake
};

Handshake run_handshake(const std::string& answer, bool close_after) {
  StandInVmm vmm;
  asio::io_context io;
  error_code ec;
  auto listening = vmgate::transport::parse("unix:" + vmm.path);
  REQUIRE(listening.has_value());
  auto acceptor = vmgate::transport::listen(io.get_executor(), *listening, ec);
  REQUIRE_FALSE(ec);
  Handshake result;
  asio::co_spawn(
      io,
      [&]() -> awaitable<void> {
        auto [aec, peer] = co_await acceptor.async_accept(vmgate::use_tuple);
        if (aec) co_return;
        std::string line;
        char c = 0;
        while (line.size() < 100) {
          auto [rec, n] = co_await asio::async_read(peer, asio::buffer(&c, 1), vmgate::use_tuple);
          if (rec || c == '\n') break;
          line.push_back(c);
        }
        result.request = line;
        std::string out = answer + "guest";
        co_await asio::async_write(peer, asio::buffer(out), vmgate::use_tuple);
        if (close_after) co_return;
        // Held open until the host side is done.
        asio::steady_timer hold(peer.get_executor(), std::chrono::milliseconds(200));
        co_await hold.async_wait(vmgate::use_tuple);
      },
      asio::detached);
  auto address = vmgate::transport::parse("fcvsock:" + vmm.path + ":5500");
  REQUIRE(address.has_value());
  asio::co_spawn(
      io,
      [&]() -> awaitable<void> {
        auto [cec, stream] = co_await vmgate::transport::connect(*address);
        result.ec = cec;
        if (cec) co_return;
        char buf[5];
        auto [rec, n] = co_await asio::async_read(stream, asio::buffer(buf), vmgate::use_tuple);
        if (!rec) result.guest_bytes.assign(buf, n);
      },
      asio::detached);
  io.run();
  return result;
}

}  // namespace

TEST_CASE("an fcvsock connect writes CONNECT PORT and leaves the guest's bytes unread") {
  auto r = run_handshake("OK 1073741824\n", false);
  CHECK_FALSE(r.ec);
  CHECK(r.request == "CONNECT 5500");
  // Nothing after the answer's newline belongs to the handshake.
  CHECK(r.guest_bytes == "guest");
}

TEST_CASE("an fcvsock VMM that closes without answering is a refusal, not a bare EOF") {
  auto r = run_handshake("", true);
  CHECK(r.ec == hv::Error::closed);
}

TEST_CASE("an fcvsock VMM that answers garbage fails the connect as not OK") {
  CHECK(run_handshake("HELLO\n", false).ec == hv::Error::not_ok);
  CHECK(run_handshake("OK\n", false).ec == hv::Error::not_ok);
}

TEST_CASE("an fcvsock answer without a newline is read no further than the bound") {
  auto r = run_handshake("OK " + std::string(1000, '7'), false);
  CHECK(r.ec == hv::Error::too_long);
}
