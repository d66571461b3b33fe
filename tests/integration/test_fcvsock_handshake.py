"""The hybrid vsock transport (fcvsock:/path/v.sock:PORT, Firecracker and
Cloud Hypervisor), host to guest, against a stand-in for the VMM's side: a
unix socket that reads "CONNECT PORT\\n", answers "OK 1073741824\\n" and
relays to the VM's guestd, or refuses (closes), answers garbage, never
answers, or answers a line without end. Each ends as the documented status
with a reason that says which, within channel.connect_timeout_ms."""

import hashlib
import os
import socket
import threading
import time

import pytest

from vmgate_lab import VM, Lab

CONNECT_TIMEOUT_MS = 2000
SLACK = 5.0
GUESTD_PORT = 5500
# What Firecracker answers: the host-side port of the connection.
OK_LINE = b"OK 1073741824\n"


class StandInVmm:
    """One unix socket per VM, as a VMM's hybrid vsock device: how it answers
    CONNECT is `mode` ("ok", "close", "garbage", "silent", "endless", or
    "close-then-ok": the first `refusals` connections closed, as a guest with
    nothing listening on the port yet). With "ok" the connection is then
    relayed to `guestd_path`."""

    def __init__(self, path, guestd_path, mode, refusals=0):
        self.path, self.guestd_path, self.mode = path, guestd_path, mode
        self.refusals = refusals
        self.requests = []  # the CONNECT lines read
        self.held = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _read_line(self, conn):
        line = b""
        while not line.endswith(b"\n") and len(line) < 256:
            byte = conn.recv(1)
            if not byte:
                break
            line += byte
        return line

    def _serve(self, conn):
        self.requests.append(self._read_line(conn))
        mode = self.mode
        if mode == "close-then-ok":
            mode = "close" if len(self.requests) <= self.refusals else "ok"
        if mode == "close":
            conn.close()
        elif mode == "garbage":
            conn.sendall(b"HELLO THERE\n")
            self.held.append(conn)
        elif mode == "silent":
            self.held.append(conn)
        elif mode == "endless":
            try:
                conn.sendall(b"OK " + b"1" * 4096)
            except OSError:
                pass
            self.held.append(conn)
        else:
            self._relay(conn)

    def _relay(self, conn):
        guestd = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        guestd.connect(self.guestd_path)
        conn.sendall(OK_LINE)

        def pump(a, b):
            try:
                while True:
                    data = a.recv(65536)
                    if not data:
                        b.shutdown(socket.SHUT_WR)
                        return
                    b.sendall(data)
            except OSError:
                return
        threading.Thread(target=pump, args=(conn, guestd), daemon=True).start()
        threading.Thread(target=pump, args=(guestd, conn), daemon=True).start()

    def close(self):
        self.sock.close()
        for c in self.held:
            c.close()


MODES = {"fc-ok": "ok", "fc-close": "close", "fc-garbage": "garbage", "fc-silent": "silent",
         "fc-endless": "endless", "fc-late": "close-then-ok"}


@pytest.fixture(scope="module")
def lab():
    vms = [VM(name) for name in MODES]
    hostd = {"channel": {"transport": None, "guestd_port": GUESTD_PORT,
                         "connect_timeout_ms": CONNECT_TIMEOUT_MS}}
    with Lab(vms, hostd=hostd, start_hostd=False) as lab:
        lab.hostd_overrides["channel"]["transport"] = (
            "fcvsock:" + lab.path("{name}.vsock") + ":{port}")
        lab.vmms = {name: StandInVmm(lab.path(name + ".vsock"), lab.socket_path(name), mode,
                                     refusals=3)
                    for name, mode in MODES.items()}
        try:
            lab.start_hostd()
            yield lab
        finally:
            for vmm in lab.vmms.values():
                vmm.close()


def hello(lab, name):
    return lab.curl("/hello", "-H", "X-VM-Id: " + name,
                    timeout=CONNECT_TIMEOUT_MS / 1000.0 + SLACK)


def test_the_handshake_reaches_guestd_end_to_end(lab):
    r = hello(lab, "fc-ok")
    assert (r.status, r.text) == (200, "hello from fc-ok\n"), (r, r.text)
    # hostd asked for guestd's port, as the transport URI names it.
    assert lab.vmms["fc-ok"].requests[0] == b"CONNECT %d\n" % GUESTD_PORT
    # A body each way over the relay.
    body = os.urandom(100000)
    r = lab.curl("/sha256", "-H", "X-VM-Id: fc-ok", "--data-binary", "@-", input=body)
    assert r.status == 200 and r.text == "%s %d\n" % (hashlib.sha256(body).hexdigest(), len(body)), \
        (r, r.text)
    r = lab.curl("/bytes/100000", "-H", "X-VM-Id: fc-ok")
    assert r.status == 200 and len(r.body) == 100000, r


def test_a_vmm_that_closes_without_answering_is_502_after_retries(lab):
    r = hello(lab, "fc-close")
    assert r.status == 502, (r, r.text)
    assert r.text.startswith("502 Bad Gateway: guestd not answering on fcvsock:%s:%d (vm fc-close): "
                             % (lab.path("fc-close.vsock"), GUESTD_PORT)), r.text
    assert ("the hybrid vsock handshake failed (the VMM closed the hybrid vsock socket without "
            "answering CONNECT" in r.text), r.text
    assert len(lab.vmms["fc-close"].requests) >= 2, "a refusal by closing is tried again"


def test_a_guest_that_starts_listening_while_refused_is_reached(lab):
    # The stand-in closes the first three connections, as a VMM does while
    # nothing in the guest listens on the port yet.
    r = hello(lab, "fc-late")
    assert (r.status, r.text) == (200, "hello from fc-late\n"), (r, r.text)
    assert len(lab.vmms["fc-late"].requests) == 4


def test_a_garbage_answer_is_502_saying_so_at_once(lab):
    r = hello(lab, "fc-garbage")
    assert r.status == 502, (r, r.text)
    assert "the VMM answered CONNECT with something other than 'OK PORT'" in r.text, r.text
    # Garbage is an answer: not tried again.
    assert len(lab.vmms["fc-garbage"].requests) == 1


def test_a_vmm_that_never_answers_is_bounded_by_the_connect_timeout(lab):
    started = time.monotonic()
    r = hello(lab, "fc-silent")
    elapsed = time.monotonic() - started
    assert r.status == 502, (r, r.text)
    assert "(vm fc-silent): no answer within %d ms" % CONNECT_TIMEOUT_MS in r.text, r.text
    assert elapsed <= CONNECT_TIMEOUT_MS / 1000.0 + SLACK, elapsed


def test_an_answer_line_without_end_is_cut_at_its_bound(lab):
    r = hello(lab, "fc-endless")
    assert r.status == 502, (r, r.text)
    assert "the VMM's answer to CONNECT is longer than 64 bytes" in r.text, r.text
    assert len(lab.vmms["fc-endless"].requests) == 1
