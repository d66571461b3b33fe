#!/usr/bin/env python3
"""Idle CONNECT tunnels: what each one costs hostd and guestd in memory.

Opens COUNT tunnels through hostd (`CONNECT vm1:5986`), waits for every
`200`, lets them sit idle, and reads VmRSS of the given processes from /proc
before and after. Then checks that a few tunnels really reach the agent
(GET /hello through them), closes everything and reads RSS once more.
Prints one JSON object.

  idle_connections.py --port PORT --count N --pid NAME=PID [--pid NAME=PID ...]
"""
import argparse
import asyncio
import json
import resource
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def fd_count(pid):
    import os
    return len(os.listdir(f"/proc/{pid}/fd"))


async def open_tunnel(host, port, target):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status + b" ":
        writer.close()
        raise RuntimeError(f"CONNECT {target}: {status.decode(errors='replace')}")
    return reader, writer


async def hello(reader, writer):
    writer.write(b"GET /hello HTTP/1.1\r\nHost: vm1\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length)
    return head.startswith(b"HTTP/1.1 200") and body.startswith(b"hello from")


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target", default="vm1:5986")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--parallel", type=int, default=256, help="tunnels being opened at once")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds idle before measuring")
    parser.add_argument("--pid", action="append", default=[], help="NAME=PID to measure")
    parser.add_argument("--hold", type=float, default=0,
                        help="seconds to keep the tunnels open after measuring (for profilers)")
    args = parser.parse_args()
    pids = dict(p.split("=", 1) for p in args.pid)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    # One tunnel first, used and closed: lazy start-up allocations are not
    # counted as tunnel cost.
    r, w = await open_tunnel(args.host, args.port, args.target)
    if not await hello(r, w):
        raise RuntimeError("the first tunnel does not reach the agent")
    w.close()
    await asyncio.sleep(args.settle)
    before = {name: rss_kib(pid) for name, pid in pids.items()}

    tunnels = []
    gate = asyncio.Semaphore(args.parallel)

    async def one():
        async with gate:
            tunnels.append(await open_tunnel(args.host, args.port, args.target))

    started = time.monotonic()
    results = await asyncio.gather(*(one() for _ in range(args.count)), return_exceptions=True)
    open_s = time.monotonic() - started
    errors = [str(e) for e in results if isinstance(e, BaseException)]
    await asyncio.sleep(args.settle)
    during = {name: rss_kib(pid) for name, pid in pids.items()}
    fds = {name: fd_count(pid) for name, pid in pids.items()}
    if args.hold:
        print(f"holding {len(tunnels)} tunnels for {args.hold} s", file=sys.stderr, flush=True)
        await asyncio.sleep(args.hold)

    # A few tunnels must still carry bytes both ways.
    checked = 0
    for reader, writer in tunnels[:: max(1, len(tunnels) // 4)][:4]:
        if not await hello(reader, writer):
            errors.append("an idle tunnel did not reach the agent")
        checked += 1
    for _, writer in tunnels:
        writer.close()
    await asyncio.sleep(args.settle)
    after = {name: rss_kib(pid) for name, pid in pids.items()}

    opened = len(tunnels)
    delta = sum(during.values()) - sum(before.values())
    print(json.dumps({
        "requested": args.count,
        "opened": opened,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "open_seconds": round(open_s, 2),
        "rss_kib_before": before,
        "rss_kib_with_tunnels": during,
        "rss_kib_after_close": after,
        "fds_with_tunnels": fds,
        "checked_tunnels": checked,
        "per_tunnel_bytes": round(delta * 1024 / opened) if opened else None,
        "per_tunnel_bytes_by_process": {
            name: round((during[name] - before[name]) * 1024 / opened) if opened else None
            for name in pids
        },
    }))
    return 0 if opened == args.count and not errors else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
