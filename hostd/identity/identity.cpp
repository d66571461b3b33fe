#include "hostd/identity/identity.hpp"

#include <fmt/format.h>

namespace vmgate::hostd {

std::string Identity::to_string() const {
  switch (kind) {
    case Kind::trusted_listener:
      return "trusted:" + name;
    case Kind::certificate:
      return "cert:" + name;
    case Kind::token:
      return "token:" + name;
    case Kind::source:
      return "source:" + name;
    case Kind::vm:
      return "vm:" + name;
    case Kind::anonymous:
      break;
  }
  return "anonymous";
}

boost::system::result<Identity, std::string> parse_identity(std::string_view text) {
  Identity identity;
  if (text == "anonymous") return identity;
  const auto colon = text.find(':');
  const std::string_view kind = text.substr(0, colon);
  const std::string_view value =
      colon == std::string_view::npos ? std::string_view{} : text.substr(colon + 1);
  if (value.empty() || (kind != "token" && kind != "cert" && kind != "source"))
    return fmt::format("'{}' is not token:NAME, cert:NAME[,NAME...], source:ADDRESS or anonymous",
                       text);
  if (kind == "token") {
    identity.kind = Identity::Kind::token;
    identity.name = value;
  } else if (kind == "cert") {
    identity.kind = Identity::Kind::certificate;
    for (std::string_view rest = value; !rest.empty();) {
      const auto comma = rest.find(',');
      const std::string_view name = rest.substr(0, comma);
      if (name.empty()) return fmt::format("'{}' has an empty certificate name", text);
      identity.certificate_names.emplace_back(name);
      rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
    }
    if (identity.certificate_names.empty() || value.back() == ',')
      return fmt::format("'{}' has an empty certificate name", text);
    identity.name = identity.certificate_names.front();
  } else {
    boost::system::error_code ec;
    auto address = boost::asio::ip::make_address(std::string(value), ec);
    if (ec) return fmt::format("'{}' is not an IPv4 or IPv6 address", value);
    identity.kind = Identity::Kind::source;
    identity.address = address;
    identity.name = address.to_string();
  }
  return identity;
}

}  // namespace vmgate::hostd
