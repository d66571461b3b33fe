"""Slowloris and slow readers: 2,000 clients trickling request heads or
reading a large response one byte a second do not hold up a normal client,
and each is cut at its timeout — a trickler at limits.header_timeout_ms (the
head must arrive whole within it), a slow reader at limits.idle_timeout_ms
(no progress writing its response). The bound on the normal client is shown
without a clock: it is served in full while every slow client is still
connected. bench/slow_clients.py measures its latency."""

import contextlib
import time

import pytest

from slow_crowd import SLOW_READ_BYTES, SlowCrowd, raise_descriptor_limit
from vmgate_lab import VM, Lab, wait_until

TRICKLERS = 1950
READERS = 50
# Long enough to set the crowd up and serve the normal client inside it,
# short enough to see every slow client cut within the test.
HEADER_TIMEOUT_MS = 6000
IDLE_TIMEOUT_MS = 6000
NORMAL_REQUESTS = 50
NOT_A_HANG = 30.0


@pytest.fixture(scope="module")
def lab():
    # The crowd's 2,000 sockets here, and as many in hostd (which inherits this limit).
    raise_descriptor_limit(8192)
    limits = {"header_timeout_ms": HEADER_TIMEOUT_MS, "idle_timeout_ms": IDLE_TIMEOUT_MS,
              "max_connections": 4096, "max_connections_per_client": 4096}
    with Lab([VM("vm1")], hostd={"limits": limits}) as lab:
        yield lab


def slow_reader_records(lab):
    return [r for r in lab.hostd_requests() if r.get("target") == "vm1" and
            r.get("method") == "GET" and int(r.get("bytes_out", 0)) > 0 and
            r.get("reason") == "idle timeout"]


def test_a_normal_client_is_served_while_two_thousand_slow_clients_hold_on_then_each_is_cut(lab):
    crowd = SlowCrowd(lab.port, TRICKLERS, READERS)
    try:
        # Every reader's response has started: hostd is writing to all of them.
        wait_until(lambda: all(c.read > 0 for c in crowd.of_kind("read")), NOT_A_HANG,
                   "every slow reader's first byte")
        with contextlib.closing(lab.connection()) as c:
            for _ in range(NORMAL_REQUESTS):
                c.request("GET", "/hello", headers={"X-VM-Id": "vm1"})
                r = c.getresponse()
                assert (r.status, r.read()) == (200, b"hello from vm1\n")
        # The normal client is done, and not one slow client has been let go.
        assert len(crowd.still_connected()) == TRICKLERS + READERS
        assert not slow_reader_records(lab), "a slow reader was cut before the normal client ended"

        # Tricklers: closed at header_timeout, never before it.
        wait_until(lambda: not crowd.still_connected("trickle"), NOT_A_HANG,
                   "every trickler to be cut")
        early = [c for c in crowd.of_kind("trickle")
                 if c.cut_at - c.connecting_at < HEADER_TIMEOUT_MS / 1000.0]
        assert not early, "%d tricklers cut before header_timeout: %r" % (
            len(early), [(c.cut_at - c.connecting_at, c.sent, c.error) for c in early][:5])
        # Readers: hostd ends each response at idle_timeout, cut short, and says why.
        records = wait_until(lambda: (lambda r: r if len(r) == READERS else None)(
            slow_reader_records(lab)), NOT_A_HANG, "hostd's record of every slow reader")
        for record in records:
            assert record["status"] == "200"
            assert int(record["bytes_out"]) < SLOW_READ_BYTES
            assert int(record["ms"]) >= IDLE_TIMEOUT_MS
    finally:
        crowd.close()
    # hostd let go of them all, and serves on.
    wait_until(lambda: len(lab.hostd_requests()) >= NORMAL_REQUESTS + READERS, NOT_A_HANG,
               "hostd's records")
    r = lab.request("GET", "/hello", {"X-VM-Id": "vm1"})
    assert r.status == 200
    assert lab.hostd.alive()
