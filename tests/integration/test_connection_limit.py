"""hostd's max_connections counts a CONNECT tunnel for as long as the tunnel
is open, not only while its request is being set up, and gives the slot back
when the tunnel closes."""

import socket
import time

import pytest

from vmgate_lab import VM, Lab

MAX_CONNECTIONS = 2
NOT_A_HANG = 10.0  # seconds: only to tell "answered" from "hung"


@pytest.fixture(scope="module")
def lab():
    with Lab([VM("vm1")], hostd={"limits": {"max_connections": MAX_CONNECTIONS}}) as lab:
        yield lab


def open_tunnel(lab):
    s = socket.create_connection(("127.0.0.1", lab.port), timeout=NOT_A_HANG)
    s.sendall(b"CONNECT vm1:5986 HTTP/1.1\r\nHost: vm1:5986\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        assert chunk, "hostd closed the connection before answering CONNECT"
        head += chunk
    assert head.startswith(b"HTTP/1.1 200 "), head
    return s


def hello_through(s):
    s.sendall(b"GET /hello HTTP/1.1\r\nHost: vm1\r\n\r\n")
    data = b""
    while b"hello from vm1\n" not in data:
        chunk = s.recv(4096)
        assert chunk, "tunnel closed before the agent's answer: %r" % data
        data += chunk
    return data


def refused(lab):
    """Whether hostd closes a new connection without answering (the limit)."""
    s = socket.create_connection(("127.0.0.1", lab.port), timeout=NOT_A_HANG)
    try:
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-VM-Id: vm1\r\n\r\n")
        return s.recv(4096) == b""
    except ConnectionResetError:
        return True
    finally:
        s.close()


def test_idle_tunnels_hold_their_slots_and_give_them_back(lab):
    tunnels = [open_tunnel(lab) for _ in range(MAX_CONNECTIONS)]
    # Idle, their requests long answered: they still count.
    time.sleep(0.2)
    assert refused(lab), "a connection beyond max_connections was served"
    # The tunnels still work while the limit turns others away.
    for t in tunnels:
        assert b"200 OK" in hello_through(t)
    tunnels.pop().close()
    # The slot comes back once hostd sees the tunnel end.
    deadline = time.monotonic() + NOT_A_HANG
    while refused(lab):
        assert time.monotonic() < deadline, "the closed tunnel's slot never came back"
        time.sleep(0.05)
    for t in tunnels:
        t.close()
    assert lab.last_request(form="connect")["status"] == "200"
