#!/usr/bin/python3
"""SNI passthrough bulk download against direct TLS to the same agent.

The agent is `openssl s_server -WWW` serving one file from the lab's temp dir
over TLS; the two contenders are curl straight to it (direct) and curl to a
passthrough listener of vmgate-hostd, which routes on the SNI name and relays
through guestd (client → hostd → unix channel → guestd → agent: two relays,
TLS untouched). Rounds alternate the two; the report is the median of each
and their ratio. The same TLS work is done in both (the agent's and curl's),
so the ratio is what the two relays cost.

    bench/sni_passthrough.py [--size MiB] [--rounds N] [--build build/ci]

Uses tests/integration/vmgate_lab.py for the daemons (temp dir, ephemeral
ports, everything killed at the end).
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

SOURCE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "integration"))

SUFFIX = ".vms.example"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="MiB per download")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--build", default=os.path.join(SOURCE_DIR, "build", "ci"))
    args = parser.parse_args()
    os.environ.setdefault("VMGATE_HOSTD", os.path.join(args.build, "hostd", "vmgate-hostd"))
    os.environ.setdefault("VMGATE_GUESTD", os.path.join(args.build, "guestd", "vmgate-guestd"))
    import vmgate_lab
    from vmgate_lab import VM, Lab

    vm1 = VM("vm1", agent=None, guestd=False)
    listeners = [{"address": "tcp:127.0.0.1:0", "guest_port": 5986, "mode": "passthrough",
                  "trusted": True}]
    with Lab([vm1], listeners=listeners, hostd={"routing": {"host_suffix": SUFFIX}}) as lab:
        cert, key = lab.path("cert.pem"), lab.path("key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj",
                        "/CN=vm1" + SUFFIX, "-keyout", key, "-out", cert],
                       check=True, capture_output=True)
        with open(lab.path("big"), "wb") as f:
            f.truncate(args.size << 20)
        agent = lab.spawn("agent", ["openssl", "s_server", "-accept", "127.0.0.1:0", "-cert",
                                    cert, "-key", key, "-WWW"], cwd=lab.dir)
        port = int(agent.wait_for(r"^ACCEPT 127\.0\.0\.1:(\d+)$", stream="stdout").group(1))
        vm1.guestd_agents = {"5986": "tcp:127.0.0.1:%d" % port}
        lab.start_guestd(vm1)
        host = "vm1" + SUFFIX
        urls = {
            "direct": ["https://%s:%d/big" % (host, port), "--resolve",
                       "%s:%d:127.0.0.1" % (host, port)],
            "sni passthrough": ["https://%s:%d/big" % (host, lab.port), "--resolve",
                                "%s:%d:127.0.0.1" % (host, lab.port)],
        }
        # One unmeasured download each first: the file into the page cache,
        # the channel path's first connections made.
        for name in urls:
            subprocess.run(["curl", "-sSk", "-o", "/dev/null", *urls[name]], check=True)
        rates = {name: [] for name in urls}
        for r in range(args.rounds):
            order = list(urls) if r % 2 == 0 else list(reversed(urls))
            for name in order:
                started = time.monotonic()
                out = subprocess.run(["curl", "-sSk", "-o", "/dev/null", "-w", "%{size_download}",
                                      *urls[name]], capture_output=True, text=True, check=True)
                elapsed = time.monotonic() - started
                size = int(out.stdout)
                if size != args.size << 20:
                    raise SystemExit("%s: %d bytes, not %d" % (name, size, args.size << 20))
                rates[name].append(size * 8 / elapsed / 1e9)
                print("round %d %-16s %.2f Gbit/s" % (r + 1, name, rates[name][-1]), flush=True)
        direct = statistics.median(rates["direct"])
        sni = statistics.median(rates["sni passthrough"])
        load = os.getloadavg()[0]
        print("median direct %.2f Gbit/s, sni passthrough %.2f Gbit/s, ratio %.2f "
              "(load average %.2f)" % (direct, sni, sni / direct, load))


if __name__ == "__main__":
    main()
