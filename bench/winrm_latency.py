#!/usr/bin/python3
"""python3-winrm's run_cmd latency on one session, as an operator's script sees it.

  winrm_latency.py --url http://vm1:5985/wsman [--proxy http://127.0.0.1:PORT]
                   [--vm-header vm1] --calls N [--warmup N] [--user U --password P]
                   [--command hostname]

Each call is a whole remote command: Create shell, Command, Receive, Signal,
Delete (five POSTs on one kept-alive connection). --proxy is set as
HTTP_PROXY, the only thing such a script is told about a proxy (absolute form);
--vm-header adds X-VM-Id to every request (vmgate's header form). Prints one
JSON object: calls, errors, p50_ms, p99_ms, mean_ms, and `first_error`. Must run
under the system Python, where the Debian package python3-winrm lives.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time


def percentile(sorted_values, share):
    """The nearest-rank percentile: the smallest value at or above `share` of them."""
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(share * len(sorted_values)) - 1)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--proxy", help="HTTP_PROXY for the client (absolute form)")
    parser.add_argument("--vm-header", help="X-VM-Id on every request (header form)")
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=3, help="calls made first, not counted")
    parser.add_argument("--user", default="bench")
    parser.add_argument("--password", default="bench")
    parser.add_argument("--command", default="hostname")
    args = parser.parse_args()

    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        os.environ.pop(name, None)
        os.environ.pop(name.upper(), None)
    if args.proxy:
        os.environ["HTTP_PROXY"] = os.environ["http_proxy"] = args.proxy
    import winrm  # after the environment is set: requests reads it per session

    session = winrm.Session(args.url, auth=(args.user, args.password), transport="basic")
    if args.vm_header:
        session.protocol.transport.default_headers["X-VM-Id"] = args.vm_header
    times, errors, first_error = [], 0, None
    for i in range(args.warmup + args.calls):
        started = time.perf_counter()
        try:
            result = session.run_cmd(args.command)
            ok = result.status_code == 0
            if not ok and first_error is None:
                first_error = f"exit status {result.status_code}: {result.std_err[-200:]!r}"
        except Exception as e:  # any failure counts; the first is reported
            ok = False
            if first_error is None:
                first_error = f"{type(e).__name__}: {e}"[:300]
        elapsed_ms = (time.perf_counter() - started) * 1000
        if i < args.warmup:
            continue
        if ok:
            times.append(elapsed_ms)
        else:
            errors += 1
    times.sort()
    json.dump({"calls": args.calls, "errors": errors, "p50_ms": percentile(times, 0.50),
               "p99_ms": percentile(times, 0.99),
               "mean_ms": statistics.fmean(times) if times else None,
               "first_error": first_error}, sys.stdout)
    sys.stdout.write("\n")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
