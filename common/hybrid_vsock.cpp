#include "common/hybrid_vsock.hpp"

#include <charconv>

#include <fmt/format.h>

namespace vmgate::hybrid_vsock {
namespace {

// boost::system::error_category's destructor is protected and non-virtual by
// design (categories are never deleted through a base pointer), which
// -Wnon-virtual-dtor cannot tell.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnon-virtual-dtor"
class Category final : public boost::system::error_category {
 public:
  const char* name() const noexcept override { return "hybrid_vsock"; }
  std::string message(int value) const override {
    switch (static_cast<Error>(value)) {
      case Error::closed:
        return "the VMM closed the hybrid vsock socket without answering CONNECT (nothing "
               "accepts on that port in the guest)";
      case Error::not_ok:
        return "the VMM answered CONNECT with something other than 'OK PORT'";
      case Error::too_long:
        return fmt::format("the VMM's answer to CONNECT is longer than {} bytes", max_answer_bytes);
    }
    return "hybrid vsock handshake failed";
  }
};
#pragma GCC diagnostic pop

}  // namespace

const boost::system::error_category& category() {
  static const Category instance;
  return instance;
}

boost::system::error_code make_error_code(Error e) {
  return {static_cast<int>(e), category()};
}

std::string connect_line(std::uint32_t port) {
  return fmt::format("CONNECT {}\n", port);
}

boost::system::result<std::uint32_t> parse_answer(std::string_view line) {
  if (line.size() > max_answer_bytes) return make_error_code(Error::too_long);
  constexpr std::string_view ok = "OK ";
  if (!line.starts_with(ok)) return make_error_code(Error::not_ok);
  // from_chars takes neither a sign nor spaces for an unsigned number, and
  // says where it stopped: only digits, all of them, are a port.
  std::string_view digits = line.substr(ok.size());
  std::uint32_t port = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
  if (ec != std::errc() || end != digits.data() + digits.size())
    return make_error_code(Error::not_ok);
  return port;
}

}  // namespace vmgate::hybrid_vsock
