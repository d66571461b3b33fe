"""Every way a request can fail gives the client the documented status, a
one-line body naming the request id, and the same id in hostd's log; no
failure hangs, and none takes a daemon down."""

import hashlib
import re
import socket
import subprocess
import threading
import time

import pytest

from vmgate_lab import HOSTD, VM, Lab, wait_until

# Both apply to every request in this lab, not only to the ones that test
# them: the connect timeout bounds every channel set-up (guestd's answer
# included) and the idle timeout every wait for the agent. Long enough that a
# loaded machine (a sanitizer build, parallel tests) never reaches them on a
# request that should succeed.
CONNECT_TIMEOUT_MS = 3000
IDLE_TIMEOUT_MS = 5000
HEADER_BYTES = 4096
MAX_REQUEST_BODY = 1024 * 1024
NOT_A_HANG = 10.0  # seconds: a generous bound, only to tell "answered" from "hung"


class SilentGuestd:
    """A unix socket that accepts channel connections and never answers."""

    def __init__(self, path):
        self.path = path
        self.held = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(16)
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self):
        self.sock.close()
        for c in self.held:
            c.close()


@pytest.fixture(scope="module")
def lab():
    vms = [
        VM("vm1"),                                    # healthy
        VM("vm-off", running=False, agent=None),      # shut off in libvirt
        VM("vm-dead"),                                # guestd killed by a test
        VM("vm-silent", agent=None),                  # guestd accepts, never answers
        VM("vm-nosocket", agent=None),                # no guestd at all
    ]
    hostd = {
        "channel": {"connect_timeout_ms": CONNECT_TIMEOUT_MS},
        "limits": {"header_bytes": HEADER_BYTES, "idle_timeout_ms": IDLE_TIMEOUT_MS,
                   "max_request_body": MAX_REQUEST_BODY},
    }
    with Lab(vms, hostd=hostd) as lab:
        silent = SilentGuestd(lab.socket_path("vm-silent"))
        try:
            yield lab
        finally:
            silent.close()


def check_error(lab, r, status, *needles):
    """The documented error shape: status, one line naming the request id,
    X-Request-Id, and hostd's log line for that id with the same status."""
    assert r.status == status, r
    assert r.body.endswith(b"\n") and r.body.count(b"\n") == 1, r.body
    request_id = r.headers.get("x-request-id")
    assert request_id, r.headers
    assert r.text.startswith("%d " % status), r.text
    assert r.text.rstrip("\n").endswith("(request %s)" % request_id), r.text
    for needle in needles:
        assert needle in r.text, (needle, r.text)
    lines = lab.request_log(request_id)
    assert any("event=request " in l and "status=%d" % status in l for l in lines), lines
    return request_id


def timed_curl(lab, *args, **kw):
    start = time.monotonic()
    r = lab.curl(*args, timeout=30, **kw)
    return r, time.monotonic() - start


# -- directory and routing refusals --------------------------------------------------

def test_unknown_vm_is_404_with_the_request_id_in_body_and_log(lab):
    r = lab.curl("/hello", "-H", "X-VM-Id: nosuchvm")
    request_id = check_error(lab, r, 404, "vm 'nosuchvm' is not known to this host")
    assert re.fullmatch(r"404 Not Found: vm 'nosuchvm' is not known to this host "
                        r"\(request [0-9a-f]+\)\n", r.text), r.text
    (line,) = [l for l in lab.request_log(request_id) if "event=request " in l]
    assert "target=nosuchvm" in line


def test_an_error_answer_keeps_the_client_connection(lab):
    c = lab.connection()
    try:
        c.request("GET", "/hello", headers={"X-VM-Id": "nosuchvm"})
        r = c.getresponse()
        assert (r.status, r.will_close) == (404, False)
        r.read()
        sockname = c.sock.getsockname()
        c.request("GET", "/hello", headers={"X-VM-Id": "vm1"})
        r = c.getresponse()
        assert (r.status, r.read()) == (200, b"hello from vm1\n")
        assert c.sock.getsockname() == sockname
    finally:
        c.close()


def test_refused_upload_with_expect_100_is_answered_before_the_body(lab):
    # curl waits up to 30 s for 100 Continue; the refusal must come instead.
    data = b"x" * (2 * 1024 * 1024)
    r, elapsed = timed_curl(lab, "/sha256", "--data-binary", "@-", "-H", "X-VM-Id: nosuchvm",
                            "-H", "Expect: 100-continue", "--expect100-timeout", "30",
                            input=data)
    check_error(lab, r, 404, "nosuchvm")
    assert "HTTP/1.1 100" not in r.raw_headers
    assert elapsed < NOT_A_HANG


def test_shut_off_vm_is_503(lab):
    r = lab.curl("/hello", "-H", "X-VM-Id: vm-off")
    check_error(lab, r, 503, "vm-off")


def test_missing_target_is_400(lab):
    r = lab.curl("/hello")
    check_error(lab, r, 400, "no target VM")


def test_malformed_target_is_400(lab):
    r = lab.curl("/hello", "-H", "X-VM-Id: ../../etc")
    check_error(lab, r, 400)


def test_request_head_over_header_bytes_is_431(lab):
    r = lab.curl("/hello", "-H", "X-VM-Id: vm1", "-H", "X-Padding: " + "a" * (2 * HEADER_BYTES))
    check_error(lab, r, 431, str(HEADER_BYTES))
    # Just under the limit still passes.
    r = lab.curl("/hello", "-H", "X-VM-Id: vm1", "-H", "X-Padding: " + "a" * (HEADER_BYTES // 2))
    assert (r.status, r.text) == (200, "hello from vm1\n")


def test_request_body_declared_over_max_request_body_is_413_before_the_body(lab):
    # Refused from the head alone: no body byte is sent, none is waited for.
    r = lab.raw_response(b"POST /sha256 HTTP/1.1\r\nHost: x\r\nX-VM-Id: vm1\r\n"
                         b"Content-Length: %d\r\n\r\n" % (MAX_REQUEST_BODY + 1))
    check_error(lab, r, 413, str(MAX_REQUEST_BODY))
    # At the limit it is served.
    body = b"y" * MAX_REQUEST_BODY
    r = lab.curl("/sha256", "--data-binary", "@-", "-H", "X-VM-Id: vm1", input=body)
    assert (r.status, r.text) == (200, "%s %d\n" % (hashlib.sha256(body).hexdigest(), len(body)))


def test_chunked_request_body_over_max_request_body_is_413(lab):
    # A chunked body's size shows only as it streams: the request is already
    # on its way to the agent when the chunk that crosses the limit is read.
    r = lab.raw_response(b"POST /sha256 HTTP/1.1\r\nHost: x\r\nX-VM-Id: vm1\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n"
                         b"10\r\n0123456789abcdef\r\n%x\r\nabc" % MAX_REQUEST_BODY)
    check_error(lab, r, 413, str(MAX_REQUEST_BODY))
    assert r.headers.get("connection") == "close", r.headers


def test_port_not_allowlisted_by_guestd_is_403_saying_so(lab):
    # Raw, as curl does not show the body of a refused CONNECT.
    r = lab.raw_response(b"CONNECT vm1:22 HTTP/1.1\r\nHost: vm1:22\r\n\r\n")
    check_error(lab, r, 403, "port 22", "port-not-allowed")
    # guestd writes its record after the refusal, so the client can be first.
    wait_until(lambda: any("event=channel" in l and "port=22" in l and "status=403" in l
                           for l in lab.guestds["vm1"].lines()),
               5, "guestd's record of the refused port")


# -- channel failures -----------------------------------------------------------------

def test_guestd_down_is_502_quickly_not_a_hang(lab):
    r = lab.curl("/hello", "-H", "X-VM-Id: vm-dead")
    assert (r.status, r.text) == (200, "hello from vm-dead\n")
    lab.kill_guestd("vm-dead")  # SIGKILL: the socket file stays, nobody listens
    r, elapsed = timed_curl(lab, "/hello", "-H", "X-VM-Id: vm-dead")
    check_error(lab, r, 502, "vm-dead")
    assert elapsed < NOT_A_HANG


def test_guestd_socket_missing_is_502(lab):
    r, elapsed = timed_curl(lab, "/hello", "-H", "X-VM-Id: vm-nosocket")
    check_error(lab, r, 502, "vm-nosocket")
    assert elapsed < NOT_A_HANG


def test_guestd_that_never_answers_is_504_after_connect_timeout(lab):
    r, elapsed = timed_curl(lab, "/hello", "-H", "X-VM-Id: vm-silent")
    check_error(lab, r, 504, "vm-silent", "%d ms" % CONNECT_TIMEOUT_MS)
    assert CONNECT_TIMEOUT_MS / 1000.0 <= elapsed < CONNECT_TIMEOUT_MS / 1000.0 + NOT_A_HANG


def test_agent_slower_than_idle_timeout_is_504(lab):
    r, elapsed = timed_curl(lab, "/slow?ms=20000", "-H", "X-VM-Id: vm1")
    check_error(lab, r, 504, "vm1", "%d ms" % IDLE_TIMEOUT_MS)
    assert elapsed < IDLE_TIMEOUT_MS / 1000.0 + NOT_A_HANG
    # Slower than nothing, but within the idle timeout, is fine.
    r = lab.curl("/slow?ms=100", "-H", "X-VM-Id: vm1")
    assert (r.status, r.text) == (200, "slow\n")


def test_garbage_preamble_to_guestd_is_answered_400_and_closed(lab):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(NOT_A_HANG)
        s.connect(lab.socket_path("vm1"))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break  # guestd closed
            answer += chunk
    assert re.fullmatch(rb"VMGATE/1 400 [a-z-]+\r\n\r\n", answer), answer
    # guestd is still serving: a normal request through hostd works.
    r = lab.curl("/hello", "-H", "X-VM-Id: vm1")
    assert (r.status, r.text) == (200, "hello from vm1\n")
    assert lab.guestds["vm1"].alive()


def test_daemons_survive_every_error(lab):
    for p in [lab.hostd, lab.guestds["vm1"], lab.agents["vm1"]]:
        assert p.alive(), (p.name, p.stderr()[-2000:])
    r = lab.curl("/hello", "-H", "X-VM-Id: vm1")
    assert (r.status, r.text) == (200, "hello from vm1\n")


# -- configuration --------------------------------------------------------------------

def run_hostd(*args):
    return subprocess.run([HOSTD, *args], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("text, line, key", [
    ('[limits]\nheader_bytes = "big"\n', 2, "limits.header_bytes"),
    ('[libvirt]\nuri = "test:///default"\n\n[channel]\nconect_timeout_ms = 5\n', 5,
     "channel.conect_timeout_ms"),
    ('[[listener]]\naddress = "tcp:0.0.0.0:0"\ntrusted = true\n', 3, "listener[0].trusted"),
])
def test_bad_config_exits_nonzero_naming_file_line_and_key(lab, text, line, key):
    path = lab.write_hostd_config(text, name="bad.toml")
    for args in (["--config", path], ["--config", path, "--check-config"]):
        r = run_hostd(*args)
        assert r.returncode != 0, r
        assert "%s:%d: %s:" % (path, line, key) in r.stderr, r.stderr


def test_good_config_passes_check_config(lab):
    path = lab.write_hostd_config(name="good.toml")
    r = run_hostd("--config", path, "--check-config")
    assert r.returncode == 0, r.stderr
