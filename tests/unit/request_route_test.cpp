#include <doctest/doctest.h>

#include <boost/beast/http.hpp>

#include "hostd/route/request_route.hpp"

namespace http = boost::beast::http;
using vmgate::hostd::name_under_suffix;
using vmgate::hostd::route_request;
using vmgate::hostd::RouteForm;
using vmgate::hostd::RouteOptions;

namespace {

http::request_header<> make(http::verb verb, std::string_view target) {
  http::request_header<> h;
  h.method(verb);
  h.target(target);
  h.version(11);
  return h;
}

const RouteOptions options{
    .vm_header = "X-VM-Id", .host_suffix = ".vms.example", .guest_port = 5986};

}  // namespace

TEST_CASE("CONNECT vm:port routes a tunnel to that port") {
  auto r = route_request(make(http::verb::connect, "vm1:8114"), options);
  REQUIRE(r.has_value());
  CHECK(r->form == RouteForm::connect);
  CHECK(r->target.value == "vm1");
  CHECK(r->port == 8114);
}

TEST_CASE("CONNECT without a port is refused") {
  CHECK_FALSE(route_request(make(http::verb::connect, "vm1"), options).has_value());
  CHECK_FALSE(route_request(make(http::verb::connect, "vm1:0"), options).has_value());
  CHECK_FALSE(route_request(make(http::verb::connect, "vm1:70000"), options).has_value());
}

TEST_CASE("the VM header routes to the listener's guest port and keeps the path") {
  auto h = make(http::verb::post, "/wsman?x=1");
  h.set("X-VM-Id", "vm2");
  auto r = route_request(h, options);
  REQUIRE(r.has_value());
  CHECK(r->form == RouteForm::header);
  CHECK(r->target.value == "vm2");
  CHECK(r->port == 5986);
  CHECK(r->origin_target == "/wsman?x=1");
}

TEST_CASE("the VM header name is configurable and matched case-insensitively") {
  auto h = make(http::verb::get, "/");
  h.set("x-target-vm", "vm3");
  RouteOptions custom = options;
  custom.vm_header = "X-Target-VM";
  auto r = route_request(h, custom);
  REQUIRE(r.has_value());
  CHECK(r->target.value == "vm3");
}

TEST_CASE("two VM headers are refused rather than guessed") {
  auto h = make(http::verb::get, "/");
  h.insert("X-VM-Id", "vm1");
  h.insert("X-VM-Id", "vm2");
  auto r = route_request(h, options);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().find("more than one") != std::string::npos);
}

TEST_CASE("absolute form names the VM and port, and is reduced to origin form") {
  auto r = route_request(make(http::verb::post, "http://vm1:8114/bits?a=b"), options);
  REQUIRE(r.has_value());
  CHECK(r->form == RouteForm::absolute);
  CHECK(r->target.value == "vm1");
  CHECK(r->port == 8114);
  CHECK(r->origin_target == "/bits?a=b");

  auto no_port = route_request(make(http::verb::get, "http://vm1"), options);
  REQUIRE(no_port.has_value());
  CHECK(no_port->port == 5986);
  CHECK(no_port->origin_target == "/");
}

TEST_CASE("routing precedence: CONNECT, then header, then absolute form, then Host suffix") {
  auto h = make(http::verb::post, "http://vm-from-url:5986/wsman");
  h.set("X-VM-Id", "vm-from-header");
  h.set(http::field::host, "vm-from-host.vms.example");
  auto r = route_request(h, options);
  REQUIRE(r.has_value());
  CHECK(r->form == RouteForm::header);
  CHECK(r->target.value == "vm-from-header");
  CHECK(r->origin_target == "/wsman");

  h.erase("X-VM-Id");
  r = route_request(h, options);
  REQUIRE(r.has_value());
  CHECK(r->form == RouteForm::absolute);
  CHECK(r->target.value == "vm-from-url");

  auto c = make(http::verb::connect, "vm-from-connect:5986");
  c.set("X-VM-Id", "vm-from-header");
  r = route_request(c, options);
  REQUIRE(r.has_value());
  CHECK(r->form == RouteForm::connect);
  CHECK(r->target.value == "vm-from-connect");
}

TEST_CASE("a Host name ending in the suffix names the VM") {
  auto h = make(http::verb::get, "/wsman");
  h.set(http::field::host, "VM1.Vms.Example:5986");
  auto r = route_request(h, options);
  REQUIRE(r.has_value());
  CHECK(r->form == RouteForm::host_suffix);
  CHECK(r->target.value == "VM1");

  h.set(http::field::host, ".vms.example");
  CHECK_FALSE(route_request(h, options).has_value());
  h.set(http::field::host, "vm1.other.example");
  CHECK_FALSE(route_request(h, options).has_value());
}

TEST_CASE("a DNS name under the suffix gives the labels before it, in any case") {
  CHECK(name_under_suffix("vm1.vms.example", ".vms.example") == "vm1");
  CHECK(name_under_suffix("a.vm1.VMS.example", ".vms.example") == "a.vm1");
  CHECK_FALSE(name_under_suffix(".vms.example", ".vms.example"));
  CHECK_FALSE(name_under_suffix("vms.example", ".vms.example"));
  CHECK_FALSE(name_under_suffix("vm1.othervms.example", ".vms.example"));
  CHECK_FALSE(name_under_suffix("vm1.vms.example", ""));
}

TEST_CASE("a request without any target is a 400 with advice") {
  auto r = route_request(make(http::verb::get, "/"), options);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().find("X-VM-Id") != std::string::npos);
}

TEST_CASE("https:// absolute form is refused: TLS goes through CONNECT") {
  auto r = route_request(make(http::verb::get, "https://vm1:5986/"), options);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().find("CONNECT") != std::string::npos);
}

TEST_CASE("names with spaces, slashes or quotes are refused before use") {
  auto h = make(http::verb::get, "/");
  h.set("X-VM-Id", "vm\"1");
  CHECK_FALSE(route_request(h, options).has_value());
  h.set("X-VM-Id", "");
  CHECK_FALSE(route_request(h, options).has_value());
  CHECK_FALSE(route_request(make(http::verb::connect, "user@vm1:5986"), options).has_value());
}
