// The SNI scan of a passthrough listener (hostd/route/client_hello.hpp), on
// ClientHellos built here field by field (RFC 8446 §4.1.2, §5.1; RFC 6066 §3).
#include <doctest/doctest.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "hostd/route/client_hello.hpp"

using vmgate::hostd::ClientHelloScan;
using vmgate::hostd::scan_client_hello;
using vmgate::hostd::valid_sni_host_name;
using Status = ClientHelloScan::Status;
using Bytes = std::vector<std::uint8_t>;

namespace {

void put_u8(Bytes& out, std::size_t v) {
  out.push_back(static_cast<std::uint8_t>(v));
}
void put_u16(Bytes& out, std::size_t v) {
  put_u8(out, v >> 8);
  put_u8(out, v);
}
void put_u24(Bytes& out, std::size_t v) {
  put_u8(out, v >> 16);
  put_u16(out, v);
}
void put(Bytes& out, const Bytes& bytes) {
  out.insert(out.end(), bytes.begin(), bytes.end());
}
void put(Bytes& out, std::string_view text) {
  out.insert(out.end(), text.begin(), text.end());
}

struct Extension {
  std::uint16_t type;
  Bytes data;
};

// A ServerNameList of (name_type, name) entries.
Bytes server_name_list(const std::vector<std::pair<std::uint8_t, std::string>>& names) {
  Bytes list;
  for (const auto& [type, name] : names) {
    put_u8(list, type);
    put_u16(list, name.size());
    put(list, name);
  }
  Bytes data;
  put_u16(data, list.size());
  put(data, list);
  return data;
}

Extension server_name(std::string_view name) {
  return Extension{0, server_name_list({{0, std::string(name)}})};
}

// A ClientHello as a client writes one, each field settable.
struct HelloBuilder {
  std::uint16_t version = 0x0303;
  Bytes session_id = Bytes(32, 0xab);
  std::vector<std::uint16_t> cipher_suites = {0x1301, 0x1302, 0xc02f};
  Bytes compression = {0};
  bool has_extensions = true;
  std::vector<Extension> extensions;

  HelloBuilder& add(Extension e) {
    extensions.push_back(std::move(e));
    return *this;
  }
  HelloBuilder& sni(std::string_view name) { return add(server_name(name)); }

  Bytes body() const {
    Bytes b;
    put_u16(b, version);
    put(b, Bytes(32, 0x42));  // random
    put_u8(b, session_id.size());
    put(b, session_id);
    put_u16(b, cipher_suites.size() * 2);
    for (auto suite : cipher_suites)
      put_u16(b, suite);
    put_u8(b, compression.size());
    put(b, compression);
    if (!has_extensions) return b;
    Bytes all;
    for (const auto& e : extensions) {
      put_u16(all, e.type);
      put_u16(all, e.data.size());
      put(all, e.data);
    }
    put_u16(b, all.size());
    put(b, all);
    return b;
  }

  // The handshake message: client_hello(1), a 24-bit length, the body.
  Bytes message() const {
    Bytes body_bytes = body();
    Bytes m;
    put_u8(m, 1);
    put_u24(m, body_bytes.size());
    put(m, body_bytes);
    return m;
  }

  // The message in handshake records of at most `fragment` bytes each.
  Bytes records(std::size_t fragment = 16384) const { return in_records(message(), fragment); }

  static Bytes in_records(const Bytes& message, std::size_t fragment) {
    Bytes out;
    for (std::size_t pos = 0; pos < message.size(); pos += fragment) {
      const std::size_t n = std::min(fragment, message.size() - pos);
      put_u8(out, 22);
      put_u16(out, 0x0301);
      put_u16(out, n);
      out.insert(out.end(), message.begin() + pos, message.begin() + pos + n);
    }
    return out;
  }
};

// What browsers and curl send around server_name, in their order.
HelloBuilder typical_hello(std::string_view name) {
  HelloBuilder h;
  h.add({0xff01, {0}});                   // renegotiation_info
  h.add({10, {0, 4, 0, 0x1d, 0, 0x17}});  // supported_groups
  h.add({43, {4, 3, 4, 3, 3}});           // supported_versions
  h.add({51, [] {                         // key_share: x25519 and a large one
           Bytes d;
           Bytes shares;
           put_u16(shares, 0x1d);
           put_u16(shares, 32);
           put(shares, Bytes(32, 1));
           put_u16(shares, 0x11ec);
           put_u16(shares, 1216);
           put(shares, Bytes(1216, 2));
           put_u16(d, shares.size());
           put(d, shares);
           return d;
         }()});
  h.sni(name);
  h.add({21, Bytes(200, 0)});  // padding
  return h;
}

ClientHelloScan scan(const Bytes& bytes) {
  return scan_client_hello(std::span(bytes.data(), bytes.size()));
}

ClientHelloScan scan_prefix(const Bytes& bytes, std::size_t n) {
  return scan_client_hello(std::span(bytes.data(), n));
}

}  // namespace

TEST_CASE("the SNI host_name of a ClientHello is found") {
  auto r = scan(HelloBuilder{}.sni("vm1.vms.example").records());
  REQUIRE(r.status == Status::found);
  CHECK(r.name == "vm1.vms.example");
}

TEST_CASE("extensions before server_name are stepped over, whatever their size") {
  auto r = scan(typical_hello("vm2.vms.example").records());
  REQUIRE(r.status == Status::found);
  CHECK(r.name == "vm2.vms.example");
}

TEST_CASE("a ClientHello without a server_name extension has no SNI") {
  HelloBuilder h;
  h.add({10, {0, 2, 0, 0x1d}});
  auto r = scan(h.records());
  CHECK(r.status == Status::no_sni);
  CHECK(r.reason == "no server_name extension");
}

TEST_CASE("a TLS 1.2 ClientHello without any extensions has no SNI") {
  HelloBuilder h;
  h.has_extensions = false;
  auto r = scan(h.records());
  CHECK(r.status == Status::no_sni);
}

TEST_CASE("a server_name naming only other name types has no SNI") {
  HelloBuilder h;
  h.add({0, server_name_list({{7, "something"}})});
  CHECK(scan(h.records()).status == Status::no_sni);
}

TEST_CASE("a name type other than host_name is skipped by its length") {
  HelloBuilder h;
  h.add({0, server_name_list({{7, "x"}, {0, "vm1.vms.example"}})});
  auto r = scan(h.records());
  REQUIRE(r.status == Status::found);
  CHECK(r.name == "vm1.vms.example");
}

TEST_CASE("a ClientHello split over several records is read across them") {
  const auto hello = typical_hello("vm1.vms.example");
  // 1: the handshake header itself split over four records; 3: a length
  // field split between two; 7, 100, 1000: the name or its extension split.
  for (std::size_t fragment : {1, 2, 3, 7, 100, 1000}) {
    CAPTURE(fragment);
    auto r = scan(hello.records(fragment));
    REQUIRE(r.status == Status::found);
    CHECK(r.name == "vm1.vms.example");
  }
}

TEST_CASE("bytes arriving one at a time need more until the ClientHello is whole") {
  for (std::size_t fragment : {16384, 5, 1}) {
    CAPTURE(fragment);
    Bytes bytes = typical_hello("vm1.vms.example").records(fragment);
    const std::size_t whole = bytes.size();
    for (std::size_t n = 0; n < whole; ++n) {
      CAPTURE(n);
      auto r = scan_prefix(bytes, n);
      REQUIRE(r.status == Status::need_more);
      // A lower bound: never below what is there, never past the whole.
      CHECK(r.need > n);
      CHECK(r.need <= whole);
    }
    // What the client sends after its ClientHello is not looked at.
    bytes.insert(bytes.end(), {20, 3, 3, 0, 1, 1});
    auto r = scan(bytes);
    REQUIRE(r.status == Status::found);
    CHECK(r.name == "vm1.vms.example");
  }
}

TEST_CASE("once a record's header is in, the scan asks for the whole record") {
  const Bytes bytes = HelloBuilder{}.sni("vm1.vms.example").records();
  CHECK(scan_prefix(bytes, 0).need == 1);
  CHECK(scan_prefix(bytes, 5).need == 9);  // the handshake header next
  CHECK(scan_prefix(bytes, 9).need == bytes.size());
}

TEST_CASE("a ClientHello declaring more than the limit asks for more than the limit") {
  Bytes bytes = {22, 3, 1, 0, 4, 1, 0x01, 0x00, 0x00};  // a 64 KiB ClientHello
  auto r = scan(bytes);
  REQUIRE(r.status == Status::need_more);
  CHECK(r.need > 64 * 1024);
}

TEST_CASE("bytes that are not a TLS handshake record are not TLS") {
  const std::string_view http = "GET / HTTP/1.1\r\nHost: vm1.vms.example\r\n\r\n";
  auto r = scan(Bytes(http.begin(), http.end()));
  CHECK(r.status == Status::not_tls);
  CHECK(scan(Bytes{'G'}).status == Status::not_tls);
  CHECK(scan(Bytes{22, 'E', 'T'}).status == Status::not_tls);      // not version 3.x
  CHECK(scan(Bytes{0x80, 0x2e, 0x01}).status == Status::not_tls);  // SSL 2 framing
}

TEST_CASE("upper case in the name is lowercased") {
  auto r = scan(HelloBuilder{}.sni("VM1.Vms.EXAMPLE").records());
  REQUIRE(r.status == Status::found);
  CHECK(r.name == "vm1.vms.example");
}

TEST_CASE("a host_name that is not a DNS hostname is malformed") {
  const std::vector<std::string> names = {"vm_1.vms.example",
                                          "vm1.vms.example.",
                                          "-vm1.vms.example",
                                          "vm1-.vms.example",
                                          "vm1..vms.example",
                                          ".vm1.vms.example",
                                          "127.0.0.1",
                                          "[::1]",
                                          "::1",
                                          "vm 1.vms.example",
                                          std::string("vm1\0.vms.example", 16),
                                          "vm\xc3\xa9.vms.example",
                                          std::string(64, 'a') + ".vms.example"};
  for (const std::string& name : names) {
    CAPTURE(name);
    auto r = scan(HelloBuilder{}.sni(name).records());
    CHECK(r.status == Status::malformed);
  }
  // Longer than 253 bytes, in labels of 63 or fewer.
  std::string long_name;
  while (long_name.size() < 254)
    long_name += "abcdefghi.";
  long_name += "example";
  CHECK(scan(HelloBuilder{}.sni(long_name).records()).status == Status::malformed);
}

TEST_CASE("DNS hostnames RFC 6066 allows as host_name") {
  for (std::string_view name :
       {"vm1", "vm1.vms.example", "a-b.c-d.example", "xn--bcher-kva.example",
        "6f1c2f6e-5b3e-4f0a-9d7e-2b2f0b1c0d3e.vms.example", "1vm.example"}) {
    CAPTURE(name);
    CHECK(valid_sni_host_name(name));
  }
  CHECK(valid_sni_host_name(std::string(63, 'a') + ".example"));
  CHECK_FALSE(valid_sni_host_name(""));
  CHECK_FALSE(valid_sni_host_name("10.0.0.300"));
}

TEST_CASE("lengths that overrun what holds them are malformed") {
  SUBCASE("an extension longer than the extensions") {
    Bytes m = HelloBuilder{}.sni("vm1.vms.example").message();
    // The last extension is server_name: its length field is 4 bytes after
    // its start, which is the name's length (2 + 1 + 2 + 15 + 2 + 2) before the end.
    const std::size_t at = m.size() - (15 + 2 + 1 + 2 + 2);
    m[at] = 0x01;  // its length, 0x0014 → 0x0114
    CHECK(scan(HelloBuilder::in_records(m, 16384)).status == Status::malformed);
  }
  SUBCASE("an extensions block longer than the ClientHello") {
    HelloBuilder h;
    h.sni("vm1.vms.example");
    Bytes m = h.message();
    const std::size_t at = 4 + 2 + 32 + 1 + 32 + 2 + 6 + 1 + 1;  // the extensions length
    m[at + 1] += 1;
    CHECK(scan(HelloBuilder::in_records(m, 16384)).status == Status::malformed);
    m[at + 1] -= 2;  // shorter than what follows: also a mismatch
    CHECK(scan(HelloBuilder::in_records(m, 16384)).status == Status::malformed);
  }
  SUBCASE("a server_name list longer than its extension") {
    Bytes data = server_name_list({{0, "vm1.vms.example"}});
    data[1] += 1;
    CHECK(scan(HelloBuilder{}.add({0, data}).records()).status == Status::malformed);
  }
  SUBCASE("a host_name longer than its list") {
    Bytes data = server_name_list({{0, "vm1.vms.example"}});
    data[4] += 1;
    CHECK(scan(HelloBuilder{}.add({0, data}).records()).status == Status::malformed);
  }
  SUBCASE("a handshake length shorter than its ClientHello") {
    Bytes m = HelloBuilder{}.sni("vm1.vms.example").message();
    m[3] -= 10;
    m.resize(m.size() - 10);
    CHECK(scan(HelloBuilder::in_records(m, 16384)).status == Status::malformed);
  }
  SUBCASE("a session id longer than 32 bytes") {
    HelloBuilder h;
    h.session_id = Bytes(33, 1);
    CHECK(scan(h.sni("vm1.vms.example").records()).status == Status::malformed);
  }
  SUBCASE("no cipher suites") {
    HelloBuilder h;
    h.sni("vm1.vms.example");
    h.cipher_suites.clear();
    CHECK(scan(h.records()).status == Status::malformed);
  }
  SUBCASE("a record longer than 2^14 bytes") {
    Bytes bytes = {22, 3, 1, 0x40, 0x01, 1};
    CHECK(scan(bytes).status == Status::malformed);
  }
  SUBCASE("an empty handshake record") {
    Bytes bytes = {22, 3, 1, 0, 0};
    CHECK(scan(bytes).status == Status::malformed);
  }
  SUBCASE("an empty host_name or list") {
    CHECK(scan(HelloBuilder{}.add({0, server_name_list({{0, ""}})}).records()).status ==
          Status::malformed);
    CHECK(scan(HelloBuilder{}.add({0, server_name_list({})}).records()).status ==
          Status::malformed);
  }
}

TEST_CASE("a record of another type between the ClientHello's records is malformed") {
  Bytes message = typical_hello("vm1.vms.example").message();
  Bytes first(message.begin(), message.begin() + 100);
  Bytes rest(message.begin() + 100, message.end());
  Bytes bytes = HelloBuilder::in_records(first, 16384);
  put(bytes, Bytes{21, 3, 3, 0, 2, 1, 0});  // an alert
  put(bytes, HelloBuilder::in_records(rest, 16384));
  auto r = scan(bytes);
  CHECK(r.status == Status::malformed);
  CHECK(r.reason == "a record other than handshake inside the ClientHello");
}

TEST_CASE("a first handshake message that is not a ClientHello is malformed") {
  Bytes bytes = {22, 3, 3, 0, 4, 2, 0, 0, 0};  // server_hello
  CHECK(scan(bytes).status == Status::malformed);
}

TEST_CASE("two server names are malformed, so no two parties read different ones") {
  SUBCASE("two server_name extensions") {
    auto r = scan(HelloBuilder{}.sni("vm1.vms.example").sni("vm2.vms.example").records());
    CHECK(r.status == Status::malformed);
    // Even when the first names no host_name.
    HelloBuilder h;
    h.add({0, server_name_list({{7, "x"}})}).sni("vm2.vms.example");
    CHECK(scan(h.records()).status == Status::malformed);
  }
  SUBCASE("two host_names in one list") {
    HelloBuilder h;
    h.add({0, server_name_list({{0, "vm1.vms.example"}, {0, "vm2.vms.example"}})});
    CHECK(scan(h.records()).status == Status::malformed);
  }
}

TEST_CASE("every prefix of a malformed or foreign input ends or asks for more") {
  // The scan never reads past what it is given (under ASan this is checked
  // byte for byte) and never asks for bytes it already has.
  std::vector<Bytes> inputs = {typical_hello("vm1.vms.example").records(3),
                               HelloBuilder{}.sni("bad_name.example").records(),
                               HelloBuilder{}.sni("vm1.vms.example").sni("x.example").records(2)};
  for (const auto& bytes : inputs) {
    for (std::size_t n = 0; n <= bytes.size(); ++n) {
      Bytes copy(bytes.begin(), bytes.begin() + n);  // exactly n bytes for ASan
      auto r = scan(copy);
      if (r.status == Status::need_more) CHECK(r.need > n);
      if (r.status == Status::malformed || r.status == Status::not_tls)
        CHECK_FALSE(r.reason.empty());
    }
  }
}
