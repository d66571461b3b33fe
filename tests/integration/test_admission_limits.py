"""hostd's admission limits, each exceeded against real processes: the
process's descriptor limit (refused at accept, logged once, no spin, served
again once descriptors free up), connections per client address (429) and
CONNECT tunnels hostd-wide (503). channel.max_per_vm is exceeded in
test_channel_sharing.py."""

import os
import re
import resource
import socket
import time

import pytest

from vmgate_lab import VM, Lab, parse_raw_response, wait_until

NOT_A_HANG = 10.0  # seconds: only to tell "answered" from "hung"
HELLO = b"GET /hello HTTP/1.1\r\nHost: vm1\r\nX-VM-Id: vm1\r\n\r\n"


def read_response(s):
    """One response with a Content-Length body; None when hostd closed or
    reset the connection before a byte of it."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    if not data:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.search(rb"(?im)^content-length: *(\d+)", head)
    length = int(m.group(1)) if m else 0
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return parse_raw_response(head + b"\r\n\r\n" + body)


def hello(lab):
    """A keep-alive client that was served once, and its response (None:
    refused without an answer)."""
    s = socket.create_connection(("127.0.0.1", lab.port), timeout=NOT_A_HANG)
    s.sendall(HELLO)
    return s, read_response(s)


def open_tunnel(lab):
    s = socket.create_connection(("127.0.0.1", lab.port), timeout=NOT_A_HANG)
    s.sendall(b"CONNECT vm1:5986 HTTP/1.1\r\nHost: vm1:5986\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        assert chunk, "hostd closed the connection before answering CONNECT"
        head += chunk
    return s, head


def check_refusal(r, status, reason):
    """The one-line refusal every hostd error is: status, reason, request id,
    and a connection that closes."""
    assert r is not None and r.status == status, r
    assert r.headers.get("connection") == "close", r.headers
    request_id = r.headers["x-request-id"]
    line = r.body.decode()
    assert line.count("\n") == 1 and line.endswith("(request %s)\n" % request_id), line
    assert reason in line, line
    return request_id


# -- the process's descriptor limit ------------------------------------------------------

def cpu_ticks(pid):
    """utime + stime of `pid`, in clock ticks (/proc/PID/stat fields 14 and 15)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def fate_at_accept(lab):
    """What became of a new client: "refused" (closed or reset without an
    answer), "served" (answered), or "waiting" (left in the listen queue)."""
    s = socket.create_connection(("127.0.0.1", lab.port), timeout=NOT_A_HANG)
    try:
        s.sendall(HELLO)
        return "refused" if read_response(s) is None else "served"
    except (BrokenPipeError, ConnectionResetError):
        return "refused"
    except socket.timeout:
        return "waiting"
    finally:
        s.close()


def refused_at_accept(lab):
    return fate_at_accept(lab) == "refused"


def held_idle(lab):
    """A client that connects and sends nothing: its socket when hostd took
    it (and waits for its head), None when hostd closed or reset it at once."""
    s = socket.create_connection(("127.0.0.1", lab.port), timeout=NOT_A_HANG)
    s.settimeout(0.5)
    try:
        s.recv(1)  # b"": closed
    except socket.timeout:
        s.settimeout(NOT_A_HANG)
        return s
    except ConnectionResetError:
        pass
    s.close()
    return None


def descriptor_limit_is_met_cleanly():
    """At the descriptor limit new clients are refused once logged, without a
    spin, and served again once descriptors free up (test_descriptor_limit.py
    runs it, in a file of its own: see there)."""
    with Lab([VM("vm1")]) as lab:
        pid = lab.hostd.pid
        # A few descriptors above what hostd holds now; idle clients (one
        # descriptor each, nothing opened for them) fill them.
        in_use = len(os.listdir("/proc/%d/fd" % pid))
        hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)[1]
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + 8, hard))
        clients = []
        try:
            for _ in range(64):
                s = held_idle(lab)
                if s is None:
                    break
                clients.append(s)
            else:
                pytest.fail("no client was refused at the descriptor limit (left waiting "
                            "in the listen queue?)")
            assert clients, "not one client was taken below the limit"

            # More clients while at the limit: each refused at once, one line for all.
            ticks_before = cpu_ticks(pid)
            started = time.monotonic()
            fates = []
            while time.monotonic() - started < 2.0:
                fates.append(fate_at_accept(lab))
                time.sleep(0.1)
            ticks = cpu_ticks(pid) - ticks_before
            # None waits. One may be served: an acceptor on another thread can
            # take the number a refusing one freed for a moment.
            assert "waiting" not in fates, "clients at the limit were left waiting: %s" % fates
            assert fates.count("refused") >= len(fates) // 2, fates
            # A spinning accept loop burns ~100 ticks a second per thread.
            assert ticks < 40, "hostd used %d CPU ticks in 2 s at the descriptor limit" % ticks
            exhausted = [l for l in lab.hostd.lines() if "event=descriptors_exhausted" in l]
            assert len(exhausted) == 1, exhausted
            assert "limit=%d" % (in_use + 8) in exhausted[0], exhausted[0]
        finally:
            for s in clients:
                s.close()
        # Descriptors free again: served, and said so.
        wait_until(lambda: not refused_at_accept(lab), NOT_A_HANG, "hostd to accept again")
        s, r = hello(lab)
        s.close()
        assert r.status == 200 and r.body == b"hello from vm1\n", r
        wait_until(lambda: [l for l in lab.hostd.lines() if "event=descriptors_available" in l],
                   NOT_A_HANG, "hostd's line that it accepts again")
        assert lab.hostd.alive()


# -- connections per client address -----------------------------------------------------

PER_CLIENT = 3


def test_connections_beyond_the_per_client_cap_are_answered_429_and_closed():
    with Lab([VM("vm1")], hostd={"limits": {"max_connections_per_client": PER_CLIENT}}) as lab:
        held = []
        try:
            # Keep-alive clients and a tunnel: all count against the address.
            for _ in range(PER_CLIENT - 1):
                s, r = hello(lab)
                assert r.status == 200, r
                held.append(s)
            tunnel, head = open_tunnel(lab)
            assert head.startswith(b"HTTP/1.1 200 "), head
            held.append(tunnel)

            s, r = hello(lab)
            request_id = check_refusal(
                r, 429, "127.0.0.1 has %d connections open already "
                "(limits.max_connections_per_client)" % PER_CLIENT)
            assert s.recv(1) == b"", "the refused connection stayed open"
            s.close()
            record = lab.last_request(req=request_id)
            assert record["status"] == "429"

            # Those held still work.
            held[0].sendall(HELLO)
            assert read_response(held[0]).status == 200
        finally:
            closing = held.pop()
            closing.close()
        # A closed tunnel gives its place back.
        def served():
            s, r = hello(lab)
            s.close()
            return r is not None and r.status == 200
        wait_until(served, NOT_A_HANG, "the closed tunnel's place to come back")
        for s in held:
            s.close()


# -- CONNECT tunnels, hostd-wide --------------------------------------------------------

MAX_TUNNELS = 2


def test_a_connect_beyond_max_tunnels_is_503_and_other_requests_go_on():
    with Lab([VM("vm1")], hostd={"limits": {"max_tunnels": MAX_TUNNELS}}) as lab:
        tunnels = []
        try:
            for _ in range(MAX_TUNNELS):
                t, head = open_tunnel(lab)
                assert head.startswith(b"HTTP/1.1 200 "), head
                tunnels.append(t)
            s, head = open_tunnel(lab)
            data = head
            while True:  # the whole refusal, to hostd's close
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            s.close()
            request_id = check_refusal(
                parse_raw_response(data), 503,
                "hostd has %d CONNECT tunnels open already (limits.max_tunnels)" % MAX_TUNNELS)
            assert lab.last_request(req=request_id)["status"] == "503"
            # guestd never saw the refused one: no channel was opened for it.
            assert not [l for l in lab.guestds["vm1"].lines() if "req=%s" % request_id in l]
            # Plain requests are not tunnels: served.
            c, r = hello(lab)
            c.close()
            assert r.status == 200, r
        finally:
            tunnels.pop().close()
        # A tunnel that ends makes room for the next.
        def tunnel_opens():
            t, head = open_tunnel(lab)
            if head.startswith(b"HTTP/1.1 200 "):
                tunnels.append(t)
                return True
            t.close()
            return False
        wait_until(tunnel_opens, NOT_A_HANG, "the closed tunnel's place to come back")
        for t in tunnels:
            t.close()
