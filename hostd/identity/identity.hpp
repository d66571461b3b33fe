// Who a client is, as hostd learnt it on the listener the client came in
// on (docs/architecture.md, "Identity"): a TLS client certificate, proxy
// credentials, its source address, or nothing but a listener marked
// `trusted`. authz/ decides what an identity may reach; this is only the name.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/ip/address.hpp>
#include <boost/system/result.hpp>

namespace vmgate::hostd {

struct Identity {
  enum class Kind {
    anonymous,         // nothing is known of the client: it may reach nothing
    trusted_listener,  // it came in on a listener marked `trusted`
    certificate,       // a verified TLS client certificate
    token,             // proxy credentials (Proxy-Authorization) naming a token
    source,            // its address, on a listener with identity = "source"
    vm,                // a guest, known by where its connection arrived (hostd/guestside)
  };
  Kind kind = Kind::anonymous;
  // trusted_listener: the listener's name; certificate: the first DNS or URI
  // SAN, else the subject CN; token: the token's name; source: the address.
  std::string name;
  // certificate: every DNS and URI SAN, then the subject CN; ACL rules
  // `cert:...` match any of them.
  std::vector<std::string> certificate_names;
  // The client's address when it came over TCP (source identity, records).
  std::optional<boost::asio::ip::address> address;
  // vm: the VM's UUID (lower case), which `vm:UUID` rules match whatever its name.
  std::string vm_uuid;

  // "trusted:NAME", "cert:NAME", "token:NAME", "source:ADDRESS", "vm:NAME" or "anonymous":
  // the form ACL rules and request records use.
  std::string to_string() const;
};

// An identity written out, for asking what it may reach (/v1/check's `as`,
// vmgatectl check --as): "token:NAME", "cert:NAME[,NAME...]" (the names a
// certificate carries, SANs then CN), "source:ADDRESS" or "anonymous". The
// reason says what is accepted.
boost::system::result<Identity, std::string> parse_identity(std::string_view text);

}  // namespace vmgate::hostd
