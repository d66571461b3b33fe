"""Every way a client can name a VM reaches that VM's agent, unmodified
clients (curl, http.client) included, and the request arrives as an agent
behind a proper proxy expects it (RFC 9110 §7.6: hop-by-hop fields gone,
Forwarded added, the routing header removed)."""

import hashlib
import os
import re

import pytest

from vmgate_lab import VM, Lab, wait_until


@pytest.fixture(scope="module")
def lab():
    with Lab([VM("vm1"), VM("vm2")]) as lab:
        yield lab


def echo_lines(response):
    """The agent's /echo-headers body: the request line, then {lower name: [values]}."""
    text = response if isinstance(response, str) else response.text
    lines = text.splitlines()
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        headers.setdefault(name.lower(), []).append(value)
    return lines[0], headers


# -- the four forms, and UUIDs ---------------------------------------------------

@pytest.mark.parametrize("vm", ["vm1", "vm2"])
def test_vm_header_routes_to_the_named_vm(lab, vm):
    r = lab.curl("/hello", "-H", "X-VM-Id: " + vm)
    assert r.status == 200, r
    assert r.text == "hello from %s\n" % vm
    assert lab.last_request(vm=vm, form="header")["status"] == "200"


def test_connect_tunnel_reaches_the_vm_named_in_the_authority(lab):
    # curl -p -x: CONNECT vm1:5986, then GET /hello inside the tunnel.
    r = lab.curl("http://vm1:5986/hello", "-p", "-x", "http://127.0.0.1:%d" % lab.port)
    assert r.status == 200, r
    assert r.text == "hello from vm1\n"
    record = lab.last_request(form="connect")
    assert record["vm"] == "vm1" and record["port"] == "5986" and record["method"] == "CONNECT"


def test_absolute_form_through_hostd_as_http_proxy_reaches_the_vm(lab):
    r = lab.curl("http://vm2:5986/hello", "-x", "http://127.0.0.1:%d" % lab.port)
    assert r.status == 200, r
    assert r.text == "hello from vm2\n"
    assert lab.last_request(form="absolute")["vm"] == "vm2"


def test_absolute_form_is_reduced_to_origin_form_with_host_from_the_url(lab):
    r = lab.curl("http://vm1:5986/echo-headers?x=1", "-x", "http://127.0.0.1:%d" % lab.port)
    assert r.status == 200, r
    request_line, headers = echo_lines(r)
    assert request_line == "GET /echo-headers?x=1 HTTP/1.1"
    assert headers["host"] == ["vm1:5986"]


def test_host_name_under_the_suffix_routes_to_that_vm(lab):
    host = "vm2.vms.example"
    r = lab.curl("http://%s:%d/hello" % (host, lab.port),
                 "--resolve", "%s:%d:127.0.0.1" % (host, lab.port))
    assert r.status == 200, r
    assert r.text == "hello from vm2\n"
    assert lab.last_request(form="host")["vm"] == "vm2"


def test_uuid_names_a_vm_as_well_as_its_name(lab):
    vm2 = lab.vms[1]
    r = lab.curl("/hello", "-H", "X-VM-Id: " + vm2.uuid)
    assert r.status == 200, r
    assert r.text == "hello from vm2\n"
    r = lab.curl("http://%s:5986/hello" % vm2.uuid.upper(), "-p", "-x",
                 "http://127.0.0.1:%d" % lab.port)
    assert r.status == 200, r
    assert r.text == "hello from vm2\n"


def test_one_keep_alive_connection_carries_requests_to_two_vms(lab):
    c = lab.connection()
    try:
        bodies = []
        peers = set()
        for vm in ("vm1", "vm2", "vm1"):
            c.request("GET", "/hello", headers={"X-VM-Id": vm})
            r = c.getresponse()
            bodies.append((r.status, r.read()))
            assert not r.will_close
            peers.add(c.sock.getsockname())
        assert bodies == [(200, b"hello from vm1\n"), (200, b"hello from vm2\n"),
                          (200, b"hello from vm1\n")]
        assert len(peers) == 1  # http.client reconnects silently; it must not have
        client = "%s:%d" % peers.pop()
        # A record is written when its exchange ends, which can be just after
        # the client has read the response: wait for all three.
        def routed_for_client():
            routed = [r["vm"] for r in lab.hostd_requests() if r.get("client") == client]
            return routed if len(routed) >= 3 else None
        routed = wait_until(routed_for_client, 5, "three request records for " + client)
        assert routed == ["vm1", "vm2", "vm1"]
    finally:
        c.close()


def test_head_then_get_on_one_connection(lab):
    # A HEAD response has a Content-Length and no body: hostd must not wait for one.
    c = lab.connection()
    try:
        c.request("HEAD", "/bytes/1000", headers={"X-VM-Id": "vm1"})
        r = c.getresponse()
        assert (r.status, r.getheader("Content-Length"), r.read()) == (200, "1000", b"")
        c.request("GET", "/hello", headers={"X-VM-Id": "vm1"})
        r = c.getresponse()
        assert (r.status, r.read()) == (200, b"hello from vm1\n")
    finally:
        c.close()


def test_agent_closing_its_connection_does_not_end_the_clients(lab):
    c = lab.connection()
    try:
        sockname = None
        for path, body in [("/close", b"bye\n"), ("/hello", b"hello from vm2\n"),
                           ("/close", b"bye\n"), ("/hello", b"hello from vm2\n")]:
            c.request("GET", path, headers={"X-VM-Id": "vm2"})
            r = c.getresponse()
            assert (r.status, r.read()) == (200, body)
            # The agent closed its side; the client connection stays open.
            assert not r.will_close
            sockname = sockname or c.sock.getsockname()
            assert c.sock.getsockname() == sockname
    finally:
        c.close()


# -- methods, versions, bodies ------------------------------------------------------

def test_unknown_method_is_passed_through(lab):
    r = lab.curl("/echo-headers", "-X", "BITS_POST", "-H", "X-VM-Id: vm1",
                 "-H", "BITS-Packet-Type: Ping")
    assert r.status == 200, r
    request_line, headers = echo_lines(r)
    assert request_line == "BITS_POST /echo-headers HTTP/1.1"
    assert headers["bits-packet-type"] == ["Ping"]


def test_http_1_0_client_gets_a_complete_1_0_response(lab):
    # The agent would send a chunked body; a 1.0 client must get it unchunked.
    n = 300_000
    r = lab.curl("/bytes/%d?chunked=1" % n, "-0", "-H", "X-VM-Id: vm1")
    assert r.status == 200, r
    assert len(r.body) == n
    assert hashlib.sha256(r.body).hexdigest() == r.headers["x-content-sha256"]
    assert "chunked" not in r.headers.get("transfer-encoding", "")
    r = lab.curl("/hello", "-0", "-H", "X-VM-Id: vm2")
    assert (r.status, r.text) == (200, "hello from vm2\n")


def test_chunked_upload_from_a_pipe_arrives_whole(lab):
    data = os.urandom(3 * 1024 * 1024 + 17)
    r = lab.curl("/sha256", "-T", "-", "-H", "X-VM-Id: vm2", input=data)
    assert r.status == 200, r
    assert r.text == "%s %d\n" % (hashlib.sha256(data).hexdigest(), len(data))
    # And it reached the agent chunked, as curl sent it.
    r = lab.curl("/echo-headers", "-T", "-", "-H", "X-VM-Id: vm2", input=b"abc")
    assert r.status == 200, r
    _, headers = echo_lines(r)
    assert headers["transfer-encoding"] == ["chunked"]


def test_expect_100_continue_upload_gets_the_interim_response(lab):
    data = os.urandom(2 * 1024 * 1024)
    r = lab.curl("/sha256", "--data-binary", "@-", "-H", "X-VM-Id: vm1",
                 "-H", "Expect: 100-continue", "--expect100-timeout", "30",
                 "-H", "Content-Type: application/octet-stream", input=data)
    assert r.status == 200, r
    assert r.text == "%s %d\n" % (hashlib.sha256(data).hexdigest(), len(data))
    # The 100 Continue came from the agent through hostd, before the final answer.
    assert re.search(r"^HTTP/1.1 100", r.raw_headers, re.M), r.raw_headers


# -- what the agent sees --------------------------------------------------------------

def test_agent_sees_no_routing_or_hop_by_hop_headers_and_a_forwarded_for(lab):
    c = lab.connection()
    try:
        c.putrequest("GET", "/echo-headers", skip_accept_encoding=True)
        for name, value in [
            ("X-VM-Id", "vm1"),
            ("Connection", "keep-alive, X-Hop-Secret"),
            ("X-Hop-Secret", "must not reach the agent"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Proxy-Connection", "keep-alive"),
            ("X-End-To-End", "kept"),
        ]:
            c.putheader(name, value)
        c.endheaders()
        r = c.getresponse()
        body = r.read()
        client_addr = "%s:%d" % c.sock.getsockname()
    finally:
        c.close()
    assert r.status == 200, body
    request_line, headers = echo_lines(body.decode())
    assert request_line == "GET /echo-headers HTTP/1.1"
    for gone in ("x-vm-id", "connection", "x-hop-secret", "keep-alive", "te",
                 "proxy-connection"):
        assert gone not in headers, (gone, body)
    assert headers["x-end-to-end"] == ["kept"]
    assert headers["forwarded"] == ['for="%s"' % client_addr]


def test_agent_sees_the_request_line_of_every_form_in_origin_form(lab):
    # The same /echo-headers through each form: the agent never sees a proxy form.
    proxy = "http://127.0.0.1:%d" % lab.port
    host = "vm1.vms.example"
    for args, url in [
        (["-H", "X-VM-Id: vm1"], lab.url("/echo-headers")),
        (["-x", proxy], "http://vm1:5986/echo-headers"),
        (["-p", "-x", proxy], "http://vm1:5986/echo-headers"),
        (["--resolve", "%s:%d:127.0.0.1" % (host, lab.port)],
         "http://%s:%d/echo-headers" % (host, lab.port)),
    ]:
        r = lab.curl(url, *args)
        assert r.status == 200, (args, r)
        request_line, headers = echo_lines(r)
        assert request_line == "GET /echo-headers HTTP/1.1", args
        assert "x-vm-id" not in headers


def test_no_process_died(lab):
    # Runs last in this module: every request above left the daemons up.
    for p in [lab.hostd, *lab.guestds.values(), *lab.agents.values()]:
        assert p.alive(), (p.name, p.stderr()[-2000:])
