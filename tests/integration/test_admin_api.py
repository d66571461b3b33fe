"""hostd's admin listener and vmgatectl against real processes: health and
readiness (with systemd's notify protocol), the JSON API, vmgatectl's human
and --json output and exit codes, and /metrics read by real Prometheus text
parsers (python3-prometheus-client's, and promtool's linter when installed)."""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

import vmgate_lab
from vmgate_lab import VM, Lab, UnixHTTPConnection, parse_kv, wait_until

VMGATECTL = os.environ.get(
    "VMGATECTL", os.path.join(vmgate_lab.SOURCE_DIR, "build", "dev", "tools", "vmgatectl",
                              "vmgatectl"))

# vm3 is shut off; vm4 runs but has no guestd behind its channel.
VMS = [VM("vm1"), VM("vm2"), VM("vm3", running=False), VM("vm4", agent=None)]


def admin_get(lab, path, admin=None):
    """(status, content type, body text) of one GET to hostd's admin listener."""
    admin = admin or "unix:" + lab.path("admin.sock")
    if admin.startswith("unix:"):
        c = UnixHTTPConnection(admin[5:])
    else:
        host, port = admin[len("tcp:"):].rsplit(":", 1)
        c = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.getheader("content-type"), r.read().decode()
    finally:
        c.close()


def admin_json(lab, path):
    status, ctype, body = admin_get(lab, path)
    assert ctype == "application/json", body
    return status, json.loads(body)


def ctl(lab, *args, admin=None):
    """vmgatectl against the lab's admin socket: (exit code, stdout, stderr)."""
    admin = admin or "unix:" + lab.path("admin.sock")
    r = subprocess.run([VMGATECTL, "--admin", admin, *args], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=60)
    return r.returncode, r.stdout, r.stderr


def metrics(lab):
    """{sample name: {frozenset(labels): value}} from /metrics, parsed by prometheus_client."""
    status, ctype, text = admin_get(lab, "/metrics")
    assert status == 200
    assert ctype == "text/plain; version=0.0.4; charset=utf-8"
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return out


def process_start_epoch(pid):
    """The start of process `pid` by the kernel's account, in seconds since the epoch."""
    with open("/proc/%d/stat" % pid) as f:
        after_name = f.read().rpartition(")")[2].split()
    start_ticks = int(after_name[19])  # field 22 of proc(5), counted after "pid (comm)"
    with open("/proc/stat") as f:
        boot = next(int(l.split()[1]) for l in f if l.startswith("btime "))
    return boot + start_ticks / os.sysconf("SC_CLK_TCK")


def value(samples, name, **labels):
    return samples.get(name, {}).get(frozenset((k, str(v)) for k, v in labels.items()), 0)


@pytest.fixture(scope="module")
def lab():
    with Lab(VMS) as lab:
        lab.hostd.wait_for(r"event=ready\b")
        yield lab


# -- health and readiness ------------------------------------------------------

def test_healthz_and_readyz_answer_when_hostd_is_up(lab):
    assert admin_get(lab, "/healthz")[::2] == (200, "ok\n")
    assert admin_get(lab, "/readyz")[::2] == (200, "ready\n")
    assert admin_get(lab, "/nope")[0] == 404


def start_hostd(lab, env=None):
    """hostd without waiting for a libvirt sync (Lab.start_hostd waits for one)."""
    lab.hostd = lab.spawn("hostd", [vmgate_lab.HOSTD, "--config", lab.write_hostd_config()],
                          env=env)
    return lab.hostd


def test_readyz_says_why_while_libvirt_cannot_be_reached():
    missing = "/nonexistent/vmgate-test/libvirt-sock"
    with Lab([VM("vm1", agent=None)], libvirt_uri="test+unix:///default?socket=" + missing,
             start_hostd=False) as lab:
        hostd = start_hostd(lab)
        # The listeners come up; the first libvirt sync never completes.
        hostd.wait_for(r"event=admin_listening")
        hostd.wait_for(r"event=libvirt_connect_failed")
        assert admin_get(lab, "/healthz")[0] == 200
        status, _, body = admin_get(lab, "/readyz")
        assert status == 503
        assert "not ready: libvirt: first synchronisation with" in body and missing in body
        assert value(metrics(lab), "vmgate_libvirt_connected") == 0
        # Not ready up to the retry after those answers, not merely not yet logged.
        lines = hostd.lines()
        retry = hostd.wait_for(r"event=libvirt_connect_failed", start=len(lines))
        upto = hostd.lines()
        upto = upto[:next(i for i, l in enumerate(upto) if retry.string == l) + 1]
        assert not any("event=ready" in l for l in upto), upto


def test_systemd_is_told_ready_after_the_first_sync_and_stopping_on_sigterm():
    with Lab([VM("vm1", agent=None)], start_hostd=False) as lab:
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify_path = lab.path("notify.sock")
        notify.bind(notify_path)
        notify.settimeout(vmgate_lab.START_TIMEOUT)
        try:
            hostd = start_hostd(lab, env=dict(os.environ, NOTIFY_SOCKET=notify_path))
            assert notify.recv(4096) == b"READY=1"
            hostd.wait_for(r"event=ready\b")
            log = hostd.stderr()
            # Ready means listeners bound and libvirt read, in that log order.
            assert log.index("event=listening") < log.index("event=ready")
            assert log.index("event=libvirt_sync") < log.index("event=ready")
            assert admin_get(lab, "/readyz")[0] == 200
            hostd.popen.send_signal(signal.SIGTERM)
            assert notify.recv(4096) == b"STOPPING=1"
            hostd.popen.wait(15)
        finally:
            notify.close()


def test_admin_listener_on_an_ephemeral_tcp_port_logs_the_bound_address():
    with Lab([VM("vm1")], hostd={"admin": {"address": "tcp:127.0.0.1:0"}}) as lab:
        m = lab.hostd.wait_for(r"event=admin_listening .*")
        addr = parse_kv(m.group(0))["addr"]
        assert re.fullmatch(r"tcp:127\.0\.0\.1:\d+", addr) and not addr.endswith(":0")
        assert admin_get(lab, "/healthz", admin=addr)[0] == 200
        url = "http://" + addr[len("tcp:"):]
        code, out, err = ctl(lab, "--json", "vms", admin=url)
        assert code == 0, err
        assert [vm["name"] for vm in json.loads(out)] == ["vm1"]


# -- the JSON API ---------------------------------------------------------------

def test_v1_vms_lists_every_vm_with_cid_state_and_transport(lab):
    status, vms = admin_json(lab, "/v1/vms")
    assert status == 200
    by_name = {vm["name"]: vm for vm in vms}
    assert sorted(by_name) == ["vm1", "vm2", "vm3", "vm4"]
    for spec in VMS:
        vm = by_name[spec.name]
        assert vm["uuid"] == spec.uuid
        assert vm["cid"] == spec.cid
        assert vm["state"] == ("running" if spec.running else "shut_off")
        assert vm["transport"] == "unix:%s/%s.sock" % (lab.dir, spec.name)


def test_v1_resolve_answers_found_and_not_found(lab):
    status, body = admin_json(lab, "/v1/resolve?target=vm2")
    assert status == 200
    assert body["result"] == "found" and body["vm"]["uuid"] == VMS[1].uuid
    assert body["routable"] is True
    status, body = admin_json(lab, "/v1/resolve?target=" + VMS[0].uuid.upper())
    assert status == 200 and body["vm"]["name"] == "vm1"
    status, body = admin_json(lab, "/v1/resolve?target=vm3")
    assert status == 200 and body["routable"] is False and body["reason"] == "vm vm3 is shut_off"
    status, body = admin_json(lab, "/v1/resolve?target=nosuch")
    assert status == 404 and body["result"] == "not_found"


def test_v1_check_opens_the_channel_through_guestd(lab):
    status, body = admin_json(lab, "/v1/check?target=vm1&port=5986")
    assert status == 200, body
    assert body["ok"] is True and body["port"] == 5986
    assert [h["hop"] for h in body["hops"]] == ["directory", "transport", "channel"]
    assert all(h["ok"] for h in body["hops"])
    # guestd logged the same channel under the check's request id.
    lab.guestds["vm1"].wait_for(r"\breq=%s\b" % body["request_id"])


def test_v1_check_reports_the_status_a_client_would_get(lab):
    status, body = admin_json(lab, "/v1/check?target=vm1&port=22")
    assert status == 403 and "port-not-allowed" in body["reason"]
    status, body = admin_json(lab, "/v1/check?target=vm4&port=5986")
    assert status == 502 and body["hops"][-1]["hop"] == "channel"
    status, body = admin_json(lab, "/v1/check?target=vm3&port=5986")
    assert status == 503 and len(body["hops"]) == 1
    status, body = admin_json(lab, "/v1/check?target=nosuch&port=5986")
    assert status == 404


# -- vmgatectl --------------------------------------------------------------------

def test_vmgatectl_vms_prints_an_aligned_table(lab):
    code, out, err = ctl(lab, "vms")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "UUID", "CID", "STATE", "TRANSPORT"]
    columns = [lines[0].index(h) for h in ("UUID", "CID", "STATE", "TRANSPORT")]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert sorted(rows) == ["vm1", "vm2", "vm3", "vm4"]
    for spec in VMS:
        line = rows[spec.name]
        assert [line[c:].split()[0] for c in columns] == [
            spec.uuid, str(spec.cid), "running" if spec.running else "shut_off",
            "unix:%s/%s.sock" % (lab.dir, spec.name)]


def test_vmgatectl_json_prints_the_api_json(lab):
    code, out, err = ctl(lab, "--json", "vms")
    assert code == 0, err
    assert json.loads(out) == admin_json(lab, "/v1/vms")[1]
    code, out, _ = ctl(lab, "--json", "resolve", "nosuch")
    assert code == 1 and json.loads(out)["result"] == "not_found"
    code, out, _ = ctl(lab, "--json", "check", "vm2", "8114")
    body = json.loads(out)
    assert code == 0 and body["ok"] is True and body["port"] == 8114


def test_vmgatectl_resolve(lab):
    code, out, _ = ctl(lab, "resolve", "vm1")
    assert code == 0
    assert out.startswith("vm1: found\n")
    assert re.search(r"^  uuid +%s$" % VMS[0].uuid, out, re.M)
    assert re.search(r"^  routable +yes$", out, re.M)
    code, out, _ = ctl(lab, "resolve", "vm3")
    assert code == 0 and re.search(r"^  routable +no \(vm vm3 is shut_off\)$", out, re.M)
    code, out, _ = ctl(lab, "resolve", "nosuch")
    assert code == 1 and out.startswith("nosuch: not found")


def test_vmgatectl_check(lab):
    code, out, _ = ctl(lab, "check", "vm1")
    assert code == 0, out
    lines = out.splitlines()
    assert re.match(r"check vm1 port 5986: ok in [\d.]+ ms \(request [0-9a-f]{8}\)$", lines[0])
    assert [l.split()[:2] for l in lines[1:]] == [
        ["directory", "ok"], ["transport", "ok"], ["channel", "ok"]]
    assert "guestd answered 200 OK" in lines[3]

    code, out, _ = ctl(lab, "check", "vm1", "22")
    assert code == 1 and "FAILED 403" in out.splitlines()[0]
    assert out.splitlines()[-1].split()[:2] == ["channel", "FAIL"]
    code, out, _ = ctl(lab, "check", "vm4")
    assert code == 1 and "FAILED 502" in out
    code, out, _ = ctl(lab, "check", "vm3")
    assert code == 1 and "FAILED 503 vm vm3 is shut_off" in out


ACL_RULES = [
    {"name": "ansible-vm", "action": "allow", "identities": ["token:ansible", "cidr:10.1.0.0/16"],
     "vms": ["vm*"], "ports": [5986]},
    {"name": "no-vm2", "action": "deny", "identities": ["token:*"], "vms": ["vm2"]},
]


def test_vmgatectl_check_as_an_identity_names_the_rule_that_decided():
    with Lab([VM("vm1"), VM("vm2")], acl=ACL_RULES) as lab:
        lab.hostd.wait_for(r"event=ready\b")
        code, out, _ = ctl(lab, "check", "--as", "token:ansible", "vm1")
        assert code == 0, out
        lines = out.splitlines()
        assert lines[1].strip() == 'token:ansible acl: allow (rule "ansible-vm")'
        assert [l.split()[:2] for l in lines[2:]] == [
            ["directory", "ok"], ["authorize", "ok"], ["transport", "ok"], ["channel", "ok"]]

        code, out, _ = ctl(lab, "check", "--as=token:ansible", "vm2")
        assert code == 1
        lines = out.splitlines()
        assert "FAILED 403 token:ansible may not reach 'vm2' on port 5986" in lines[0]
        assert "no-vm2" not in lines[0]  # the answer a client gets names no rule
        assert lines[1].strip() == 'token:ansible acl: deny (rule "no-vm2")'

        # An address outside every rule: refused by default, and for a VM
        # that does not exist exactly as for one that does.
        for target in ("vm1", "nosuch"):
            code, out, _ = ctl(lab, "check", "--as", "source:192.0.2.7", target)
            assert code == 1
            assert ("FAILED 403 source:192.0.2.7 may not reach '%s' on port 5986" % target
                    in out.splitlines()[0])
            assert 'acl: deny (rule "default")' in out

        code, out, _ = ctl(lab, "--json", "check", "--as", "source:10.1.2.3", "vm1")
        body = json.loads(out)
        assert code == 0 and body["identity"] == "source:10.1.2.3"
        assert body["acl"] == {"allowed": True, "rule": "ansible-vm"}

        # The operator, without --as, is trusted: no rule applies.
        code, out, _ = ctl(lab, "check", "vm2")
        assert code == 0 and "acl:" not in out

        code, _, err = ctl(lab, "check", "--as", "user:bob", "vm1")
        assert code == 2 and "user:bob" in err
        code, _, err = ctl(lab, "resolve", "--as", "token:ansible", "vm1")
        assert code == 2 and "--as is an option of check" in err

        # Each check is logged with the identity and the rule.
        line = next(l for l in lab.hostd.lines()
                    if "event=admin_check" in l and "identity=token:ansible" in l and
                    "target=vm2" in l)
        assert parse_kv(line)["acl"] == "deny" and parse_kv(line)["rule"] == "no-vm2"


def test_vmgatectl_errors_name_the_admin_url_and_use_exit_code_2(lab):
    # A port nothing listens on: bound, never listening, and kept bound while
    # vmgatectl runs, so no listener of a test running beside this one can be
    # given the same port (connecting to it is refused all the same).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = "http://127.0.0.1:%d" % s.getsockname()[1]
        code, out, err = ctl(lab, "vms", admin=url)
    assert code == 2 and out == ""
    assert url in err and "[admin]" in err
    code, _, err = ctl(lab, "check", "vm1", "notaport")
    assert code == 2 and "notaport" in err
    assert ctl(lab, "frobnicate")[0] == 2
    assert ctl(lab, "resolve")[0] == 2
    r = subprocess.run([VMGATECTL, "--version"], stdout=subprocess.PIPE, text=True, timeout=10)
    assert r.returncode == 0 and re.fullmatch(r"vmgatectl \d+\.\d+\.\d+\n", r.stdout)


# -- /metrics ------------------------------------------------------------------------

def test_metrics_count_requests_bytes_tunnels_and_channel_connects(lab):
    before = metrics(lab)
    for _ in range(3):
        assert lab.curl("/hello", "-H", "X-VM-Id: vm1").status == 200
    assert lab.curl("/hello", "-H", "X-VM-Id: nosuch").status == 404
    r = lab.curl("http://vm2:5986/hello", "-p", "-x", "http://127.0.0.1:%d" % lab.port)
    assert r.status == 200 and r.text == "hello from vm2\n"

    def counted():
        after = metrics(lab)
        delta = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)
        ok = (delta("vmgate_requests_total", form="header", status=200) == 3 and
              delta("vmgate_requests_total", form="header", status=404) == 1 and
              delta("vmgate_requests_total", form="connect", status=200) == 1 and
              value(after, "vmgate_tunnels_open") == 0)
        return (after, delta) if ok else None

    after, delta = wait_until(counted, 10, "hostd to count the requests")
    # The three header requests went over channels, opened for them or reused
    # from the pool; the tunnel always opens its own; the 404 used none.
    assert (delta("vmgate_channel_requests_total", channel="new") +
            delta("vmgate_channel_requests_total", channel="reused")) == 3
    assert delta("vmgate_channel_connect_duration_seconds_count", result="ok") >= 1
    assert delta("vmgate_channel_connect_duration_seconds_bucket", result="ok", le="+Inf") >= 1
    assert "vmgate_channel_pool_idle" in after
    assert delta("vmgate_client_sent_bytes_total") > 4 * len("hello from vm1\n")
    assert delta("vmgate_client_received_bytes_total") > 0  # the tunnel carried a request
    assert value(after, "vmgate_directory_vms") == len(VMS)
    assert value(after, "vmgate_libvirt_syncs_total") >= 1
    assert value(after, "vmgate_libvirt_connected") == 1
    assert "vmgate_libvirt_events_total" in after
    assert "vmgate_libvirt_reconnects_total" in after
    # When the kernel says hostd started (boot time has whole seconds only),
    # fixed from scrape to scrape.
    start = value(after, "process_start_time_seconds")
    assert process_start_epoch(lab.hostd.pid) - 1 <= start <= time.time()
    assert value(metrics(lab), "process_start_time_seconds") == start


def test_metrics_pass_promtool_check(lab):
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool not installed (Debian package prometheus)")
    lab.curl("/hello", "-H", "X-VM-Id: vm1")
    text = admin_get(lab, "/metrics")[2]
    r = subprocess.run([promtool, "check", "metrics"], input=text, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout
