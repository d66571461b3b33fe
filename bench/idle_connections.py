#!/usr/bin/env python3
"""Idle connections through hostd: what each one costs in memory, and how many are held.

Opens COUNT connections through hostd, lets them sit idle, and reads VmRSS
and open descriptors of the given processes from /proc before and with them.
Then checks that a few of them still work, that a new client is still served,
closes everything and reads RSS once more. Prints one JSON object.

  --kind tunnel     `CONNECT vm1:5986`, each answered 200 and left idle (the
                    tunnel then carries GET /hello)
  --kind keepalive  a keep-alive client: one `POST /discard` with an 8 KiB
                    body and `X-VM-Id: vm1`, its 200 read, the connection kept
                    open and idle (the next request on it is another POST)

  --tls             every connection speaks TLS to the port (a TLS listener;
                    its certificate is not checked)

  idle_connections.py --kind KIND [--tls] --port PORT --count N --pid NAME=PID [--pid NAME=PID ...]
"""
import argparse
import asyncio
import json
import os
import resource
import ssl
import sys
import time

BODY = b"x" * 8192
TLS = None  # the client context with --tls


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


async def read_response(reader):
    """(status line, body) of one response with a Content-Length (or none)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length)
    return head.split(b"\r\n", 1)[0], body


async def hello(reader, writer):
    writer.write(b"GET /hello HTTP/1.1\r\nHost: vm1\r\n\r\n")
    status, body = await read_response(reader)
    return status.startswith(b"HTTP/1.1 200") and body.startswith(b"hello from")


async def discard(reader, writer):
    writer.write(b"POST /discard HTTP/1.1\r\nHost: vm1\r\nX-VM-Id: vm1\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY)
    status, body = await read_response(reader)
    return status, status.startswith(b"HTTP/1.1 200") and body.strip() == b"%d" % len(BODY)


async def open_tunnel(host, port, target):
    reader, writer = await asyncio.open_connection(host, port, ssl=TLS)
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status + b" ":
        writer.close()
        raise RuntimeError(f"CONNECT {target}: {status.decode(errors='replace')}")
    return reader, writer


async def open_keepalive(host, port, target):
    reader, writer = await asyncio.open_connection(host, port, ssl=TLS)
    status, ok = await discard(reader, writer)
    if not ok:
        writer.close()
        raise RuntimeError(f"POST /discard: {status.decode(errors='replace')}")
    return reader, writer


async def discard_again(reader, writer):
    return (await discard(reader, writer))[1]


KINDS = {
    # how a connection is opened, and how an idle one proves it still works
    "tunnel": (open_tunnel, hello),
    "keepalive": (open_keepalive, discard_again),
}


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=sorted(KINDS), default="tunnel")
    parser.add_argument("--tls", action="store_true", help="TLS to the port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target", default="vm1:5986", help="what a tunnel CONNECTs to")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--parallel", type=int, default=256, help="connections being opened at once")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds idle before measuring")
    parser.add_argument("--pid", action="append", default=[], help="NAME=PID to measure")
    parser.add_argument("--hold", type=float, default=0,
                        help="seconds to keep the connections open after measuring (for profilers)")
    args = parser.parse_args()
    pids = dict(p.split("=", 1) for p in args.pid)
    if args.tls:
        global TLS
        TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        TLS.check_hostname = False
        TLS.verify_mode = ssl.CERT_NONE
    opener, use = KINDS[args.kind]

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    # One connection first, used and closed: lazy start-up allocations are not
    # counted as the connections' cost.
    r, w = await opener(args.host, args.port, args.target)
    if not await use(r, w):
        raise RuntimeError(f"the first {args.kind} connection does not reach the agent")
    w.close()
    await asyncio.sleep(args.settle)
    before = {name: rss_kib(pid) for name, pid in pids.items()}

    conns = []
    errors = []
    held_at_first_error = None
    gate = asyncio.Semaphore(args.parallel)

    async def one():
        nonlocal held_at_first_error
        async with gate:
            try:
                conns.append(await opener(args.host, args.port, args.target))
            except Exception as e:  # every failure is counted and reported, none stops the run
                if held_at_first_error is None:
                    held_at_first_error = len(conns)
                errors.append(f"{type(e).__name__}: {e}")

    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(args.count)))
    open_s = time.monotonic() - started
    await asyncio.sleep(args.settle)
    during = {name: rss_kib(pid) for name, pid in pids.items()}
    fds = {name: fd_count(pid) for name, pid in pids.items()}
    if args.hold:
        print(f"holding {len(conns)} connections for {args.hold} s", file=sys.stderr, flush=True)
        await asyncio.sleep(args.hold)

    # With all of them still open, a new client is served ...
    try:
        r, w = await opener(args.host, args.port, args.target)
        new_client_ok = await use(r, w)
        w.close()
    except Exception as e:  # every failure is counted and reported, none stops the run
        new_client_ok = False
        errors.append(f"a new client: {type(e).__name__}: {e}")
    # ... and a few idle ones still carry a request both ways.
    checked = 0
    for reader, writer in conns[:: max(1, len(conns) // 4)][:4]:
        if not await use(reader, writer):
            errors.append(f"an idle {args.kind} connection did not reach the agent")
        checked += 1
    for _, writer in conns:
        writer.close()
    await asyncio.sleep(args.settle)
    after = {name: rss_kib(pid) for name, pid in pids.items()}

    opened = len(conns)
    delta = sum(during.values()) - sum(before.values())
    print(json.dumps({
        "kind": args.kind,
        "requested": args.count,
        "opened": opened,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "held_at_first_error": held_at_first_error,
        "new_client_ok": new_client_ok,
        "open_seconds": round(open_s, 2),
        "rss_kib_before": before,
        "rss_kib_with_connections": during,
        "rss_kib_after_close": after,
        "fds_with_connections": fds,
        "checked_connections": checked,
        "per_connection_bytes": round(delta * 1024 / opened) if opened else None,
        "per_connection_bytes_by_process": {
            name: round((during[name] - before[name]) * 1024 / opened) if opened else None
            for name in pids
        },
    }))
    return 0 if opened == args.count and not errors else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
