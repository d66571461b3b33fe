#!/usr/bin/env python3
"""A normal client's latency through hostd, alone and beside hostile slow clients.

Starts hostd + guestd + vmgate-test-agent (tests/integration/vmgate_lab.py),
then times REQUESTS sequential `GET /hello` on one keep-alive connection
(X-VM-Id: vm1), first alone, then while TRICKLERS clients trickle a request
head one byte a second and READERS clients read a 64 MiB response one byte a
second through a 4 KiB receive buffer (tests/integration/slow_crowd.py).
Timeouts are long enough that no slow client is cut during the measurement.
The crowd runs in a process of its own, so that its stepping never holds
the timing loop's interpreter lock. Prints one JSON object with p50/p99/max
in milliseconds for both runs. Not part of bench/run's full run.

  bench/slow_clients.py [--build-dir build/ci] [--requests 2000] [--tricklers 1950] [--readers 50]
"""
import argparse
import contextlib
import json
import multiprocessing
import os
import sys
import time

SOURCE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def percentile(sorted_ms, p):
    return sorted_ms[min(len(sorted_ms) - 1, int(round(p / 100.0 * (len(sorted_ms) - 1))))]


def cpu_ms(pid):
    """utime + stime of `pid` so far, in milliseconds (/proc/PID/stat)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) * 1000.0 / os.sysconf("SC_CLK_TCK")


def timed_requests(lab, count):
    """`count` sequential requests: latency percentiles, and hostd's CPU meanwhile."""
    cpu_before, wall_before = cpu_ms(lab.hostd.pid), time.monotonic()
    ms = []
    with contextlib.closing(lab.connection()) as c:
        for _ in range(count):
            start = time.perf_counter()
            c.request("GET", "/hello", headers={"X-VM-Id": "vm1"})
            r = c.getresponse()
            body = r.read()
            ms.append((time.perf_counter() - start) * 1000.0)
            if r.status != 200 or body != b"hello from vm1\n":
                raise RuntimeError("normal client got %d %r" % (r.status, body))
    ms.sort()
    wall_s = time.monotonic() - wall_before
    return {"p50_ms": round(percentile(ms, 50), 3), "p99_ms": round(percentile(ms, 99), 3),
            "max_ms": round(ms[-1], 3), "requests": count, "seconds": round(wall_s, 2),
            "hostd_cpu_ms": round(cpu_ms(lab.hostd.pid) - cpu_before),
            "load_average": os.getloadavg()[0]}


def run_crowd(port, tricklers, readers, ready, stop, held):
    """The slow clients, in a process of their own: `ready` once every
    reader's response has started, until `stop`; `held` says how many hostd
    had not cut by then."""
    from slow_crowd import SlowCrowd
    from vmgate_lab import wait_until
    crowd = SlowCrowd(port, tricklers, readers)
    try:
        wait_until(lambda: all(c.read > 0 for c in crowd.of_kind("read")), 60,
                   "every slow reader's first byte")
        ready.set()
        stop.wait()
        held.value = len(crowd.still_connected())
    finally:
        crowd.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build-dir", default=os.path.join(SOURCE_DIR, "build", "ci"))
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--tricklers", type=int, default=1950)
    ap.add_argument("--readers", type=int, default=50)
    args = ap.parse_args()
    os.environ.setdefault("VMGATE_HOSTD", os.path.join(args.build_dir, "hostd", "vmgate-hostd"))
    os.environ.setdefault("VMGATE_GUESTD", os.path.join(args.build_dir, "guestd", "vmgate-guestd"))
    os.environ.setdefault("VMGATE_TEST_AGENT",
                          os.path.join(args.build_dir, "tests", "agents", "vmgate-test-agent"))
    sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "integration"))
    from slow_crowd import raise_descriptor_limit
    from vmgate_lab import VM, Lab

    raise_descriptor_limit(2 * (args.tricklers + args.readers) + 1024)
    limits = {"header_timeout_ms": 600000, "idle_timeout_ms": 600000,
              "max_connections": 16384, "max_connections_per_client": 16384}
    with Lab([VM("vm1")], hostd={"limits": limits}) as lab:
        timed_requests(lab, 200)  # warm: the channel pool, the agent's first accept
        alone = timed_requests(lab, args.requests)
        ready, stop = multiprocessing.Event(), multiprocessing.Event()
        held = multiprocessing.Value("i", -1)
        crowd = multiprocessing.Process(
            target=run_crowd, args=(lab.port, args.tricklers, args.readers, ready, stop, held))
        crowd.start()
        try:
            if not ready.wait(90):
                raise RuntimeError("the slow clients never all started")
            beside = timed_requests(lab, args.requests)
        finally:
            stop.set()
            crowd.join(60)
        held = held.value
    if held != args.tricklers + args.readers:
        raise RuntimeError("only %d slow clients were still connected at the end" % held)
    print(json.dumps({"alone": alone, "beside_slow_clients": beside,
                      "slow_clients": {"tricklers": args.tricklers, "readers": args.readers,
                                       "still_connected_at_end": held}}, indent=2))


if __name__ == "__main__":
    main()
