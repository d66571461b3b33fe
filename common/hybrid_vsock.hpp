// The host side of "hybrid vsock" (Firecracker, Cloud Hypervisor): the VMM
// exposes a guest's vsock device as one unix socket on the host; a host
// process connects to it, writes "CONNECT PORT\n" and the VMM answers
// "OK HOST_PORT\n" once the guest has accepted on PORT, after which the
// socket carries the guest connection's bytes. When nothing in the guest
// listens on PORT, the VMM closes the socket without answering.
//
// What is parsed here is what a VMM (or whatever listens on that socket)
// sends: a pure, bounded codec, fuzzed (tests/fuzz/hybrid_vsock_fuzz.cpp).
// transport::connect reads the answer with it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

#include <boost/system/error_code.hpp>
#include <boost/system/result.hpp>

namespace vmgate::hybrid_vsock {

// The longest answer line read, '\n' excluded: "OK 4294967295" is 13 bytes,
// so an answer this long is not one, and no VMM can make us read more.
inline constexpr std::size_t max_answer_bytes = 64;

// What the host writes first: "CONNECT 5500\n".
std::string connect_line(std::uint32_t port);

// Why the handshake failed, as an error_code (category "hybrid_vsock") whose
// message is the reason a 502 names.
enum class Error {
  closed = 1,  // the VMM closed the socket before its answer: nothing accepted on the port
  not_ok,      // the answer line is not "OK PORT"
  too_long,    // no '\n' within max_answer_bytes
};
const boost::system::error_category& category();
boost::system::error_code make_error_code(Error e);

// One answer line, without its '\n': "OK " and the host-side port the VMM
// gave the connection (decimal, 32 bits). Anything else is Error::not_ok;
// a line over max_answer_bytes is Error::too_long.
boost::system::result<std::uint32_t> parse_answer(std::string_view line);

}  // namespace vmgate::hybrid_vsock

template <>
struct boost::system::is_error_code_enum<vmgate::hybrid_vsock::Error> : std::true_type {};
