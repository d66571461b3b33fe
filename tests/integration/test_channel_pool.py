"""hostd keeps idle channels to guestd across client connections: a request
from a new client connection is served over a channel an earlier connection
left open, within the pool's limits, never over a channel that is dead or was
a CONNECT tunnel, and the agent still learns each request's own client."""

import concurrent.futures
import http.client

import pytest

from vmgate_lab import VM, Lab, metric, parse_kv, wait_until

# Long enough that nothing expires while a test runs: what is checked here is
# what the pool does with live and dead channels, never how long they last.
NO_EXPIRY = {"pool_idle_timeout_ms": 600000}


def get(lab, path, headers=None, body=None, method=None):
    """One request on a client connection of its own: (status, body, client port)."""
    c = lab.connection()
    try:
        c.connect()
        port = c.sock.getsockname()[1]
        c.request(method or ("POST" if body is not None else "GET"), path, body=body,
                  headers={"X-VM-Id": "vm1", **(headers or {})})
        r = c.getresponse()
        return r.status, r.read(), port
    finally:
        c.close()


def guestd_channel_lines(lab, vm="vm1"):
    return [parse_kv(l) for l in lab.guestds[vm].lines() if "event=channel " in l]


def wait_pooled(lab, n=1):
    """Until `n` channels are idle in the pool: a client's close reaches hostd
    a moment after the client moves on."""
    wait_until(lambda: metric(lab, "vmgate_channel_pool_idle") == n, 10,
               "%d idle channel(s) in the pool" % n)


def record(lab, port):
    """hostd's record of the request from client port `port`, once logged: a
    record is written when its exchange ends, which can be after the client
    has its response. Found by client, not by position: records of requests
    served on different I/O threads (or a tunnel's, written as it closes) need
    not be logged in the order the requests were made."""
    client = "127.0.0.1:%d" % port
    return wait_until(lambda: next((r for r in lab.hostd_requests() if r.get("client") == client),
                                   None), 10, "the request record of client " + client)


def test_sequential_client_connections_share_one_channel():
    with Lab([VM("vm1")], hostd={"channel": NO_EXPIRY}) as lab:
        s1, b1, port1 = get(lab, "/echo-headers")
        wait_pooled(lab)
        s2, b2, port2 = get(lab, "/echo-headers")
        assert (s1, s2) == (200, 200)
        first, second = record(lab, port1), record(lab, port2)
        assert "channel" not in first
        assert second.get("channel") == "reused"
        assert metric(lab, "vmgate_channel_requests_total", channel="new") == 1
        assert metric(lab, "vmgate_channel_requests_total", channel="reused") == 1
        assert metric(lab, "vmgate_channel_connect_duration_seconds_count", result="ok") == 1
        # The preamble named the first client; each request names its own.
        assert 'Forwarded: for="127.0.0.1:%d"' % port1 in b1.decode()
        assert 'Forwarded: for="127.0.0.1:%d"' % port2 in b2.decode()
        # Both answers crossed one channel: once hostd is gone and guestd has
        # logged channels carrying both, there is one line, of the first request.
        lab.hostd.stop()
        lines = wait_until(
            lambda: (lambda ls: ls if sum(int(l["bytes_out"]) for l in ls) >= len(b1) + len(b2)
                     else None)(guestd_channel_lines(lab)),
            10, "guestd's lines for channels carrying both answers")
        assert len(lines) == 1, lines
        assert lines[0]["req"] == first["req"], (lines, first)


def test_a_pooled_channel_whose_guestd_went_away_is_not_used():
    with Lab([VM("vm1")], hostd={"channel": NO_EXPIRY}) as lab:
        assert get(lab, "/hello")[0] == 200
        wait_pooled(lab)
        # Its far end closes (as when a VM stops); a new guestd takes the socket.
        lab.kill_guestd("vm1")
        lab.start_guestd(lab.vms[0])
        # A request with a body cannot be retried: it must not meet the dead channel.
        status, body, port = get(lab, "/discard", body=b"x" * 1000, method="PUT")
        assert status == 200 and body == b"1000\n"
        assert "channel" not in record(lab, port)
        assert metric(lab, "vmgate_channel_pool_discarded_total", reason="closed") == 1


def test_idle_channels_beyond_max_idle_are_closed():
    with Lab([VM("vm1")], hostd={"channel": {"pool_max_idle": 1, **NO_EXPIRY}}) as lab:
        # Three requests in flight at once, each on a channel of its own: the
        # agent holds each until all three are there (no timing involved).
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda _: get(lab, "/gather?n=3")[0], range(3)))
        assert answers == [200, 200, 200]
        # Then all three come back: one stays idle in the pool, the others close.
        wait_until(lambda: len(guestd_channel_lines(lab)) == 2, 10, "two channels to close")
        assert metric(lab, "vmgate_channel_pool_idle") == 1
        assert metric(lab, "vmgate_channel_pool_discarded_total", reason="full") == 2
        status, _, port = get(lab, "/hello")
        assert status == 200
        assert record(lab, port).get("channel") == "reused"
        assert metric(lab, "vmgate_channel_connect_duration_seconds_count", result="ok") == 3


def test_with_the_pool_off_each_client_connection_opens_its_own_channel():
    with Lab([VM("vm1")], hostd={"channel": {"pool_max_idle": 0}}) as lab:
        assert get(lab, "/hello")[0] == 200
        wait_until(lambda: len(guestd_channel_lines(lab)) == 1, 10, "the channel to close")
        status, _, port = get(lab, "/hello")
        assert status == 200
        assert "channel" not in record(lab, port)
        assert metric(lab, "vmgate_channel_requests_total", channel="new") == 2


def test_a_connect_tunnel_is_never_pooled():
    with Lab([VM("vm1")], hostd={"channel": NO_EXPIRY}) as lab:
        r = lab.curl("http://vm1:5986/hello", "-p", "-x", "http://127.0.0.1:%d" % lab.port)
        assert r.status == 200 and r.text == "hello from vm1\n"
        # hostd closed the tunnel's channel rather than keep it.
        wait_until(lambda: len(guestd_channel_lines(lab)) == 1, 10, "the tunnel's channel to close")
        status, _, port = get(lab, "/hello")
        assert status == 200
        assert "channel" not in record(lab, port)


def test_a_channel_is_not_reused_for_another_port():
    with Lab([VM("vm1")], hostd={"channel": NO_EXPIRY},
             listeners=[{"address": "tcp:127.0.0.1:0", "guest_port": 5986, "trusted": True},
                        {"address": "tcp:127.0.0.1:0", "guest_port": 8114, "trusted": True}]
             ) as lab:
        assert get(lab, "/hello")[0] == 200
        wait_pooled(lab)
        c = http.client.HTTPConnection("127.0.0.1", lab.ports[1], timeout=30)
        c.request("GET", "/hello", headers={"X-VM-Id": "vm1"})
        port = c.sock.getsockname()[1]
        assert c.getresponse().status == 200
        c.close()
        second = record(lab, port)
        assert second["port"] == "8114" and "channel" not in second


def records_of(lab, port, n):
    """hostd's records of the first `n` requests from client port `port`, once logged."""
    client = "127.0.0.1:%d" % port

    def logged():
        found = [r for r in lab.hostd_requests() if r.get("client") == client]
        return found[:n] if len(found) >= n else None
    return wait_until(logged, 10, "%d request records of client %s" % (n, client))


def test_a_kept_channel_the_agent_drops_under_a_request_without_body_is_retried():
    # The agent reads the request and closes without answering, as one that
    # times out a kept-alive connection just as a request arrives does.
    with Lab([VM("vm1")], hostd={"channel": NO_EXPIRY}) as lab:
        c = lab.connection()
        try:
            c.connect()
            port = c.sock.getsockname()[1]
            c.request("GET", "/hang-up-next", headers={"X-VM-Id": "vm1"})
            r = c.getresponse()
            assert (r.status, r.read()) == (200, b"ok\n")
            c.request("GET", "/hello", headers={"X-VM-Id": "vm1"})
            r = c.getresponse()
            assert (r.status, r.read()) == (200, b"hello from vm1\n")
        finally:
            c.close()
        first, second = records_of(lab, port, 2)
        # Served on a new channel: the retry cleared the first attempt's reuse.
        assert "channel" not in first and "channel" not in second, (first, second)
        assert second["status"] == "200"
        assert metric(lab, "vmgate_channel_requests_total", channel="new") == 2
        assert metric(lab, "vmgate_channel_requests_total", channel="reused") == 1


def test_a_kept_channel_the_agent_drops_under_a_request_with_a_body_is_502():
    # A body may have reached the agent already: it is never sent twice.
    with Lab([VM("vm1")], hostd={"channel": NO_EXPIRY}) as lab:
        c = lab.connection()
        try:
            c.request("GET", "/hang-up-next", headers={"X-VM-Id": "vm1"})
            r = c.getresponse()
            assert (r.status, r.read()) == (200, b"ok\n")
            c.request("PUT", "/discard", body=b"x" * 1000, headers={"X-VM-Id": "vm1"})
            r = c.getresponse()
            body = r.read()
        finally:
            c.close()
        assert r.status == 502, (r.status, body)
        assert b"closed the connection before answering" in body, body
        assert metric(lab, "vmgate_channel_requests_total", channel="new") == 1
