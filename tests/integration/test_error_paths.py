"""Every way a request can fail gives the client the documented status, a
one-line body naming the request id, and the same id in hostd's log; no
failure hangs, and none takes a daemon down."""

import hashlib
import re
import socket
import subprocess
import threading

import pytest

from vmgate_lab import HOSTD, VM, Lab, parse_kv, parse_raw_response, wait_until

# Both apply to every request in this lab, not only to the ones that test
# them: the connect timeout bounds every channel set-up (guestd's answer
# included) and the idle timeout every wait for the agent. Long enough that a
# loaded machine (a sanitizer build, parallel tests) never reaches them on a
# request that should succeed.
CONNECT_TIMEOUT_MS = 3000
IDLE_TIMEOUT_MS = 5000
HEADER_BYTES = 4096
MAX_REQUEST_BODY = 1024 * 1024
HEADER_TIMEOUT_MS = 2000
AGENT_CONNECT_TIMEOUT_MS = 1000  # guestd's; below CONNECT_TIMEOUT_MS, so guestd answers first
GUESTD_PREAMBLE_TIMEOUT_MS = 1500  # guestd's: a preamble that dawdles is closed after this
# The clients' own timeout: a request that gets no answer within it fails
# (curl exits 28, a socket read raises). No test measures time itself.
NOT_A_HANG = 10.0
# Byte k of every body the test agent streams (tests/agents/test_agent.cpp).
PATTERN = bytes(((i * 131) + (i >> 8) * 7) & 0xFF for i in range(65536))
# Long enough for a request that waits out IDLE_TIMEOUT_MS before its answer.
SLOW_ANSWER = IDLE_TIMEOUT_MS / 1000.0 + NOT_A_HANG


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


class UnansweredListener:
    """A TCP listener whose accept queue is full, so a connect to it hangs
    (the kernel drops the SYN): an agent that never answers guestd."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.address = "tcp:127.0.0.1:%d" % self.sock.getsockname()[1]
        # Backlog 0 queues one connection; it is never accepted.
        self.filler = socket.create_connection(self.sock.getsockname())

    def close(self):
        self.filler.close()
        self.sock.close()


@pytest.fixture(scope="module")
def unanswered():
    listener = UnansweredListener()
    try:
        yield listener
    finally:
        listener.close()


@pytest.fixture(scope="module")
def lab(unanswered):
    vms = [
        VM("vm1"),                                    # healthy
        VM("vm-off", running=False, agent=None),      # shut off in libvirt
        VM("vm-dead"),                                # guestd killed by a test
        VM("vm-silent", agent=None),                  # guestd accepts, never answers
        VM("vm-nosocket", agent=None),                # no guestd at all
        VM("vm-agentdown"),                           # agent killed by a test, guestd lives
        VM("vm-agentstuck", agent=None,               # guestd's connect to the agent hangs
           guestd_agents={"5986": unanswered.address}),
        VM("vm-broken"),                              # only the broken-agent endpoints
        VM("twin", agent=None), VM("TWIN", agent=None),  # one name up to case
    ]
    hostd = {
        # Pooled channels never expire here: a channel hostd closes is one it
        # chose not to keep, which guestd's end-of-channel line then shows.
        "channel": {"connect_timeout_ms": CONNECT_TIMEOUT_MS, "pool_idle_timeout_ms": 600000},
        "limits": {"header_bytes": HEADER_BYTES, "idle_timeout_ms": IDLE_TIMEOUT_MS,
                   "header_timeout_ms": HEADER_TIMEOUT_MS,
                   "max_request_body": MAX_REQUEST_BODY},
    }
    guestd = {"limits": {"agent_connect_timeout_ms": AGENT_CONNECT_TIMEOUT_MS,
                         "preamble_timeout_ms": GUESTD_PREAMBLE_TIMEOUT_MS}}
    with Lab(vms, hostd=hostd, guestd=guestd) as lab:
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
    # curl's own timeout is shorter than that: a refusal held back until
    # curl gives up and sends the body ends the transfer in an error instead.
    data = b"x" * (2 * 1024 * 1024)
    r = lab.curl("/sha256", "--data-binary", "@-", "-H", "X-VM-Id: nosuchvm",
                 "-H", "Expect: 100-continue", "--expect100-timeout", "30",
                 input=data, timeout=NOT_A_HANG)
    check_error(lab, r, 404, "nosuchvm")
    assert "HTTP/1.1 100" not in r.raw_headers
    assert r.returncode == 0, r.stderr


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


def chunked(body, piece):
    """`body` in chunked coding (RFC 9112 §7.1), `piece` bytes per chunk."""
    out = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + piece]), body[i:i + piece])
                   for i in range(0, len(body), piece))
    return out + b"0\r\n\r\n"


def post_chunked(lab, body, piece):
    return lab.raw_response(b"POST /sha256 HTTP/1.1\r\nHost: x\r\nX-VM-Id: vm1\r\n"
                            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" +
                            chunked(body, piece))


def test_chunked_request_body_over_max_request_body_is_413(lab):
    # A chunked body's size shows only as it streams: the request is already
    # on its way to the agent when the chunk that crosses the limit is read.
    r = lab.raw_response(b"POST /sha256 HTTP/1.1\r\nHost: x\r\nX-VM-Id: vm1\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n"
                         b"10\r\n0123456789abcdef\r\n%x\r\nabc" % MAX_REQUEST_BODY)
    check_error(lab, r, 413, str(MAX_REQUEST_BODY))
    assert r.headers.get("connection") == "close", r.headers


def test_chunked_request_body_exactly_at_max_request_body_is_served_whole(lab):
    body = bytes(range(256)) * (MAX_REQUEST_BODY // 256)
    assert len(body) == MAX_REQUEST_BODY
    r = post_chunked(lab, body, 64 * 1024 - 3)
    assert (r.status, r.text) == (200, "%s %d\n" % (hashlib.sha256(body).hexdigest(), len(body)))


def test_many_small_chunks_crossing_max_request_body_are_413(lab):
    # No chunk is large: only their sum crosses the limit.
    r = post_chunked(lab, b"z" * (MAX_REQUEST_BODY + 1), 1000)
    check_error(lab, r, 413, str(MAX_REQUEST_BODY))


def test_port_not_allowlisted_by_guestd_is_403_saying_so(lab):
    # Raw, as curl does not show the body of a refused CONNECT.
    r = lab.raw_response(b"CONNECT vm1:22 HTTP/1.1\r\nHost: vm1:22\r\n\r\n")
    check_error(lab, r, 403, "port 22", "port-not-allowed")
    # guestd writes its record after the refusal, so the client can be first.
    wait_until(lambda: any("event=channel" in l and "port=22" in l and "status=403" in l
                           for l in lab.guestds["vm1"].lines()),
               5, "guestd's record of the refused port")


# -- channel failures -----------------------------------------------------------------

# A guestd that is down may be restarting, or its VM booting: hostd tries
# again within the connect timeout (test_guest_not_ready.py), then says where
# it found nobody answering.

def test_guestd_down_is_502_within_the_connect_timeout_not_a_hang(lab):
    r = lab.curl("/hello", "-H", "X-VM-Id: vm-dead")
    assert (r.status, r.text) == (200, "hello from vm-dead\n")
    lab.kill_guestd("vm-dead")  # SIGKILL: the socket file stays, nobody listens
    r = lab.curl("/hello", "-H", "X-VM-Id: vm-dead", timeout=NOT_A_HANG)
    check_error(lab, r, 502, "guestd not answering on unix:%s (vm vm-dead)"
                % lab.socket_path("vm-dead"), "Connection refused")


def test_guestd_socket_missing_is_502(lab):
    r = lab.curl("/hello", "-H", "X-VM-Id: vm-nosocket", timeout=NOT_A_HANG)
    check_error(lab, r, 502, "guestd not answering on unix:%s (vm vm-nosocket)"
                % lab.socket_path("vm-nosocket"), "No such file")


def test_guestd_that_never_answers_is_502_after_connect_timeout(lab):
    r = lab.curl("/hello", "-H", "X-VM-Id: vm-silent", timeout=SLOW_ANSWER)
    check_error(lab, r, 502, "guestd not answering on unix:%s (vm vm-silent)"
                % lab.socket_path("vm-silent"), "no answer within %d ms" % CONNECT_TIMEOUT_MS)


def test_agent_slower_than_idle_timeout_is_504(lab):
    r = lab.curl("/slow?ms=20000", "-H", "X-VM-Id: vm1", timeout=SLOW_ANSWER)
    check_error(lab, r, 504, "vm vm1 did not answer within %d ms" % IDLE_TIMEOUT_MS)
    # Slower than nothing, but within the idle timeout, is fine.
    r = lab.curl("/slow?ms=100", "-H", "X-VM-Id: vm1")
    assert (r.status, r.text) == (200, "slow\n")


# -- the agent fails behind a live guestd ----------------------------------------------

def guestd_channel_end(lab, vm, request_id):
    """guestd's line for the channel opened by `request_id`, once the channel
    has ended (waits for it)."""
    return wait_until(lambda: next((parse_kv(l) for l in lab.guestds[vm].lines()
                                    if "event=channel " in l
                                    and parse_kv(l).get("req") == request_id), None),
                      NOT_A_HANG, "guestd's line for the channel of request %s" % request_id)


def test_agent_down_behind_a_live_guestd_is_502_from_guestds_answer(lab):
    lab.agents["vm-agentdown"].kill()
    r = lab.curl("/hello", "-H", "X-VM-Id: vm-agentdown", timeout=NOT_A_HANG)
    request_id = check_error(lab, r, 502, "agent on vm vm-agentdown port 5986 is unreachable",
                             "(guestd: agent-unreachable)")
    line = guestd_channel_end(lab, "vm-agentdown", request_id)
    assert (line["status"], line["reason"]) == ("502", "agent-unreachable"), line
    assert lab.guestds["vm-agentdown"].alive()


def test_agent_that_never_accepts_guestds_connect_is_504_from_guestds_answer(lab):
    r = lab.curl("/hello", "-H", "X-VM-Id: vm-agentstuck", timeout=NOT_A_HANG)
    request_id = check_error(lab, r, 504, "agent on vm vm-agentstuck port 5986 did not answer "
                             "guestd in time", "(guestd: agent-timeout)")
    line = guestd_channel_end(lab, "vm-agentstuck", request_id)
    assert (line["status"], line["reason"]) == ("504", "agent-timeout"), line


def test_agent_response_head_over_header_bytes_is_502(lab):
    r = lab.curl("/big-head?bytes=%d" % (2 * HEADER_BYTES), "-H", "X-VM-Id: vm-broken",
                 timeout=NOT_A_HANG)
    request_id = check_error(lab, r, 502, "agent response head exceeds %d bytes" % HEADER_BYTES)
    guestd_channel_end(lab, "vm-broken", request_id)  # the channel is not kept
    # The same endpoint with a head under the limit is relayed. (On port 8114,
    # so that the channel it leaves in the pool is not the one the next tests
    # of vm-broken, on 5986, would reuse: each must open its own channel for
    # guestd's line of it to carry its request id.)
    r = lab.curl("http://vm-broken:8114/big-head?bytes=%d" % (HEADER_BYTES // 2),
                 "-x", "http://127.0.0.1:%d" % lab.port)
    assert (r.status, r.text) == (200, "big\n")
    assert r.headers["x-padding"] == "a" * (HEADER_BYTES // 2)


def test_agent_switching_protocols_is_502_pointing_at_connect(lab):
    r = lab.curl("/switch-protocols", "-H", "X-VM-Id: vm-broken", timeout=NOT_A_HANG)
    request_id = check_error(lab, r, 502, "agent switched protocols; use CONNECT")
    assert "HTTP/1.1 101" not in r.raw_headers
    guestd_channel_end(lab, "vm-broken", request_id)


def test_agent_malformed_response_body_is_502(lab):
    r = lab.curl("/malformed-body", "-H", "X-VM-Id: vm-broken", timeout=NOT_A_HANG)
    request_id = check_error(lab, r, 502, "malformed response body from the agent")
    guestd_channel_end(lab, "vm-broken", request_id)


def test_agent_dying_mid_body_cuts_the_client_and_the_channel_is_not_kept(lab):
    length, sent = 100000, 1000
    with socket.create_connection(("127.0.0.1", lab.port), timeout=NOT_A_HANG) as s:
        # Keep-alive asked for: only the failure may end this connection.
        client = "127.0.0.1:%d" % s.getsockname()[1]
        s.sendall(b"GET /die-mid-body?length=%d&sent=%d HTTP/1.1\r\nHost: x\r\n"
                  b"X-VM-Id: vm-broken\r\n\r\n" % (length, sent))
        raw = b""
        while True:
            chunk = s.recv(65536)  # raises on NOT_A_HANG: hostd must close, not wait
            if not chunk:
                break
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    r = parse_raw_response(raw)
    assert (r.status, r.headers["content-length"]) == (200, str(length)), head
    assert body == PATTERN[:sent], len(body)
    record = lab.last_request(client=client)
    assert record["status"] == "200", record
    # hostd closed the channel rather than pooling it: guestd logs its end.
    line = guestd_channel_end(lab, "vm-broken", record["req"])
    assert line["status"] == "200", line


# -- refusals through the proxy that the admin API also gives ------------------------

def test_a_name_matching_two_vms_is_409_naming_both(lab):
    r = lab.curl("/hello", "-H", "X-VM-Id: Twin")
    check_error(lab, r, 409, "'Twin' matches more than one VM", "twin", "TWIN")


# Targets naming many VMs are resolved first: what resolves to nothing says
# why (404; a resolved set is delivered, test_fanout.py); HOST/NAME is not
# served yet.
@pytest.mark.parametrize("target,status,needle", [
    ("group:web", 404, "group 'web' is not known"),
    ("net:default", 404, "no VM is attached to network 'default'"),
    ("kvm7/vm1", 501, "HOST/NAME targets are served in cluster mode")])
def test_group_network_list_and_host_targets_are_refused_saying_why(lab, target, status, needle):
    r = lab.curl("/hello", "-H", "X-VM-Id: " + target)
    request_id = check_error(lab, r, status, needle)
    (line,) = [l for l in lab.request_log(request_id) if "event=request " in l]
    assert "target=%s" % target in line or 'target="%s"' % target in line, line


def test_a_vm_without_a_vsock_device_is_503_saying_what_to_add():
    with Lab([VM("vm-novsock", agent=None, vsock=False)], start_hostd=False) as lab:
        lab.hostd_overrides["channel"] = {"transport": "unix:" + lab.path("cid-{cid}.sock")}
        lab.start_hostd()
        r = lab.curl("/hello", "-H", "X-VM-Id: vm-novsock")
        check_error(lab, r, 503, "vm vm-novsock has no vsock device",
                    "add <vsock model='virtio'> to its domain XML")


# -- header_timeout_ms ----------------------------------------------------------------

def read_until_closed(s):
    data = b""
    while True:
        chunk = s.recv(65536)  # raises on the socket's timeout: hostd must close first
        if not chunk:
            return data
        data += chunk


def test_a_head_that_stops_arriving_is_closed_without_an_answer(lab):
    assert HEADER_TIMEOUT_MS / 1000.0 < NOT_A_HANG
    with socket.create_connection(("127.0.0.1", lab.port), timeout=NOT_A_HANG) as s:
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-VM-Id: vm1\r\n")
        assert read_until_closed(s) == b""
    # The same head, finished in a second write, is served.
    with socket.create_connection(("127.0.0.1", lab.port), timeout=NOT_A_HANG) as s:
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-VM-Id: vm1\r\n")
        s.sendall(b"Connection: close\r\n\r\n")
        r = parse_raw_response(read_until_closed(s))
    assert (r.status, r.body) == (200, b"hello from vm1\n")


def test_an_idle_keep_alive_connection_is_closed_after_its_answer(lab):
    with socket.create_connection(("127.0.0.1", lab.port), timeout=NOT_A_HANG) as s:
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-VM-Id: vm1\r\n\r\n")
        r = parse_raw_response(read_until_closed(s))
    # Kept alive, answered in full, then closed with nothing more said.
    assert (r.status, r.body) == (200, b"hello from vm1\n")
    assert r.headers.get("connection") != "close", r.headers
    assert r.raw_headers.count("HTTP/1.1") == 1


def preamble_exchange(lab, data):
    """Writes `data` straight to vm1's guestd channel socket and returns all
    it answers until it closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(NOT_A_HANG)
        s.connect(lab.socket_path("vm1"))
        s.sendall(data)
        answer = b""
        while True:
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break  # guestd closed
            answer += chunk
    return answer


def guestd_serves_on(lab):
    r = lab.curl("/hello", "-H", "X-VM-Id: vm1")
    assert (r.status, r.text) == (200, "hello from vm1\n")
    assert lab.guestds["vm1"].alive()


@pytest.mark.parametrize("data, answer", [
    # Not a preamble at all: an HTTP request sent to the channel port.
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"VMGATE/1 400 bad-preamble\r\n\r\n"),
    # A version this guestd does not speak.
    (b"VMGATE/2 CONNECT 5986\r\n\r\n", b"VMGATE/1 400 unsupported-version\r\n\r\n"),
    # No terminator within the protocol's 4096 bytes.
    (b"VMGATE/1 CONNECT 5986\r\nX-Padding: " + b"x" * 8192,
     b"VMGATE/1 400 preamble-too-large\r\n\r\n"),
    # A verb no version defines.
    (b"VMGATE/1 FROBNICATE 5986\r\n\r\n", b"VMGATE/1 400 unknown-verb\r\n\r\n"),
    # A verb that travels guest to host: guestd does not serve it.
    (b"VMGATE/1 JOIN web\r\n\r\n", b"VMGATE/1 501 not-implemented\r\n\r\n"),
    (b"VMGATE/1 CONNECT 5986\r\nno colon here\r\n\r\n", b"VMGATE/1 400 bad-preamble\r\n\r\n"),
    (b"\x00\xff\x16\x03\x01garbage\r\n\r\n", b"VMGATE/1 400 bad-preamble\r\n\r\n"),
], ids=["http-request", "version-2", "oversize", "unknown-verb", "guest-verb", "bad-field", "binary"])
def test_a_bad_preamble_to_guestd_is_answered_and_closed_and_guestd_serves_on(lab, data, answer):
    got = preamble_exchange(lab, data)
    assert re.fullmatch(rb"VMGATE/1 [45]0[01] [a-z-]+\r\n\r\n", got), got
    assert got == answer
    guestd_serves_on(lab)


def test_a_preamble_that_never_ends_is_closed_at_preamble_timeout_and_others_are_served(lab):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as slow:
        slow.settimeout(NOT_A_HANG)
        slow.connect(lab.socket_path("vm1"))
        slow.sendall(b"VMGATE/1 CONNECT 5986\r\nRequest-Id: slowpreamble\r\n")
        # While it dawdles, guestd serves others.
        guestd_serves_on(lab)
        # Then it is closed, unanswered (nothing it could be told is due yet).
        assert slow.recv(4096) == b""
    line = wait_until(lambda: next((parse_kv(l) for l in lab.guestds["vm1"].lines()
                                    if "reason=preamble-timeout" in l), None),
                      NOT_A_HANG, "guestd's line of the preamble timeout")
    assert int(line["ms"]) >= GUESTD_PREAMBLE_TIMEOUT_MS
    guestd_serves_on(lab)


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
