// vmgate-fanout-standin: one process standing in for many guestds, for the
// fan-out benchmark (bench/fanout/run). It listens on DIR/PREFIXNNNNN.sock for
// N names, as hostd's `unix:DIR/{name}.sock` transport template expects,
// answers each channel's preamble as guestd does (common/preamble.hpp: the
// same parser, so a malformed preamble is refused as guestd would), reads
// one HTTP request and answers a tiny response, then closes the channel.
// Closing (Connection: close) keeps descriptors at what is in flight rather
// than one pooled channel per VM: 10,000 listening sockets are enough.
//
//   vmgate-fanout-standin --dir DIR --prefix vm --count 10000
//
// Prints `listening N` once every socket accepts.
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "common/asio.hpp"
#include "common/preamble.hpp"
#include "common/transport.hpp"

using namespace vmgate;
namespace http = boost::beast::http;

namespace {

awaitable<void> session(Stream s) {
  std::string in;
  auto [ec, n] = co_await asio::async_read_until(s, asio::dynamic_buffer(in, preamble::max_bytes),
                                                 preamble::terminator, use_tuple);
  if (ec) co_return;
  auto request = preamble::parse_request(std::string_view(in).substr(0, n));
  if (!request || request->verb != preamble::Verb::connect) {
    const std::string no = preamble::encode(preamble::Response{400, "bad-preamble", {}});
    co_await asio::async_write(s, asio::buffer(no), use_tuple);
    co_return;
  }
  in.erase(0, n);
  static const std::string ok = preamble::encode(preamble::Response{});
  co_await asio::async_write(s, asio::buffer(ok), use_tuple);
  boost::beast::flat_buffer buffer;
  buffer.commit(asio::buffer_copy(buffer.prepare(in.size()), asio::buffer(in)));
  http::request_parser<http::string_body> req;
  req.body_limit(64 * 1024 * 1024);
  auto [rec, rn] = co_await http::async_read(s, buffer, req, use_tuple);
  if (rec) co_return;
  static constexpr std::string_view answer =
      "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: "
      "close\r\n\r\nok\n";
  co_await asio::async_write(s, asio::buffer(answer.data(), answer.size()), use_tuple);
  error_code ignored;
  s.shutdown(Stream::shutdown_send, ignored);
}

awaitable<void> accept_loop(Acceptor& acceptor) {
  for (;;) {
    auto [ec, s] = co_await acceptor.async_accept(use_tuple);
    if (ec == asio::error::operation_aborted) co_return;
    if (ec) continue;  // EMFILE and the like: the next accept may do
    asio::co_spawn(acceptor.get_executor(), session(std::move(s)), asio::detached);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir;
  std::string prefix = "vm";
  unsigned long count = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--dir")
      dir = argv[i + 1];
    else if (a == "--prefix")
      prefix = argv[i + 1];
    else if (a == "--count")
      count = std::strtoul(argv[i + 1], nullptr, 10);
  }
  if (dir.empty() || count == 0) {
    std::cerr << "usage: vmgate-fanout-standin --dir DIR [--prefix vm] --count N\n";
    return 2;
  }
  asio::io_context io(1);
  std::vector<std::unique_ptr<Acceptor>> acceptors;
  acceptors.reserve(count);
  for (unsigned long i = 1; i <= count; ++i) {
    auto address = transport::parse(fmt::format("unix:{}/{}{:05}.sock", dir, prefix, i));
    if (!address) {
      std::cerr << address.error() << "\n";
      return 1;
    }
    error_code ec;
    acceptors.push_back(
        std::make_unique<Acceptor>(transport::listen(io.get_executor(), *address, ec)));
    if (ec) {
      std::cerr << fmt::format("{}: {}\n", address->to_string(), ec.message());
      return 1;
    }
    asio::co_spawn(io, accept_loop(*acceptors.back()), asio::detached);
  }
  std::cout << "listening " << count << std::endl;
  io.run();
}
