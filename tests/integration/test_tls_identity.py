"""TLS termination and client certificates, with real clients (curl, openssl
s_client, python http.client): a verified certificate is the identity ACL
rules match; an expired, unknown-CA, unpinned or missing certificate fails
the handshake with the reason in hostd's log; SIGHUP swaps the listener's
certificate without dropping an open connection; a response cut upstream
is cut for a TLS client too (no close_notify)."""

import hashlib
import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess

import pytest

from pki import Pki, fingerprint, openssl
from vmgate_lab import HOSTD, VM, Lab, wait_until

ALICE = "alice.ops.example"


HANDSHAKE_MS = 300


def mtls_listener(server, client_ca, pins=None, handshake_timeout_ms=None):
    tls = server.tls_table(client_ca=client_ca.cert)
    if pins:
        tls["pinned_sha256"] = pins
    if handshake_timeout_ms:
        tls["handshake_timeout_ms"] = handshake_timeout_ms
    return {"address": "tcp:127.0.0.1:0", "guest_port": 5986, "identity": "certificate",
            "tls": tls}


ACL = [
    {"name": "alice-web", "action": "allow", "identities": ["cert:" + ALICE],
     "vms": ["vm1"], "ports": [5986]},
    {"name": "ops-uri", "action": "allow", "identities": ["cert:spiffe://ops/ci"],
     "vms": ["*"]},
    {"name": "cn-only", "action": "allow", "identities": ["cert:carol"], "vms": ["vm2"]},
]


@pytest.fixture(scope="module")
def tls_lab():
    with Lab([VM("vm1", agent="native"), VM("vm2", agent="native")], start_hostd=False,
             acl=ACL) as lab:
        pki = Pki(lab.path("pki"))
        lab.hosts_ca = pki.ca("hosts")
        lab.clients_ca = pki.ca("clients")
        lab.other_ca = pki.ca("other")
        lab.server = pki.server(lab.hosts_ca, "kvm1")
        lab.alice = pki.client(lab.clients_ca, "alice", dns=[ALICE])
        lab.ci = pki.client(lab.clients_ca, "ci-runner", uris=["spiffe://ops/ci"])
        lab.carol = pki.client(lab.clients_ca, "carol")  # a CN and no SAN
        lab.expired = pki.client(lab.clients_ca, "old", dns=[ALICE], expired=True)
        lab.stranger = pki.client(lab.other_ca, "stranger", dns=[ALICE])
        lab.pki = pki
        lab.listener_tables = [
            mtls_listener(lab.server, lab.clients_ca),
            # The same CA, but only alice's certificate is pinned.
            mtls_listener(lab.server, lab.clients_ca, pins=[fingerprint(lab.alice.cert)]),
            # The same as the first, with a short handshake timeout.
            mtls_listener(lab.server, lab.clients_ca, handshake_timeout_ms=HANDSHAKE_MS),
        ]
        lab.start_hostd()
        yield lab


def curl_tls(lab, path, cert=None, port=None, vm="vm1", extra=()):
    args = ["curl", "-sS", "--max-time", "20", "--cacert", lab.hosts_ca.cert,
            "-H", "X-VM-Id: " + vm, "-w", "\n%{http_code}"]
    if cert is not None:
        args += ["--cert", cert.cert, "--key", cert.key]
    args += list(extra)
    args.append("https://127.0.0.1:%d%s" % (port or lab.ports[0], path))
    r = subprocess.run(args, capture_output=True, text=True, errors="replace", timeout=60)
    body, _, code = r.stdout.rpartition("\n")
    body = body.rstrip("\n")
    return r.returncode, int(code or 0), body, r.stderr


def handshake_failures(lab):
    return [l for l in lab.hostd.lines() if "event=tls_handshake_failed" in l]


def wait_for_failure(lab, before, text):
    def found():
        return any(text in l for l in handshake_failures(lab)[before:])
    wait_until(found, 10, "a tls_handshake_failed line with %r" % text)
    return [l for l in handshake_failures(lab)[before:] if text in l][0]


def test_a_client_that_never_finishes_its_handshake_is_closed_at_the_handshake_timeout(tls_lab):
    before = len(handshake_failures(tls_lab))
    with socket.create_connection(("127.0.0.1", tls_lab.ports[2]), timeout=30) as s:
        s.sendall(b"\x16\x03\x01")  # the start of a ClientHello's record, then nothing
        # hostd closes it; the socket's own timeout would only end a hang.
        assert s.recv(1) == b""
    wait_for_failure(tls_lab, before, "no handshake within %d ms" % HANDSHAKE_MS)


def test_a_verified_dns_san_is_the_identity_an_allow_rule_matches(tls_lab):
    rc, code, body, err = curl_tls(tls_lab, "/hello", cert=tls_lab.alice)
    assert (rc, code, body) == (0, 200, "hello from vm1"), err
    rec = tls_lab.last_request(target="vm1", identity="cert:" + ALICE)
    assert rec["acl"] == "allow" and rec["rule"] == "alice-web"


def test_a_uri_san_and_a_cn_are_identities_too(tls_lab):
    rc, code, body, err = curl_tls(tls_lab, "/hello", cert=tls_lab.ci, vm="vm2")
    assert (code, body) == (200, "hello from vm2"), err
    rc, code, body, err = curl_tls(tls_lab, "/hello", cert=tls_lab.carol, vm="vm2")
    assert (code, body) == (200, "hello from vm2"), err
    assert tls_lab.last_request(identity="cert:carol")["rule"] == "cn-only"


def test_a_certificate_denied_a_vm_gets_403_naming_no_rule(tls_lab):
    rc, code, body, err = curl_tls(tls_lab, "/hello", cert=tls_lab.alice, vm="vm2")
    assert code == 403, err
    assert "alice-web" not in body and "rule" not in body
    assert tls_lab.last_request(target="vm2", identity="cert:" + ALICE)["acl"] == "deny"


@pytest.mark.parametrize("who,reason", [
    ("expired", "certificate has expired"),
    ("stranger", "unable to get local issuer certificate"),
])
def test_a_certificate_that_does_not_verify_fails_the_handshake_with_the_reason(
        tls_lab, who, reason):
    before = len(handshake_failures(tls_lab))
    rc, code, body, err = curl_tls(tls_lab, "/hello", cert=getattr(tls_lab, who))
    assert rc != 0 and code == 0, (rc, code, body)
    line = wait_for_failure(tls_lab, before, reason)
    assert "client=127.0.0.1:" in line


def test_a_client_without_a_certificate_fails_the_handshake(tls_lab):
    before = len(handshake_failures(tls_lab))
    rc, code, _, _ = curl_tls(tls_lab, "/hello")
    assert rc != 0 and code == 0
    wait_for_failure(tls_lab, before, "certificate")


def test_only_a_pinned_certificate_passes_a_pinned_listener(tls_lab):
    port = tls_lab.ports[1]
    rc, code, body, err = curl_tls(tls_lab, "/hello", cert=tls_lab.alice, port=port)
    assert (code, body) == (200, "hello from vm1"), err
    before = len(handshake_failures(tls_lab))
    rc, code, _, _ = curl_tls(tls_lab, "/hello", cert=tls_lab.ci, port=port)
    assert rc != 0 and code == 0
    line = wait_for_failure(tls_lab, before, "is not pinned")
    assert fingerprint(tls_lab.ci.cert) in line


def test_connect_and_the_proxy_form_work_over_a_tls_listener(tls_lab):
    common = ["curl", "-sS", "--max-time", "20", "--proxy-cacert", tls_lab.hosts_ca.cert,
              "--proxy-cert", tls_lab.alice.cert, "--proxy-key", tls_lab.alice.key,
              "-x", "https://127.0.0.1:%d" % tls_lab.ports[0]]
    for extra in ([], ["-p"]):
        r = subprocess.run(common + extra + ["http://vm1:5986/hello"], capture_output=True,
                           text=True, timeout=60)
        assert (r.returncode, r.stdout) == (0, "hello from vm1\n"), r.stderr


def test_bodies_cross_tls_whole_both_ways(tls_lab):
    data = os.urandom(3 * 1024 * 1024 + 17)
    path = tls_lab.path("upload.bin")
    with open(path, "wb") as f:
        f.write(data)
    rc, code, body, err = curl_tls(tls_lab, "/sha256", cert=tls_lab.alice,
                                   extra=["--data-binary", "@" + path])
    assert (code, body.split()) == (200, [hashlib.sha256(data).hexdigest(), str(len(data))]), err
    rc, code, body, err = curl_tls(tls_lab, "/bytes/5000000", cert=tls_lab.alice,
                                   extra=["-o", tls_lab.path("down.bin")])
    assert code == 200 and os.path.getsize(tls_lab.path("down.bin")) == 5000000, err


@pytest.fixture
def tls_tcp_lab(tls_lab):
    """tls_lab's listener and certificates before one VM whose channel is
    TCP, which carries the agent's reset through guestd to hostd (unix and
    vsock streams have no reset)."""
    with Lab([VM("vm1", agent="native")], start_hostd=False, acl=ACL, channel="tcp") as lab:
        lab.hosts_ca = tls_lab.hosts_ca
        lab.alice = tls_lab.alice
        lab.listener_tables = [mtls_listener(tls_lab.server, tls_lab.clients_ca)]
        lab.start_hostd()
        yield lab


def read_to_the_end_over_tls(lab, cert, request):
    """Sends `request` over TLS to the first listener and reads until the
    connection ends: the bytes, and how it ended: "close_notify" (complete,
    RFC 8446 §6.1) or "cut" (the connection ended without it). curl cannot
    tell these apart (it ignores a missing close_notify); python's ssl can,
    once told not to ignore it either."""
    context = tls_context(lab, cert)
    context.options &= ~getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    with socket.create_connection(("127.0.0.1", lab.ports[0]), timeout=20) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1",
                                 suppress_ragged_eofs=False) as s:
            s.sendall(request)
            data = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except ssl.SSLError as e:  # SSLEOFError, or OpenSSL 3's own reason
                    if isinstance(e, ssl.SSLEOFError) or e.reason == "UNEXPECTED_EOF_WHILE_READING":
                        return data, "cut"
                    raise
                if not chunk:
                    return data, "close_notify"
                data += chunk


# Byte k of every body the test agent streams (tests/agents/test_agent.cpp).
PATTERN = bytes(((i * 131) + (i >> 8) * 7) & 0xFF for i in range(1000))


def test_a_response_cut_upstream_is_cut_for_a_tls_client(tls_tcp_lab):
    # HTTP/1.0 and a body with neither length nor chunked coding: it ends
    # with the connection, so only the missing close_notify can tell the
    # client that the agent's reset cut it.
    data, end = read_to_the_end_over_tls(
        tls_tcp_lab, tls_tcp_lab.alice,
        b"GET /die-mid-body?framing=close&sent=1000&reset=1 HTTP/1.0\r\nX-VM-Id: vm1\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") and body == PATTERN, head
    assert end == "cut", "the cut body ended with close_notify, as if complete"
    assert tls_tcp_lab.last_request(target="vm1")["aborted"] == "upstream"


def test_a_body_that_ends_with_the_connection_ends_with_close_notify(tls_lab):
    # The same body, ended in order by the agent: complete, and so told.
    data, end = read_to_the_end_over_tls(
        tls_lab, tls_lab.alice,
        b"GET /die-mid-body?framing=close&sent=1000 HTTP/1.0\r\nX-VM-Id: vm1\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") and body == PATTERN, head
    assert end == "close_notify"


def tls_context(lab, cert):
    ctx = ssl.create_default_context(cafile=lab.hosts_ca.cert)
    ctx.load_cert_chain(cert.cert, cert.key)
    return ctx


def server_fingerprint(lab, port):
    out = subprocess.run(
        ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-cert", lab.alice.cert,
         "-key", lab.alice.key, "-CAfile", lab.hosts_ca.cert],
        input="", capture_output=True, text=True, timeout=30).stdout
    pem = out[out.index("-----BEGIN CERTIFICATE-----"):out.index("-----END CERTIFICATE-----") + 25]
    path = lab.path("seen-%d.pem" % len(os.listdir(lab.dir)))
    with open(path, "w") as f:
        f.write(pem + "\n")
    return fingerprint(path)


def test_sighup_swaps_the_certificate_and_keeps_open_connections(tls_lab):
    port = tls_lab.ports[0]
    assert server_fingerprint(tls_lab, port) == fingerprint(tls_lab.server.cert)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=tls_context(tls_lab, tls_lab.alice),
                                       timeout=20)
    conn.request("GET", "/hello", headers={"X-VM-Id": "vm1"})
    assert conn.getresponse().read() == b"hello from vm1\n"

    renewed = tls_lab.pki.server(tls_lab.hosts_ca, "kvm1-renewed")
    shutil.copy(renewed.cert, tls_lab.server.cert)
    shutil.copy(renewed.key, tls_lab.server.key)
    os.kill(tls_lab.hostd.pid, signal.SIGHUP)
    tls_lab.hostd.wait_for(r"event=tls_reloaded")
    assert server_fingerprint(tls_lab, port) == fingerprint(renewed.cert)

    # The connection opened before the reload carries on.
    conn.request("GET", "/hello", headers={"X-VM-Id": "vm1"})
    assert conn.getresponse().read() == b"hello from vm1\n"
    conn.close()


def test_a_reload_with_a_broken_key_keeps_the_old_certificate(tls_lab):
    port = tls_lab.ports[0]
    before = server_fingerprint(tls_lab, port)
    key = open(tls_lab.server.key, "rb").read()
    with open(tls_lab.server.key, "wb") as f:
        f.write(b"not a key\n")
    try:
        os.kill(tls_lab.hostd.pid, signal.SIGHUP)
        tls_lab.hostd.wait_for(r"event=tls_reload_failed .*tls\.key")
        assert server_fingerprint(tls_lab, port) == before
    finally:
        with open(tls_lab.server.key, "wb") as f:
            f.write(key)


def test_a_plaintext_client_on_a_tls_listener_is_closed_and_logged(tls_lab):
    before = len(handshake_failures(tls_lab))
    with socket.create_connection(("127.0.0.1", tls_lab.ports[0]), timeout=10) as s:
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-VM-Id: vm1\r\n\r\n")
        assert s.recv(100) == b""
    wait_for_failure(tls_lab, before, "http request")


def test_a_certificate_listener_without_client_ca_refuses_to_start():
    with Lab([VM("vm1", agent=None)], start_hostd=False) as lab:
        pki = Pki(lab.path("pki"))
        server = pki.server(pki.ca("hosts"), "kvm1")
        lab.listener_tables = [{"address": "tcp:127.0.0.1:0", "identity": "certificate",
                                "tls": server.tls_table()}]
        r = subprocess.run([HOSTD, "--config",
                            lab.write_hostd_config(), "--check-config"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode != 0
        assert "listener[0].identity" in r.stderr and "client_ca" in r.stderr
