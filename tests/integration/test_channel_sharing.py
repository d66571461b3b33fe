"""A client connection holds a channel to guestd only while its exchange is in
flight: idle keep-alive clients cost hostd a socket, never a guestd session.
Channels of one VM are bounded by what is in flight plus the pool, a request
that finds them all busy waits in a bounded queue and then gets a clear 503,
and a client whose agent authentication is bound to its connection (NTLM,
Negotiate) keeps a private channel that nobody else gets."""

import asyncio
import concurrent.futures
import os
import resource
import socket

from vmgate_lab import VM, Lab, metric, wait_until

# Enough descriptors for 10,000 client sockets here and in hostd (a child
# inherits the limit); the kind of machine CI runs on allows 20,000.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))

POOL_MAX_IDLE = 8


def open_descriptors(process):
    return len(os.listdir("/proc/%d/fd" % process.pid))


def read_response(sock):
    """One HTTP/1.1 response with a Content-Length body: (status, headers text, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "hostd closed the connection before answering: %r" % data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(l.split(":", 1)[1]) for l in lines if l.lower().startswith("content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the body was cut"
        body += chunk
    return int(lines[0].split()[1]), "\r\n".join(lines[1:]), body


def request(path, method="GET", body=b"", headers=()):
    extra = "".join("%s: %s\r\n" % h for h in headers)
    return ("%s %s HTTP/1.1\r\nHost: vm1\r\nX-VM-Id: vm1\r\nContent-Length: %d\r\n%s\r\n"
            % (method, path, len(body), extra)).encode() + body


def test_ten_thousand_idle_keep_alive_clients_leave_a_new_client_served():
    with Lab([VM("vm1")],
             hostd={"limits": {"max_connections": 11000, "max_connections_per_client": 11000},
                    "channel": {"pool_max_idle": POOL_MAX_IDLE, "pool_idle_timeout_ms": 600000}}
             ) as lab:
        guestd = lab.guestds["vm1"]
        before = open_descriptors(guestd)
        idle = []
        try:
            # One after another, each makes one small POST and stays connected.
            # guestd keeps its default max_connections (1024).
            for i in range(10000):
                s = socket.create_connection(("127.0.0.1", lab.port), timeout=30)
                s.sendall(request("/discard", "POST", b"x" * 64))
                status, _, body = read_response(s)
                assert (status, body) == (200, b"64\n"), (i, status, body)
                idle.append(s)
            # A new client is served, though 10,000 others hold keep-alive connections.
            s = socket.create_connection(("127.0.0.1", lab.port), timeout=30)
            s.sendall(request("/hello"))
            assert read_response(s)[0::2] == (200, b"hello from vm1\n")
            s.close()
            # guestd holds at most the pool's idle channels (each a channel and
            # an agent descriptor): nothing for the 10,000 idle clients.
            assert open_descriptors(guestd) <= before + 2 * POOL_MAX_IDLE
            assert metric(lab, "vmgate_channels", state="idle") <= POOL_MAX_IDLE
            assert metric(lab, "vmgate_channels", state="in_use") == 0
            # They still work: an idle one makes another request.
            idle[0].sendall(request("/hello"))
            assert read_response(idle[0])[0] == 200
        finally:
            for s in idle:
                s.close()


async def one_request(port, path):
    """(status, body) of one request on its own connection, or the error."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request(path))
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next(int(l.split(":", 1)[1]) for l in lines
                      if l.lower().startswith("content-length:"))
        body = await reader.readexactly(length)
        writer.close()
        return int(lines[0].split()[1]), body
    except (OSError, asyncio.IncompleteReadError) as e:
        return None, repr(e).encode()


async def many_at_once(port, path, n):
    return await asyncio.gather(*(one_request(port, path) for _ in range(n)))


def test_two_thousand_concurrent_requests_share_64_channels_and_guestd_never_refuses():
    with Lab([VM("vm1")],
             hostd={"channel": {"max_per_vm": 64},
                    "limits": {"max_connections_per_client": 4096}},
             guestd={"limits": {"max_connections": 64}}) as lab:
        results = asyncio.run(many_at_once(lab.port, "/slow?ms=20", 2000))
        statuses = [status for status, _ in results]
        failures = [r for r in results if r[0] != 200]
        # Every request answered: 200, or 503 saying the wait was too long.
        assert None not in statuses, failures[:3]
        assert all(status == 503 and b"channels to vm vm1" in body for status, body in failures)
        assert statuses.count(200) > 0
        # guestd never had to say busy.
        wait_until(lambda: metric(lab, "vmgate_channels", state="in_use") == 0, 10,
                   "every request to end")
        assert not [l for l in lab.guestds["vm1"].lines() if "reason=busy" in l]
        assert metric(lab, "vmgate_channel_waits_total", result="granted") > 0


def test_a_request_that_finds_every_channel_busy_waits_then_gets_503():
    with Lab([VM("vm1")], hostd={"channel": {"max_per_vm": 1, "wait_timeout_ms": 300}}) as lab:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            # The VM's one channel is busy with a slow request ...
            slow = pool.submit(lab.request, "GET", "/slow?ms=5000", {"X-VM-Id": "vm1"})
            wait_until(lambda: metric(lab, "vmgate_channels", state="in_use") == 1, 10,
                       "the slow request to hold the channel")
            # ... so the next one waits for it, in vain.
            r = lab.request("GET", "/hello", {"X-VM-Id": "vm1"})
            assert r.status == 503
            assert "all 1 channels to vm vm1 stayed in use for 300 ms" in r.text
            assert metric(lab, "vmgate_channel_waits_total", result="timed_out") == 1
            assert slow.result().status == 200


def test_a_full_wait_queue_refuses_at_once():
    with Lab([VM("vm1")], hostd={"channel": {"max_per_vm": 1, "max_waiting_per_vm": 0}}) as lab:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            slow = pool.submit(lab.request, "GET", "/slow?ms=3000", {"X-VM-Id": "vm1"})
            wait_until(lambda: metric(lab, "vmgate_channels", state="in_use") == 1, 10,
                       "the slow request to hold the channel")
            r = lab.request("GET", "/hello", {"X-VM-Id": "vm1"})
            assert r.status == 503 and "wait for one already" in r.text, r.text
            assert metric(lab, "vmgate_channel_waits_total", result="queue_full") == 1
            assert slow.result().status == 200


def negotiate(sock, credentials):
    sock.sendall(request("/negotiate", headers=[("Authorization", credentials)]))
    return read_response(sock)


def test_a_connection_bound_handshake_keeps_its_channel_while_others_churn_the_pool():
    with Lab([VM("vm1")], hostd={"channel": {"pool_idle_timeout_ms": 600000}}) as lab:
        a = socket.create_connection(("127.0.0.1", lab.port), timeout=30)
        status, headers, _ = negotiate(a, "Negotiate start")
        assert status == 401
        challenge = next(l.split(" ", 2)[2] for l in headers.split("\r\n")
                         if l.lower().startswith("www-authenticate: negotiate "))
        # Another client's request is in flight meanwhile, on some channel:
        # had A's channel gone back to the pool, this is the one it would hold.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            held = pool.submit(lab.request, "GET", "/gather?n=2", {"X-VM-Id": "vm1"})
            wait_until(lambda: metric(lab, "vmgate_channels", state="in_use") == 1, 10,
                       "another client's request to hold a channel")
            # Others churn the pool too.
            for _ in range(20):
                assert lab.request("GET", "/hello", {"X-VM-Id": "vm1"}).status == 200
            # A's second step reaches the agent connection that challenged it.
            status, _, body = negotiate(a, "Negotiate answer-to-" + challenge)
            assert (status, body.startswith(b"authenticated")) == (200, True), body
            release = pool.submit(lab.request, "GET", "/gather?n=2", {"X-VM-Id": "vm1"})
            assert held.result().status == 200 and release.result().status == 200
        assert metric(lab, "vmgate_channels", state="private") == 1
        a.close()
        wait_until(lambda: metric(lab, "vmgate_channels", state="private") == 0, 10,
                   "the private channel to close with its client")


def test_connection_bound_channels_beyond_max_private_per_vm_are_refused_before_the_handshake():
    with Lab([VM("vm1")], hostd={"channel": {"max_private_per_vm": 1}}) as lab:
        a = socket.create_connection(("127.0.0.1", lab.port), timeout=30)
        assert negotiate(a, "Negotiate start")[0] == 401  # A's channel is now private
        b = socket.create_connection(("127.0.0.1", lab.port), timeout=30)
        status, _, body = negotiate(b, "Negotiate start")
        assert status == 503, body
        assert b"channel.max_private_per_vm" in body
        # Requests that need no private channel are still served.
        assert lab.request("GET", "/hello", {"X-VM-Id": "vm1"}).status == 200
        a.close()
        b.close()


def test_a_basic_auth_client_gives_its_channel_back_while_it_idles():
    with Lab([VM("vm1")], hostd={"channel": {"pool_idle_timeout_ms": 600000}}) as lab:
        s = socket.create_connection(("127.0.0.1", lab.port), timeout=30)
        s.sendall(request("/hello", headers=[("Authorization", "Basic dXNlcjpwdw==")]))
        assert read_response(s)[0] == 200
        # The connection is open and idle; its channel is in the pool, not private.
        wait_until(lambda: metric(lab, "vmgate_channels", state="idle") == 1, 10,
                   "the channel to go back to the pool")
        assert metric(lab, "vmgate_channels", state="private") == 0
        assert metric(lab, "vmgate_channels_open_busiest", vm="vm1") == 1
        s.close()
