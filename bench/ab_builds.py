#!/usr/bin/env python3
"""Two builds of vmgate against each other, on the same machine at the same time.

A change to hostd or guestd that saves a few per cent disappears in the spread
between two full bench/run runs. This starts `bench/run --serve` once for each
build directory, so both pairs of daemons are up side by side in front of
agents of their own, then runs the same wrk workload against each in turn,
swapping the order every round, and reads hostd's and guestd's CPU from
/proc around each run. Prints every round, then the medians and the ratios
(B ÷ A). Not part of bench/run's full run.

  bench/ab_builds.py BUILD_A BUILD_B [--workload wsman|churn|wsman-tls|churn-tls]
                    [--rounds 6] [--seconds 5]

wsman is bench/run's WS-Man keep-alive workload (wrk/wsman.lua, 64
connections); churn is its new-connection-per-request one (GET /hello with
Connection: close); the -tls ones are the same against hostd's TLS listener.
"""
import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))
DAEMONS = ("vmgate-hostd", "vmgate-guestd")


def serve(build):
    """bench/run --serve for `build`: the process and the JSON line it prints once up."""
    proc = subprocess.Popen([os.path.join(BENCH, "run"), "--build", build, "--serve"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:  # its log lines come first, then one JSON object
        if line.startswith("{"):
            info = json.loads(line)
            missing = [d for d in DAEMONS if d not in info["pids"]]
            if missing:
                sys.exit(f"bench/run --serve for {build} reported no pid for {missing}")
            return proc, info
    sys.exit(f"bench/run --serve for {build} ended before serving (exit {proc.wait()})")


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def measure(info, workload, seconds):
    """One wrk run against the vmgate contender: req/s and hostd + guestd µs per request."""
    if workload.endswith("-tls"):
        url = f"https://127.0.0.1:{info['tls_ports']['vmgate']}"
    else:
        url = f"http://127.0.0.1:{info['ports']['vmgate']}"
    if workload.startswith("wsman"):
        extra = ["-s", os.path.join(BENCH, "wrk", "wsman.lua"), url + "/wsman"]
    else:
        extra = ["-H", "Connection: close", "-H", "X-VM-Id: vm1", url + "/hello"]
    pids = [info["pids"][d] for d in DAEMONS]
    before = cpu_seconds(pids)
    out = subprocess.run(["wrk", "-t2", "-c64", f"-d{seconds}s", "--timeout", "10s"] + extra,
                         capture_output=True, text=True, timeout=seconds + 60)
    used = cpu_seconds(pids) - before
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    total = re.search(r"(\d+) requests in", out.stdout)
    if out.returncode != 0 or not rps or not total:
        sys.exit(f"wrk failed against {url}: {out.stdout}{out.stderr}")
    if re.search(r"Non-2xx|Socket errors", out.stdout):
        sys.exit(f"wrk saw errors against {url}:\n{out.stdout}")
    return float(rps.group(1)), used / int(total.group(1)) * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("build_a")
    parser.add_argument("build_b")
    parser.add_argument("--workload", choices=("wsman", "churn", "wsman-tls", "churn-tls"), default="wsman")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    builds = [args.build_a, args.build_b]
    servers = []
    try:
        for build in builds:
            servers.append(serve(build))
        results = {b: [] for b in builds}
        for r in range(args.rounds):
            for i in (0, 1) if r % 2 == 0 else (1, 0):
                rps, us = measure(servers[i][1], args.workload, args.seconds)
                results[builds[i]].append((rps, us))
                print(f"round {r + 1}: {builds[i]}: {rps:.0f} req/s, {us:.1f} µs per request",
                      flush=True)
    finally:
        for proc, _ in servers:
            proc.send_signal(signal.SIGINT)
        for proc, _ in servers:
            proc.wait()
    medians = {b: (statistics.median(x for x, _ in results[b]),
                   statistics.median(y for _, y in results[b])) for b in builds}
    for b in builds:
        print(f"{b}: median {medians[b][0]:.0f} req/s, {medians[b][1]:.1f} µs per request")
    (ra, ua), (rb, ub) = medians[args.build_a], medians[args.build_b]
    print(f"B ÷ A: {rb / ra:.3f} × req/s, {ub / ua:.3f} × CPU per request")


if __name__ == "__main__":
    main()
