"""SIGTERM stops hostd gracefully: it stops accepting, /readyz answers 503
from the first moment, idle keep-alive connections are closed at once,
requests in progress finish within limits.stop_grace_ms and what is left
after it is cut; then hostd exits 0."""

import socket
import ssl
import threading
import time

from pki import Pki
from vmgate_lab import VM, Lab, UnixHTTPConnection

GRACE_MS = 3000
NOT_A_HANG = 30.0  # seconds: only to tell "answered" from "hung"


def stop_lab():
    return Lab([VM("vm1")], hostd={"limits": {"stop_grace_ms": GRACE_MS}})


def start_slow_request(lab, ms):
    """A GET /slow?ms=MS on a connection of its own; returns (socket, reader
    thread, result dict) — result["data"] is all the client received."""
    s = socket.create_connection(("127.0.0.1", lab.port), timeout=NOT_A_HANG)
    s.sendall(b"GET /slow?ms=%d HTTP/1.1\r\nHost: x\r\nX-VM-Id: vm1\r\n\r\n" % ms)
    result = {"data": b""}

    def read():
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                result["data"] += chunk
                if result["data"].endswith(b"slow\n"):
                    break
        except OSError:
            pass

    reader = threading.Thread(target=read)
    reader.start()
    return s, reader, result


def let_it_reach_the_agent():
    # Only so that the request is under way when SIGTERM comes; nothing is
    # asserted about time.
    time.sleep(0.5)


def readyz(lab):
    c = UnixHTTPConnection(lab.path("admin.sock"))
    try:
        c.request("GET", "/readyz")
        r = c.getresponse()
        return r.status
    finally:
        c.close()


def ask_hello_and_keep_alive(c):
    """One GET /hello on `c`, read to the end of its answer; `c` stays open."""
    c.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-VM-Id: vm1\r\n\r\n")
    data = b""
    while b"hello from vm1\n" not in data:
        chunk = c.recv(4096)
        assert chunk, data
        data += chunk


def test_a_slow_request_finishes_after_sigterm_and_hostd_exits_0_afterwards():
    with stop_lab() as lab:
        s, reader, result = start_slow_request(lab, 1000)
        let_it_reach_the_agent()
        lab.hostd.popen.send_signal(15)
        lab.hostd.wait_for(r"event=stopping")
        # Draining: the admin API still answers, and says not ready.
        assert readyz(lab) == 503
        reader.join(NOT_A_HANG)
        s.close()
        assert result["data"].startswith(b"HTTP/1.1 200 "), result["data"]
        assert result["data"].endswith(b"slow\n"), result["data"]
        assert lab.hostd.popen.wait(NOT_A_HANG) == 0
        assert "event=stop_grace_expired" not in lab.hostd.stderr()


def test_a_request_longer_than_the_grace_is_cut_and_hostd_still_exits_0():
    with stop_lab() as lab:
        s, reader, result = start_slow_request(lab, 30000)
        let_it_reach_the_agent()
        lab.hostd.popen.send_signal(15)
        reader.join(NOT_A_HANG)
        s.close()
        assert not result["data"].endswith(b"slow\n"), result["data"]
        assert lab.hostd.popen.wait(NOT_A_HANG) == 0
        assert "event=stop_grace_expired" in lab.hostd.stderr()


def test_an_idle_keep_alive_client_is_closed_at_once_and_does_not_hold_the_stop():
    with stop_lab() as lab:
        c = socket.create_connection(("127.0.0.1", lab.port), timeout=NOT_A_HANG)
        ask_hello_and_keep_alive(c)
        # Kept alive, idle. SIGTERM closes it without waiting for the grace:
        # hostd ends with nothing left to cut.
        lab.hostd.popen.send_signal(15)
        assert c.recv(4096) == b""
        c.close()
        assert lab.hostd.popen.wait(NOT_A_HANG) == 0
        assert "event=stop_grace_expired" not in lab.hostd.stderr()


def test_an_idle_keep_alive_tls_client_is_closed_at_once_and_does_not_hold_the_stop():
    with Lab([VM("vm1")], start_hostd=False,
             hostd={"limits": {"stop_grace_ms": GRACE_MS}}) as lab:
        pki = Pki(lab.path("pki"))
        ca = pki.ca("hosts")
        server = pki.server(ca, "kvm1")
        lab.listener_tables = [
            {"address": "tcp:127.0.0.1:0", "guest_port": 5986, "trusted": True,
             "tls": server.tls_table()}]
        lab.start_hostd()
        context = ssl.create_default_context(cafile=ca.cert)
        raw = socket.create_connection(("127.0.0.1", lab.port), timeout=NOT_A_HANG)
        c = context.wrap_socket(raw, server_hostname="127.0.0.1")
        ask_hello_and_keep_alive(c)
        # Kept alive, idle, OpenSSL holding nothing of it: SIGTERM closes it
        # without waiting for the grace.
        lab.hostd.popen.send_signal(15)
        try:
            assert c.recv(4096) == b""
        except (ssl.SSLError, ConnectionResetError):
            pass  # closed, without close_notify
        c.close()
        assert lab.hostd.popen.wait(NOT_A_HANG) == 0
        assert "event=stop_grace_expired" not in lab.hostd.stderr()


def test_a_guest_request_in_progress_finishes_after_sigterm():
    """A request a guest started (here to a host service) is drained like a
    client's, not cut when hostd stops accepting."""
    with Lab([VM("vm1", outbound=True)], inbound=True, host_services=["monitor"],
             hostd={"limits": {"stop_grace_ms": GRACE_MS}}) as lab:
        result = {}

        def ask():
            result["r"] = lab.curl("http://monitor.host/slow?ms=1000", "-x",
                                   "http://127.0.0.1:%d" % lab.outbound_port("vm1"))

        asker = threading.Thread(target=ask)
        asker.start()
        lab.hostd.wait_for(r"event=guest_send ")
        lab.hostd.popen.send_signal(15)
        lab.hostd.wait_for(r"event=stopping")
        asker.join(NOT_A_HANG)
        r = result["r"]
        assert r.status == 200 and r.body.endswith(b"slow\n"), r
        assert lab.hostd.popen.wait(NOT_A_HANG) == 0
        assert "event=stop_grace_expired" not in lab.hostd.stderr()
