"""A VM that runs but whose guestd does not answer yet (booting, guestd
restarting) is tried again with jittered backoff inside
channel.connect_timeout_ms: a guestd that comes up within it serves the
request, one that never does is a 502 "guestd not answering on cid N (vm
NAME)" (the transport address for the unix stand-in) within the bound, and
an answer from guestd, a refusal included, is never retried."""

import socket
import threading
import time

import pytest

from vmgate_lab import VM, Lab, parse_kv, wait_until

# Long enough that a guestd started a second or two after the request is
# still in time on a loaded machine; short enough to wait out in a test.
CONNECT_TIMEOUT_MS = 6000
# What the client allows beyond the bound before calling it a hang.
SLACK = 5.0
# A vsock port nothing here listens on (this machine's own CID answers ENODEV).
NOBODY_LISTENS = 45999


def in_background(function):
    """Runs `function` on a thread; the returned callable joins it and gives
    its result."""
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("value", function()), daemon=True)
    thread.start()

    def result():
        thread.join(CONNECT_TIMEOUT_MS / 1000.0 + 2 * SLACK)
        assert not thread.is_alive(), "the request did not finish"
        return box["value"]
    return result


@pytest.fixture(scope="module")
def lab():
    vms = [
        VM("late", guestd=False),            # guestd started by a test, after the request
        VM("restarting"),                    # guestd killed, then started again
        VM("never", guestd=False),           # guestd never starts
        VM("refusing"),                      # guestd answers 403 for port 22
    ]
    hostd = {"channel": {"connect_timeout_ms": CONNECT_TIMEOUT_MS}}
    with Lab(vms, hostd=hostd) as lab:
        yield lab


def vm_named(lab, name):
    return next(vm for vm in lab.vms if vm.name == name)


def hello(lab, name):
    return lab.curl("/hello", "-H", "X-VM-Id: " + name,
                    timeout=CONNECT_TIMEOUT_MS / 1000.0 + SLACK)


def test_a_guestd_that_starts_after_the_request_arrives_serves_it(lab):
    pending = in_background(lambda: hello(lab, "late"))
    # hostd has met the missing socket by now, and keeps trying.
    time.sleep(1.5)
    lab.start_guestd(vm_named(lab, "late"))
    r = pending()
    assert (r.status, r.text) == (200, "hello from late\n"), (r, r.text)


def test_a_guestd_restarting_under_a_request_serves_it(lab):
    r = hello(lab, "restarting")
    assert r.status == 200, r
    lab.kill_guestd("restarting")  # SIGKILL: its socket file stays, connects are refused
    pending = in_background(lambda: hello(lab, "restarting"))
    time.sleep(1.0)
    lab.start_guestd(vm_named(lab, "restarting"))
    r = pending()
    assert (r.status, r.text) == (200, "hello from restarting\n"), (r, r.text)


def test_a_guestd_that_never_answers_is_502_naming_where_within_the_bound(lab):
    started = time.monotonic()
    r = hello(lab, "never")
    elapsed = time.monotonic() - started
    assert r.status == 502, (r, r.text)
    assert r.text.startswith("502 Bad Gateway: guestd not answering on unix:%s (vm never): "
                             % lab.socket_path("never")), r.text
    assert "No such file or directory" in r.text and "attempts in" in r.text, r.text
    # Several attempts, and the answer came at the bound, not before and not much after.
    attempts = int(r.text.split(" attempts in ")[0].rsplit(" ", 1)[1])
    assert attempts >= 3, r.text
    assert CONNECT_TIMEOUT_MS / 1000.0 - 0.5 <= elapsed <= CONNECT_TIMEOUT_MS / 1000.0 + SLACK, \
        elapsed
    record = lab.last_request(vm="never")
    assert record["status"] == "502", record


def test_a_refusal_from_guestd_is_answered_at_once_never_retried(lab):
    r = lab.raw_response(b"CONNECT refusing:22 HTTP/1.1\r\nHost: refusing:22\r\n\r\n",
                         timeout=CONNECT_TIMEOUT_MS / 1000.0 + SLACK)
    assert r.status == 403 and b"port-not-allowed" in r.body, r
    request_id = r.headers["x-request-id"]
    guestd = lab.guestds["refusing"]
    wait_until(lambda: any(parse_kv(l).get("req") == request_id for l in guestd.lines()),
               5, "guestd's record of the refused channel")
    # One attempt only: guestd saw one channel for the request.
    time.sleep(0.5)
    seen = [l for l in guestd.lines()
            if "event=channel " in l and parse_kv(l).get("req") == request_id]
    assert len(seen) == 1, seen


def vsock_available():
    try:
        socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not vsock_available(), reason="no AF_VSOCK in this kernel")
def test_a_vsock_guest_not_answering_is_502_naming_its_cid():
    # CID 3 with a port nobody listens on: in a guest (this lab machine is
    # one) the connect fails at once with ENODEV, on a host it is reset or
    # times out; each is a guest not answering. Never CID 2: the host.
    vm = VM("vsockvm", cid=3, agent=None, guestd=False)
    hostd = {"channel": {"transport": "vsock:{cid}:%d" % NOBODY_LISTENS,
                         "connect_timeout_ms": 1000}}
    with Lab([vm], hostd=hostd) as lab:
        r = lab.curl("/hello", "-H", "X-VM-Id: vsockvm", timeout=1.0 + SLACK)
        assert r.status == 502, (r, r.text)
        assert r.text.startswith("502 Bad Gateway: guestd not answering on cid 3 (vm vsockvm): "), r.text
