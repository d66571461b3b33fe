"""A VM, or libvirtd itself, going away while traffic flows. A VM destroyed
(or, transient, gone) mid-download or mid-tunnel has its client cut at once,
while the agent is still sending, and the request record says why; its pooled
channels are dropped, so a VM restarted with a new CID never gets one. When
libvirtd is killed, hostd keeps routing from its last view, reconnects, and
resynchronises: a domain defined and one undefined while it was away are right
afterwards. Each test checks what the client saw and that hostd still serves.

In the lab each VM's guestd outlives its domain (it is a process beside
libvirtd, not inside a guest), so only hostd can end what runs to a destroyed
domain: without it the downloads below would go on for ever."""

import calendar
import os
import re
import socket
import subprocess
import time

import pytest

from vmgate_lab import VM, Lab, SessionLibvirtd, domain_xml, metric, parse_kv, wait_until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: libvirtd runs unprivileged as nobody via setpriv")

EVENT_WAIT = 10.0  # seconds; events arrive in milliseconds, this only bounds a failure
ENDLESS = 1 << 40  # bytes: the agent's largest /bytes/N, far more than any test reads
CUT_WITHIN = 1.0  # seconds from hostd hearing of the VM to the client's cut
RECV_BUFFER = 64 * 1024  # a small client buffer: the agent blocks, still sending, when it is full


@pytest.fixture(scope="module")
def libvirtd():
    with SessionLibvirtd() as lv:
        yield lv


@pytest.fixture(scope="module")
def lab(libvirtd):
    vms = [VM("dl", cid=30), VM("tun", cid=31), VM("transient", cid=32), VM("recid", cid=33),
           VM("bystander", cid=34)]
    with Lab(vms, libvirt_uri=libvirtd.uri, start_hostd=False) as lab:
        # The channel path follows the CID, as a vsock address does.
        lab.hostd_overrides["channel"] = {"transport": "unix:" + lab.path("cid-{cid}.sock"),
                                          "pool_idle_timeout_ms": 600000}
        for vm in vms:
            point_cid(lab, vm)
        lab.start_hostd()
        define(lab, libvirtd, lab_vm(lab, "bystander"), start=True)
        wait_for_status(lab, "bystander", 200)
        yield lab


def lab_vm(lab, name):
    return next(vm for vm in lab.vms if vm.name == name)


def point_cid(lab, vm):
    path = lab.path("cid-%d.sock" % vm.cid)
    if not os.path.lexists(path):
        os.symlink(lab.socket_path(vm.name), path)


def define(lab, libvirtd, vm, start=False):
    path = lab.path("%s-cid%d.xml" % (vm.name, vm.cid))
    with open(path, "w") as f:
        f.write(domain_xml(vm))
    libvirtd.virsh("define", path)
    if start:
        libvirtd.virsh("start", vm.name)


def status_of(lab, vm):
    return lab.curl("/hello", "-H", "X-VM-Id: " + vm).status


def wait_for_status(lab, vm, want):
    seen = []

    def check():
        seen.append(status_of(lab, vm))
        return seen[-1] == want

    wait_until(check, EVENT_WAIT, "%s to answer %d (last: %s)" % (vm, want, seen[-1:]),
               interval=0.05)


def assert_still_serving(lab):
    r = lab.curl("/hello", "-H", "X-VM-Id: bystander")
    assert r.status == 200 and r.text == "hello from bystander\n", r
    assert lab.hostd.alive()


# -- a client that reads a response it will never see the end of --------------

def open_client(lab):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
    s.settimeout(EVENT_WAIT)
    s.connect(("127.0.0.1", lab.port))
    return s


def read_head(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError("connection closed before a response head: %r" % data)
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


class Download:
    """GET /bytes/ENDLESS on `s` (a fresh connection, or a tunnel), read
    until some body came: the agent is then sending, and blocks once the
    small buffers between it and this client are full."""

    def __init__(self, s, host, vm_header=None):
        self.s = s
        # sha=0: no digest header, which would hash all 2^40 bytes first.
        lines = ["GET /bytes/%d?sha=0 HTTP/1.1" % ENDLESS, "Host: " + host]
        if vm_header:
            lines.append("X-VM-Id: " + vm_header)
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head, rest = read_head(s)
        assert re.match(r"HTTP/1\.1 200 ", head), head
        self.content_length = int(re.search(r"(?im)^content-length:\s*(\d+)", head).group(1))
        assert self.content_length == ENDLESS
        self.received = len(rest)
        self.read_some(1 << 20)

    def read_some(self, n):
        goal = self.received + n
        while self.received < goal:
            chunk = self.s.recv(65536)
            assert chunk, "the download ended after %d bytes" % self.received
            self.received += len(chunk)

    def read_to_end(self, limit):
        """Reads until the connection ends; the seconds that took, or None
        when it was still going after `limit` seconds."""
        start = time.monotonic()
        self.s.settimeout(0.5)
        while time.monotonic() - start < limit:
            try:
                chunk = self.s.recv(1 << 20)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return time.monotonic() - start
            if not chunk:
                return time.monotonic() - start
            self.received += len(chunk)
        return None


def log_time(line):
    """A log line's ts= as seconds since the epoch (millisecond precision)."""
    m = re.search(r"ts=(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{3})Z", line)
    assert m, line
    fields = [int(x) for x in m.groups()]
    return calendar.timegm(tuple(fields[:6]) + (0, 0, 0)) + fields[6] / 1000.0


def hostd_line(lab, predicate, what):
    return wait_until(lambda: next((l for l in lab.hostd.lines() if predicate(l)), None),
                      EVENT_WAIT, what)


def request_line(lab, **match):
    def matches(line):
        if "event=request " not in line:
            return False
        fields = parse_kv(line)
        return all(fields.get(k) == str(v) for k, v in match.items())
    return hostd_line(lab, matches, "hostd request record %r" % match)


def assert_cut_within_a_second(lab, record_line, revoked_from):
    vm = parse_kv(record_line)["vm"]
    revoked = [l for l in lab.hostd.lines()[revoked_from:] if "event=vm_channels_revoked" in l
               and vm in parse_kv(l)["vms"].split(",")]
    assert revoked, "hostd logged no revocation of %s's channels" % vm
    assert log_time(record_line) - log_time(revoked[0]) < CUT_WITHIN, (revoked[0], record_line)


# -- the tests ------------------------------------------------------------------

def test_a_vm_destroyed_mid_download_cuts_its_client_at_once(lab, libvirtd):
    define(lab, libvirtd, lab_vm(lab, "dl"), start=True)
    wait_for_status(lab, "dl", 200)
    client = open_client(lab)
    try:
        download = Download(client, "dl", vm_header="dl")
        mark = len(lab.hostd.lines())
        libvirtd.virsh("destroy", "dl")
        took = download.read_to_end(EVENT_WAIT)
        assert took is not None, "the download went on after dl was destroyed"
    finally:
        client.close()
    # Cut short of its length (the agent had 2^40 bytes still to send), not finished.
    assert download.received < download.content_length
    line = request_line(lab, vm="dl", method="GET", aborted="vm_stopped")
    record = parse_kv(line)
    assert record["status"] == "200" and int(record["bytes_out"]) < ENDLESS, record
    assert record["reason"] == "vm dl is shut_off", record
    assert_cut_within_a_second(lab, line, mark)
    # New requests: 503 while it is defined and shut off.
    assert status_of(lab, "dl") == 503
    assert_still_serving(lab)


def test_a_vm_destroyed_mid_tunnel_closes_the_tunnel(lab, libvirtd):
    define(lab, libvirtd, lab_vm(lab, "tun"), start=True)
    wait_for_status(lab, "tun", 200)
    client = open_client(lab)
    try:
        client.sendall(b"CONNECT tun:5986 HTTP/1.1\r\nHost: tun:5986\r\n\r\n")
        head, rest = read_head(client)
        assert head.startswith("HTTP/1.1 200"), head
        assert rest == b""
        # The agent's bytes stream through the tunnel.
        download = Download(client, "tun")
        mark = len(lab.hostd.lines())
        libvirtd.virsh("destroy", "tun")
        took = download.read_to_end(EVENT_WAIT)
        assert took is not None, "the tunnel stayed open after tun was destroyed"
    finally:
        client.close()
    assert download.received < download.content_length
    line = request_line(lab, vm="tun", method="CONNECT", aborted="vm_stopped")
    assert parse_kv(line)["reason"] == "vm tun is shut_off"
    assert_cut_within_a_second(lab, line, mark)
    assert status_of(lab, "tun") == 503
    assert_still_serving(lab)


def test_a_running_vm_undefined_keeps_streaming_until_it_is_gone(lab, libvirtd):
    vm = lab_vm(lab, "transient")
    define(lab, libvirtd, vm, start=True)
    wait_for_status(lab, "transient", 200)
    client = open_client(lab)
    try:
        download = Download(client, "transient", vm_header="transient")
        # Undefined while running: still running (now transient), so it streams on.
        events = metric(lab, "vmgate_libvirt_events_total")
        libvirtd.virsh("undefine", "transient")
        assert re.search(r"Persistent:\s+no", libvirtd.virsh("dominfo", "transient").stdout)
        wait_until(lambda: metric(lab, "vmgate_libvirt_events_total") > events, EVENT_WAIT,
                   "hostd to hear of the undefine")
        download.read_some(4 << 20)
        assert status_of(lab, "transient") == 200
        # Destroyed, a transient domain is gone altogether.
        mark = len(lab.hostd.lines())
        libvirtd.virsh("destroy", "transient")
        took = download.read_to_end(EVENT_WAIT)
        assert took is not None, "the download went on after transient was gone"
    finally:
        client.close()
    assert download.received < download.content_length
    line = request_line(lab, vm="transient", method="GET", aborted="vm_stopped")
    assert parse_kv(line)["reason"] == "vm transient is no longer defined"
    assert_cut_within_a_second(lab, line, mark)
    wait_for_status(lab, "transient", 404)
    assert_still_serving(lab)


def test_a_vm_restarted_with_a_new_cid_never_gets_an_old_channel(lab, libvirtd):
    vm = lab_vm(lab, "recid")
    define(lab, libvirtd, vm, start=True)
    wait_for_status(lab, "recid", 200)
    # A channel to CID 33 is pooled, and reused by the next request.
    records = lambda: [r for r in lab.hostd_requests() if r.get("vm") == "recid"]
    for _ in range(2):
        logged = len(records())
        assert lab.curl("/hello", "-H", "X-VM-Id: recid").status == 200
        wait_until(lambda: len(records()) > logged, EVENT_WAIT, "the record of recid's answer")
    assert records()[-1].get("channel") == "reused", records()[-1]
    dropped = metric(lab, "vmgate_channel_pool_discarded_total", reason="vm_gone")
    guestd = lab.guestds["recid"]
    guestd_mark = len(guestd.lines())

    libvirtd.virsh("destroy", "recid")
    wait_for_status(lab, "recid", 503)
    # The pooled channel was closed with its VM: guestd saw it end.
    wait_until(lambda: metric(lab, "vmgate_channel_pool_discarded_total", reason="vm_gone")
               > dropped, EVENT_WAIT, "the pooled channel to be dropped")
    guestd.wait_for(r"event=channel ", start=guestd_mark)

    libvirtd.virsh("undefine", "recid")
    vm.cid = 35
    point_cid(lab, vm)  # the same guestd, now at CID 35
    define(lab, libvirtd, vm, start=True)
    wait_for_status(lab, "recid", 200)
    # The first answer at CID 35, over a new channel.
    after = wait_until(lambda: records()[-1] if records()[-1]["status"] == "200" else None,
                       EVENT_WAIT, "the record of recid's answer at CID 35")
    assert "channel" not in after, after
    assert_still_serving(lab)


# -- libvirtd restarted ------------------------------------------------------------

RECONNECT_MS = 6000  # long enough to define domains in the new libvirtd before hostd is back


class StateHolder:
    """A client that keeps a connection to libvirtd open (`virsh event
    --loop`): a daemon frees its test:///default state when its last client
    goes, so each `virsh` command alone would define into a state that is
    gone before the next one starts."""

    def __init__(self, libvirtd):
        self.process = subprocess.Popen(["virsh", "-c", libvirtd.uri, "event", "--all", "--loop"],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)

    def close(self):
        self.process.terminate()
        self.process.wait(10)


def define_and_start(lab, libvirtd, vm):
    """Defines and starts `vm`, again if the holder was not connected yet
    and the daemon dropped the definition in between."""
    def done():
        define(lab, libvirtd, vm)
        return libvirtd.virsh("start", vm.name, check=False).returncode == 0
    wait_until(done, EVENT_WAIT, "%s defined and started" % vm.name, interval=0.1)


def test_hostd_routes_through_a_libvirtd_restart_and_resynchronises():
    with SessionLibvirtd() as libvirtd:
        keep, old, new = VM("keep", cid=40), VM("old", cid=41), VM("new", cid=42)
        with Lab([keep, old, new], libvirt_uri=libvirtd.uri, start_hostd=False) as lab:
            lab.hostd_overrides["channel"] = {"transport": "unix:" + lab.path("cid-{cid}.sock")}
            lab.hostd_overrides["libvirt"] = {"uri": libvirtd.uri,
                                              "reconnect_min_ms": RECONNECT_MS,
                                              "reconnect_max_ms": RECONNECT_MS}
            for vm in (keep, old, new):
                point_cid(lab, vm)
            lab.start_hostd()
            define(lab, libvirtd, keep, start=True)
            define(lab, libvirtd, old, start=True)
            wait_for_status(lab, "keep", 200)
            wait_for_status(lab, "old", 200)
            pid = lab.hostd.pid
            # A download from `old` runs through the restart.
            holder = None
            client = open_client(lab)
            try:
                download = Download(client, "old", vm_header="old")

                libvirtd.kill()
                lab.hostd.wait_for(r"event=libvirt_disconnected ")
                # Away: routed from the last view, the download going on.
                assert status_of(lab, "keep") == 200
                assert status_of(lab, "old") == 200
                download.read_some(4 << 20)

                # A new libvirtd knows neither domain: `keep` is defined again,
                # `new` for the first time; `old` stays undefined.
                libvirtd.start()
                holder = StateHolder(libvirtd)
                define_and_start(lab, libvirtd, keep)
                define_and_start(lab, libvirtd, new)
                assert not [l for l in lab.hostd.lines() if "event=libvirt_reconnected" in l], \
                    "hostd reconnected before the domains were defined"
                assert status_of(lab, "new") == 404  # not seen yet
                lab.hostd.wait_for(r"event=libvirt_reconnected ", timeout=EVENT_WAIT)
                syncs = lambda: [l for l in lab.hostd.lines() if "event=libvirt_sync " in l]
                wait_until(lambda: len(syncs()) == 2, EVENT_WAIT, "the resynchronisation")

                # `old` is gone: its download is cut, not finished.
                took = download.read_to_end(EVENT_WAIT)
                assert took is not None, "the download went on after old was undefined"
            finally:
                client.close()
                if holder:
                    holder.close()
            assert download.received < download.content_length
            record = parse_kv(request_line(lab, vm="old", method="GET", aborted="vm_stopped"))
            assert record["reason"] == "vm old is no longer defined", record

            assert status_of(lab, "keep") == 200
            assert status_of(lab, "new") == 200
            assert status_of(lab, "old") == 404
            assert lab.hostd.pid == pid and lab.hostd.alive()
            disconnected = parse_kv(next(l for l in lab.hostd.lines()
                                         if "event=libvirt_disconnected" in l))
            # Jittered: between half the backoff and all of it.
            assert RECONNECT_MS / 2 <= int(disconnected["retry_ms"]) <= RECONNECT_MS, disconnected
