#include <doctest/doctest.h>

#include <boost/beast/http.hpp>

#include "hostd/route/header_rewrite.hpp"

namespace http = boost::beast::http;
using namespace vmgate::hostd;

namespace {

Route route_for(RouteForm form, std::string origin) {
  Route r;
  r.form = form;
  r.origin_target = std::move(origin);
  r.port = 5986;
  return r;
}

}  // namespace

TEST_CASE("hop-by-hop headers and the routing header never reach the agent") {
  http::request_header<> h;
  h.method(http::verb::post);
  h.target("/wsman");
  h.version(11);
  h.set(http::field::host, "kvm1:5986");
  h.set(http::field::connection, "keep-alive, X-Secret-Hop");
  h.set("X-Secret-Hop", "1");
  h.set(http::field::keep_alive, "timeout=5");
  h.set(http::field::te, "trailers");
  h.set(http::field::upgrade, "websocket");
  h.set(http::field::proxy_authorization, "Basic Zm9v");
  h.set("Proxy-Connection", "keep-alive");
  h.set("X-VM-Id", "vm1");
  h.set(http::field::authorization, "Basic dTpw");
  h.set(http::field::content_length, "10");

  rewrite_request(h, route_for(RouteForm::header, "/wsman"), "X-VM-Id",
                  ForwardedClient{.peer = "203.0.113.7:51514"});

  for (auto name : {"Connection", "X-Secret-Hop", "Keep-Alive", "TE", "Upgrade",
                    "Proxy-Authorization", "Proxy-Connection", "X-VM-Id"}) {
    CHECK_MESSAGE(h.find(name) == h.end(), name);
  }
  CHECK(h[http::field::authorization] == "Basic dTpw");  // end-to-end, kept
  CHECK(h[http::field::content_length] == "10");         // framing, kept
  CHECK(h[http::field::host] == "kvm1:5986");
  CHECK(h[http::field::forwarded] == "for=\"203.0.113.7:51514\"");
  CHECK(h[http::field::via] == "1.1 vmgate");
}

TEST_CASE("Connection cannot be used to strip framing headers") {
  http::request_header<> h;
  h.method(http::verb::post);
  h.target("/");
  h.set(http::field::connection, "content-length, transfer-encoding");
  h.set(http::field::content_length, "3");
  rewrite_request(h, route_for(RouteForm::header, "/"), "X-VM-Id", ForwardedClient{.peer = "unix"});
  CHECK(h[http::field::content_length] == "3");
}

TEST_CASE("absolute form becomes origin form with Host from the URL") {
  http::request_header<> h;
  h.method(http::verb::post);
  h.target("http://vm1:5986/wsman?x");
  h.version(10);
  h.set(http::field::host, "proxy.example:5986");
  rewrite_request(h, route_for(RouteForm::absolute, "/wsman?x"), "X-VM-Id",
                  ForwardedClient{.peer = "[2001:db8::1]:4000"});
  CHECK(h.target() == "/wsman?x");
  CHECK(h[http::field::host] == "vm1:5986");
  CHECK(h.version() == 11);
  CHECK(h[http::field::forwarded] == "for=\"[2001:db8::1]:4000\"");
}

TEST_CASE("an existing Forwarded chain is extended, not replaced") {
  http::request_header<> h;
  h.method(http::verb::get);
  h.target("/");
  h.set(http::field::forwarded, "for=192.0.2.1");
  rewrite_request(h, route_for(RouteForm::header, "/"), "X-VM-Id", ForwardedClient{.peer = "unix"});
  CHECK(h[http::field::forwarded] == "for=192.0.2.1, for=unknown");
}

TEST_CASE("on an untrusted listener a client's Forwarded and X-Forwarded-For are replaced") {
  http::request_header<> h;
  h.method(http::verb::get);
  h.target("/");
  h.set(http::field::forwarded, "for=10.0.0.1");
  h.set("X-Forwarded-For", "10.0.0.1, 10.0.0.2");
  h.set("X-Real-IP", "10.0.0.1");
  h.set("X-Forwarded-Proto", "http");
  rewrite_request(h, route_for(RouteForm::header, "/"), "X-VM-Id",
                  ForwardedClient{.peer = "203.0.113.7:51514", .trusted = false, .tls = true});
  CHECK(h[http::field::forwarded] == "for=\"203.0.113.7:51514\";proto=https");
  CHECK(h["X-Forwarded-For"] == "203.0.113.7");
  CHECK(h.find("X-Real-IP") == h.end());
  CHECK(h.find("X-Forwarded-Proto") == h.end());
  CHECK(h.count(http::field::forwarded) == 1);
  CHECK(h.count("X-Forwarded-For") == 1);
}

TEST_CASE("an IPv6 client's X-Forwarded-For is its address without brackets or port") {
  http::request_header<> h;
  h.method(http::verb::get);
  h.target("/");
  rewrite_request(h, route_for(RouteForm::header, "/"), "X-VM-Id",
                  ForwardedClient{.peer = "[2001:db8::1]:4000", .trusted = false});
  CHECK(h["X-Forwarded-For"] == "2001:db8::1");
}

TEST_CASE("a caller with no address, a unix client or a guest, sets no X-Forwarded-For") {
  for (std::string_view peer : {"unix", "vm:web1", "unknown"}) {
    http::request_header<> h;
    h.method(http::verb::get);
    h.target("/");
    h.set("X-Forwarded-For", "203.0.113.9");
    rewrite_request(h, route_for(RouteForm::header, "/"), "X-VM-Id",
                    ForwardedClient{.peer = peer, .trusted = false});
    CHECK(h.find("X-Forwarded-For") == h.end());
  }
}

TEST_CASE("agent responses lose hop-by-hop headers and gain Via") {
  http::response_header<> h;
  h.result(http::status::ok);
  h.set(http::field::connection, "close, X-Hop");
  h.set("X-Hop", "1");
  h.set(http::field::keep_alive, "timeout=5");
  h.set(http::field::proxy_authenticate, "Basic");
  h.set(http::field::content_type, "application/soap+xml");
  rewrite_response(h);
  CHECK(h.find("X-Hop") == h.end());
  CHECK(h.find(http::field::connection) == h.end());
  CHECK(h.find(http::field::keep_alive) == h.end());
  CHECK(h.find(http::field::proxy_authenticate) == h.end());
  CHECK(h[http::field::content_type] == "application/soap+xml");
  CHECK(h[http::field::via] == "1.1 vmgate");
}
