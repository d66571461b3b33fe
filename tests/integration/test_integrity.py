"""Bodies cross hostd + guestd byte for byte, in both directions, at any
size and concurrency, and hostd streams them: its memory stays bounded
whatever the body size (docs/architecture.md: "a multi-gigabyte BITS upload flows through
with bounded memory")."""

import concurrent.futures
import hashlib
import os
import re
import subprocess
import threading

import pytest

from vmgate_lab import VM, Lab, wait_until

GIB = 1 << 30
MIB = 1 << 20
BIG = "big.bin"
RSS_BOUND_KIB = 64 * 1024  # hostd's peak resident set while moving 4 GiB


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            h.update(block)
    return h.hexdigest()


def curl_argv(lab, path, vm, *args):
    return ["curl", "-sS", "--fail-with-body", "--max-time", "600", "-H", "X-VM-Id: " + vm,
            *args, lab.url(path)]


def download_sha256(lab, path, vm, *args):
    """Streams a download through curl; returns (sha256 of the body, byte count, headers)."""
    headers_path = lab.path("dl-%d.h" % threading.get_ident())
    p = subprocess.Popen(curl_argv(lab, path, vm, "-D", headers_path, *args),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    h, n = hashlib.sha256(), 0
    for block in iter(lambda: p.stdout.read(MIB), b""):
        h.update(block)
        n += len(block)
    err = p.stderr.read()
    assert p.wait() == 0, err
    with open(headers_path) as f:
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (l.partition(":") for l in f.read().splitlines()[1:]) if k}
    os.unlink(headers_path)
    return h.hexdigest(), n, headers


def upload(lab, path, vm, *args, input=None):
    r = subprocess.run(curl_argv(lab, path, vm, *args), input=input,
                       capture_output=True, timeout=900)
    assert r.returncode == 0, r.stderr
    return r.stdout.decode()


@pytest.fixture(scope="module")
def lab():
    with Lab([VM("vm1"), VM("vm2")], files={BIG: GIB}) as lab:
        lab.big_sha256 = file_sha256(os.path.join(lab.files_dir, BIG))
        yield lab


def test_1_gib_download_arrives_byte_for_byte(lab):
    sha, n, headers = download_sha256(lab, "/files/" + BIG, "vm1")
    assert n == GIB
    assert sha == lab.big_sha256


def test_1_gib_upload_arrives_byte_for_byte(lab):
    # -T FILE: a PUT with Content-Length; the agent hashes what it received.
    out = upload(lab, "/sha256", "vm2", "-T", os.path.join(lab.files_dir, BIG))
    assert out == "%s %d\n" % (lab.big_sha256, GIB)


def test_1_gib_generated_download_matches_the_agents_digest(lab):
    sha, n, headers = download_sha256(lab, "/bytes/%d?chunked=1" % GIB, "vm2")
    assert n == GIB
    assert sha == headers["x-content-sha256"]


def test_32_parallel_uploads_and_downloads_each_arrive_intact(lab):
    size = 8 * MIB
    payloads = [os.urandom(size) for _ in range(32)]

    def up(i):
        vm = "vm1" if i % 2 else "vm2"
        out = upload(lab, "/sha256", vm, "--data-binary", "@-",
                     "-H", "Content-Type: application/octet-stream", input=payloads[i])
        return out == "%s %d\n" % (hashlib.sha256(payloads[i]).hexdigest(), size)

    def down(i):
        vm = "vm2" if i % 2 else "vm1"
        # Different lengths, so a response delivered to the wrong client would show.
        n = size + i
        chunked = "?chunked=1" if i % 3 == 0 else ""
        sha, got, headers = download_sha256(lab, "/bytes/%d%s" % (n, chunked), vm)
        return got == n and sha == headers["x-content-sha256"]

    with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
        ups = [pool.submit(up, i) for i in range(32)]
        downs = [pool.submit(down, i) for i in range(32)]
        results = [f.result() for f in ups + downs]
    assert all(results), results
    assert lab.hostd.alive()


def test_connect_tunnel_carries_bodies_intact_both_ways(lab):
    proxy = ["-p", "-x", "http://127.0.0.1:%d" % lab.port]
    data = os.urandom(64 * MIB)
    r = subprocess.run(["curl", "-sS", "--fail-with-body", "--max-time", "600", *proxy,
                        "--data-binary", "@-", "http://vm1:5986/sha256"],
                       input=data, capture_output=True, timeout=900)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == "%s %d\n" % (hashlib.sha256(data).hexdigest(), len(data))
    n = 64 * MIB + 3
    r = subprocess.run(["curl", "-sS", "--fail-with-body", "--max-time", "600", *proxy,
                        "-D", "/dev/stderr", "http://vm2:5986/bytes/%d" % n],
                       capture_output=True, timeout=900)
    assert r.returncode == 0, r.stderr
    digest = re.search(rb"(?im)^x-content-sha256: *([0-9a-f]{64})", r.stderr).group(1).decode()
    assert len(r.stdout) == n and hashlib.sha256(r.stdout).hexdigest() == digest


def test_4_gib_streamed_upload_is_exact_with_bounded_hostd_memory():
    # A fresh hostd, so its high-water mark covers this transfer and nothing else.
    with Lab([VM("vm1")]) as lab:
        samples = []
        done = threading.Event()

        def sample():
            while not done.wait(0.05):
                rss = lab.hostd.vm_rss_kib()
                if rss is not None:
                    samples.append(rss)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            # The agent's pattern, straight from the agent (not through hostd),
            # with the digest it computed of it; hostd carries it up to /sha256.
            source_headers = lab.path("source.h")
            source = subprocess.Popen(
                ["curl", "-sS", "--fail", "--max-time", "900", "-D", source_headers,
                 "http://127.0.0.1:%d/bytes/%d" % (lab.agent_ports["vm1"], 4 * GIB)],
                stdout=subprocess.PIPE)
            r = subprocess.run(curl_argv(lab, "/sha256", "vm1", "-T", "-"),
                               stdin=source.stdout, capture_output=True, timeout=900)
            source.stdout.close()
            assert source.wait() == 0
        finally:
            done.set()
            sampler.join()
        assert r.returncode == 0, r.stderr
        with open(source_headers) as f:
            sent_digest = re.search(r"(?im)^x-content-sha256: *([0-9a-f]{64})", f.read()).group(1)
        assert r.stdout.decode() == "%s %d\n" % (sent_digest, 4 * GIB)
        with open("/proc/%d/status" % lab.hostd.pid) as f:
            status = dict(l.split(":", 1) for l in f)
        peak_kib = int(status["VmHWM"].split()[0])
        assert len(samples) > 0
        assert max(samples) < RSS_BOUND_KIB, max(samples)
        assert peak_kib < RSS_BOUND_KIB, peak_kib
        # Written when the exchange ends, possibly after curl has its answer.
        wait_until(lambda: any(r.get("vm") == "vm1" and r["status"] == "200" and
                               int(r.get("bytes_in", 0)) >= 4 * GIB
                               for r in lab.hostd_requests()),
                   10, "the record of the 4 GiB upload")


# Byte k of every /bytes body (tests/agents/test_agent.cpp).
PATTERN = bytes(((i * 131) + (i >> 8) * 7) & 0xFF for i in range(65536))


def test_100_concurrent_64_mib_transfers_each_way_arrive_intact():
    """100 uploads and 100 downloads of 64 MiB at once (12.5 GiB in all), each
    SHA-256 compared at both ends. Registered apart from the rest of this file
    (tests/integration/CMakeLists.txt) so that the ASan build runs it too."""
    count, size = 100, 64 * MIB
    with Lab([VM("vm1"), VM("vm2")]) as lab:
        # Each upload a different window of one random buffer, and each
        # download a different length: a body delivered to the wrong client,
        # or bytes of one transfer in another, would change a digest.
        source = os.urandom(size + count)
        view = memoryview(source)
        # The pattern's digests: one pass over 64 MiB, then each length's tail.
        base = hashlib.sha256(PATTERN * (size // len(PATTERN)))

        def pattern_digest(extra):
            h = base.copy()
            h.update(PATTERN[:extra])
            return h.hexdigest()

        def connection():
            return lab.connection(timeout=600)

        def up(i):
            vm = "vm1" if i % 2 else "vm2"
            body = view[i:i + size]
            want = "%s %d\n" % (hashlib.sha256(body).hexdigest(), size)
            c = connection()
            try:
                c.request("PUT", "/sha256", body=body, headers={"X-VM-Id": vm})
                r = c.getresponse()
                got = r.read().decode()
                return r.status == 200 and got == want, "upload %d: %d %r" % (i, r.status, got)
            finally:
                c.close()

        def down(i):
            vm = "vm2" if i % 2 else "vm1"
            n = size + i
            c = connection()
            try:
                c.request("GET", "/bytes/%d?sha=0" % n, headers={"X-VM-Id": vm})
                r = c.getresponse()
                h, got = hashlib.sha256(), 0
                for block in iter(lambda: r.read(MIB), b""):
                    h.update(block)
                    got += len(block)
                ok = r.status == 200 and got == n and h.hexdigest() == pattern_digest(i)
                return ok, "download %d: %d, %d of %d bytes" % (i, r.status, got, n)
            finally:
                c.close()

        with concurrent.futures.ThreadPoolExecutor(max_workers=2 * count) as pool:
            futures = [pool.submit(up, i) for i in range(count)] + \
                      [pool.submit(down, i) for i in range(count)]
            results = [f.result() for f in futures]
        failed = [what for ok, what in results if not ok]
        assert not failed, failed
        assert lab.hostd.alive()
