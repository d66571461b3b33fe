"""A passthrough listener routes TLS on the ClientHello's server name and
relays it untouched: the client sees the agent's own certificate and talks to
the agent end to end, while hostd never terminates the TLS. A connection that
names no VM under the host suffix, or is not TLS at all, is closed without an
answer (whatever hostd wrote would be read as a TLS record), and hostd's
record of it says why."""

import re
import socket
import subprocess
import time

import pytest

from vmgate_lab import VM, Lab, metric, wait_until

SUFFIX = ".vms.example"
# Short, so that the timeout test waits little; far above what a local
# ClientHello takes to arrive.
CLIENT_HELLO_TIMEOUT_MS = 1500
CLIENT_HELLO_BYTES = 4096  # curl's and openssl's ClientHellos are under 600 bytes
NOT_A_HANG = 20.0


def run(argv, input=b"", timeout=NOT_A_HANG):
    return subprocess.run(argv, input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=timeout)


def fingerprint(pem):
    """SHA-256 fingerprint of a PEM certificate, as openssl x509 prints it."""
    r = run(["openssl", "x509", "-noout", "-fingerprint", "-sha256"], input=pem)
    assert r.returncode == 0, r.stderr
    return r.stdout.decode().strip().split("=", 1)[1]


class Agent:
    """openssl s_server with a certificate made for this run, as vm1's agent
    on guest port 5986: a real TLS server that hostd must not terminate."""

    def __init__(self, lab):
        self.cert = lab.path("agent-cert.pem")
        key = lab.path("agent-key.pem")
        r = run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj",
                 "/CN=vm1" + SUFFIX, "-keyout", key, "-out", self.cert])
        assert r.returncode == 0, r.stderr
        with open(self.cert, "rb") as f:
            self.fingerprint = fingerprint(f.read())
        # -www: "GET /" is answered with a status page, then the connection closes.
        self.process = lab.spawn("agent-vm1", ["openssl", "s_server", "-accept", "127.0.0.1:0",
                                               "-cert", self.cert, "-key", key, "-www"])
        m = self.process.wait_for(r"^ACCEPT 127\.0\.0\.1:(\d+)$", stream="stdout")
        self.port = int(m.group(1))


@pytest.fixture(scope="module")
def lab():
    vm1 = VM("vm1", agent=None, guestd=False)
    listeners = [{"address": "tcp:127.0.0.1:0", "guest_port": 5986, "mode": "passthrough",
                  "trusted": True},
                 # Known by their address only, which no ACL rule lets in.
                 {"address": "tcp:127.0.0.1:0", "guest_port": 5986, "mode": "passthrough",
                  "identity": "source"}]
    limits = {"client_hello_timeout_ms": CLIENT_HELLO_TIMEOUT_MS,
              "client_hello_bytes": CLIENT_HELLO_BYTES}
    with Lab([vm1, VM("vm2", agent=None, guestd=False)], listeners=listeners,
             hostd={"routing": {"host_suffix": SUFFIX}, "limits": limits}) as lab:
        # The agent's certificate is made in the lab's temp dir, so the agent
        # and vm1's guestd start once the lab is up.
        lab.tls_agent = Agent(lab)
        vm1.guestd_agents = {"5986": "tcp:127.0.0.1:%d" % lab.tls_agent.port}
        vm1.guestd = True
        lab.start_guestd(vm1)
        yield lab


class Records:
    """hostd's request records that appear after this point."""

    def __init__(self, lab):
        self.lab = lab
        self.start = len(lab.hostd_requests())

    def next(self, timeout=10.0):
        def find():
            records = self.lab.hostd_requests()[self.start:]
            return records[0] if records else None
        return wait_until(find, timeout, "a new hostd request record")


def s_client(lab, *args, input=b"", port=None):
    return run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % (port or lab.port), *args],
               input=input)


def presented_certificate(output):
    m = re.search(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n", output, re.S)
    return m.group(0) if m else None


def connection_closed_unanswered(lab, data, wait=NOT_A_HANG):
    """Sends `data` (without closing our side) and returns what came back
    before hostd closed the connection."""
    with socket.create_connection(("127.0.0.1", lab.port), timeout=wait) as s:
        s.sendall(data)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


# -- through to the agent ----------------------------------------------------------

def test_the_client_sees_the_agents_own_certificate(lab):
    records = Records(lab)
    r = s_client(lab, "-servername", "vm1" + SUFFIX)
    pem = presented_certificate(r.stdout)
    assert pem, r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
    assert fingerprint(pem) == lab.tls_agent.fingerprint
    record = records.next()
    assert record["form"] == "sni" and record["vm"] == "vm1" and record["port"] == "5986"
    assert record["target"] == "vm1" and record["status"] == "200"
    assert metric(lab, "vmgate_requests_total", form="sni", status="200") >= 1


def test_data_crosses_the_tls_session_both_ways(lab):
    records = Records(lab)
    # -ign_eof: keep reading after our request is written, to the agent's close.
    r = s_client(lab, "-servername", "VM1" + SUFFIX.upper(), "-ign_eof", "-quiet",
                 input=b"GET / HTTP/1.0\r\n\r\n")
    assert b"HTTP/1.0 200 ok" in r.stdout, r.stdout + r.stderr
    assert b"s_server" in r.stdout
    record = records.next()
    assert record["vm"] == "vm1" and record["status"] == "200"
    # The ClientHello and the request went in, the certificate and page came out.
    assert int(record["bytes_in"]) > 200 and int(record["bytes_out"]) > 1000


def test_curl_reaches_the_agent_by_its_dns_name(lab):
    records = Records(lab)
    host = "vm1" + SUFFIX
    r = lab.curl("https://%s:%d/" % (host, lab.port), "-k",
                 "--resolve", "%s:%d:127.0.0.1" % (host, lab.port))
    assert r.returncode == 0 and r.status == 200, r
    assert b"s_server" in r.body
    # Written when the relay ends, which can be after curl exits: waited
    # for, so that the next test's first record is its own.
    assert records.next()["status"] == "200"


# -- closed unanswered, with the reason in hostd's record ---------------------------

def test_a_client_hello_without_sni_is_closed(lab):
    records = Records(lab)
    r = s_client(lab, "-noservername")
    assert r.returncode != 0 and presented_certificate(r.stdout) is None
    record = records.next()
    assert record["form"] == "sni" and record["status"] == "400"
    assert record["reason"] == "no SNI server name to route on: no server_name extension"
    assert record["bytes_out"] == "0"


def test_a_name_outside_the_host_suffix_is_closed(lab):
    records = Records(lab)
    r = s_client(lab, "-servername", "vm1.elsewhere.example")
    assert r.returncode != 0 and presented_certificate(r.stdout) is None
    record = records.next()
    assert record["status"] == "400"
    assert record["reason"] == "SNI name vm1.elsewhere.example is not under the host suffix " + SUFFIX


def test_an_unknown_vm_is_closed(lab):
    records = Records(lab)
    r = s_client(lab, "-servername", "nosuch" + SUFFIX)
    assert r.returncode != 0 and presented_certificate(r.stdout) is None
    record = records.next()
    assert record["status"] == "404" and record["target"] == "nosuch"
    assert record["reason"] == "vm 'nosuch' is not known to this host"


def test_a_client_the_access_policy_refuses_is_closed(lab):
    records = Records(lab)
    r = s_client(lab, "-servername", "vm1" + SUFFIX, port=lab.ports[1])
    assert r.returncode != 0 and presented_certificate(r.stdout) is None
    record = records.next()
    assert record["vm"] == "vm1" and record["status"] == "403", record
    assert "vm1" in record["reason"] and "5986" in record["reason"]


def test_a_vm_without_an_agent_behind_guestd_is_closed(lab):
    # vm2 runs, but no guestd answers on its channel.
    records = Records(lab)
    r = s_client(lab, "-servername", "vm2" + SUFFIX)
    assert r.returncode != 0 and presented_certificate(r.stdout) is None
    record = records.next()
    assert record["vm"] == "vm2" and record["status"] == "502", record


def test_plain_http_is_not_tls_and_is_closed_unanswered(lab):
    records = Records(lab)
    answer = connection_closed_unanswered(
        lab, b"GET / HTTP/1.1\r\nHost: vm1" + SUFFIX.encode() + b"\r\n\r\n")
    assert answer == b""
    record = records.next()
    assert record["status"] == "400" and record["reason"] == "not TLS: not a TLS handshake record"


def test_a_client_hello_that_never_completes_is_closed_at_the_timeout(lab):
    records = Records(lab)
    started = time.monotonic()
    # A record header promising a ClientHello, and nothing after it.
    answer = connection_closed_unanswered(lab, b"\x16\x03\x01\x01\x00\x01")
    elapsed = time.monotonic() - started
    assert answer == b""
    assert elapsed >= CLIENT_HELLO_TIMEOUT_MS / 1000.0 * 0.9
    record = records.next()
    assert record["status"] == "408"
    assert record["reason"].startswith("no whole ClientHello within %d ms" % CLIENT_HELLO_TIMEOUT_MS)


def test_a_client_hello_longer_than_the_limit_is_closed_at_once(lab):
    records = Records(lab)
    # Declares a 16 KiB record: more than client_hello_bytes, so hostd need
    # not wait for it.
    answer = connection_closed_unanswered(lab, b"\x16\x03\x01\x40\x00\x01\x00\x3f\xfc",
                                          wait=CLIENT_HELLO_TIMEOUT_MS / 2000.0)
    assert answer == b""
    record = records.next()
    assert record["status"] == "431"
    assert record["reason"].startswith("the ClientHello is longer than %d bytes" %
                                       CLIENT_HELLO_BYTES)


def test_a_client_that_sends_nothing_and_leaves_leaves_no_record(lab):
    records = Records(lab)
    socket.create_connection(("127.0.0.1", lab.port), timeout=5).close()
    # The next connection's record is the next one: nothing came in between.
    connection_closed_unanswered(lab, b"not tls")
    assert records.next()["reason"] == "not TLS: not a TLS handshake record"
