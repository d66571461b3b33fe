"""Traffic a guest starts (docs/architecture.md, "Guest-originated traffic"):
a guest app reaches a host-side service through guestd's loopback proxy or
its CLI, the service learns the calling VM from hostd alone (Forwarded and
X-VM-Uuid, whatever the guest wrote), names outside the allowlist are
refused, and VM-to-VM traffic passes only where an ACL rule names the pair,
until a reload removes the rule.

The unix stand-in: hostd makes one socket per VM (Lab(inbound=True)), and
the socket a connection arrives on is its VM; guestd's [outbound] hostd
points at its VM's socket."""

import hashlib
import json
import os
import re
import signal
import socket
import subprocess

import pytest

from test_admin_api import ctl
from vmgate_lab import VM, Lab, parse_kv, toml_text, wait_until

ACL_VM1_TO_VM2 = {"name": "vm1-to-vm2", "action": "allow", "identities": ["vm:vm1"],
                  "vms": ["vm2"], "ports": [5986]}


@pytest.fixture(scope="module")
def lab():
    with Lab([VM("vm1", outbound=True), VM("vm2", outbound=True)], inbound=True,
             host_services=["monitor"], acl=[ACL_VM1_TO_VM2]) as lab:
        yield lab


def via_proxy(lab, vm, url, *args):
    """curl -x guestd's outbound proxy of `vm`."""
    return lab.curl(url, "-x", "http://127.0.0.1:%d" % lab.outbound_port(vm), *args)


def echoed_headers(text):
    """The agent's /echo-headers answer as a list of (lower-case name, value)."""
    out = []
    for line in text.splitlines()[1:]:
        name, sep, value = line.partition(":")
        if sep:
            out.append((name.strip().lower(), value.strip()))
    return out


def guest_log(lab, event, **match):
    """hostd's `event` lines whose fields match."""
    return [f for f in (parse_kv(l) for l in lab.hostd.lines() if "event=%s " % event in l)
            if all(f.get(k) == str(v) for k, v in match.items())]


def test_a_guest_app_reaches_a_host_service_through_the_outbound_proxy(lab):
    r = via_proxy(lab, "vm1", "http://monitor.host/hello")
    assert r.status == 200, r
    assert r.body == b"hello from host-monitor\n"


def test_the_service_learns_the_calling_vm_from_forwarded_and_its_uuid(lab):
    r = via_proxy(lab, "vm2", "http://monitor.host/echo-headers")
    assert r.status == 200, r
    headers = echoed_headers(r.text)
    assert ("forwarded", 'for="vm:vm2"') in headers
    assert ("x-vm-uuid", lab.vms[1].uuid) in headers
    # Rewritten towards origin form: the service sees its own path.
    assert r.text.splitlines()[0].startswith("GET /echo-headers ")


def test_what_the_guest_says_of_who_it_is_is_stripped(lab):
    r = via_proxy(lab, "vm1", "http://monitor.host/echo-headers",
                  "-H", 'Forwarded: for="vm:vm2"', "-H", "X-VM-Uuid: " + lab.vms[1].uuid,
                  "-H", "X-Forwarded-For: 203.0.113.9")
    assert r.status == 200, r
    headers = echoed_headers(r.text)
    assert [v for n, v in headers if n == "forwarded"] == ['for="vm:vm1"']
    assert [v for n, v in headers if n == "x-vm-uuid"] == [lab.vms[0].uuid]
    assert "203.0.113.9" not in r.text


def test_a_body_reaches_the_service_whole(lab):
    body = os.urandom(300_000)
    r = via_proxy(lab, "vm1", "http://monitor.host/sha256", "--data-binary", "@-")
    assert r.status == 200
    r = lab.curl("http://monitor.host/sha256", "-x",
                 "http://127.0.0.1:%d" % lab.outbound_port("vm1"), "--data-binary", "@-",
                 input=body)
    assert r.text.split() == [hashlib.sha256(body).hexdigest(), str(len(body))]


def test_a_chunked_upload_is_reframed_and_nothing_is_smuggled_behind_it(lab):
    """A second request written behind the first on the same connection
    never reaches the service (it would do so without hostd's headers)."""
    port = lab.outbound_port("vm1")
    smuggled = (b"GET /echo-headers HTTP/1.1\r\nHost: x\r\n"
                b"Forwarded: for=\"vm:vm2\"\r\n\r\n")
    first = (b"POST http://monitor.host/sha256 HTTP/1.1\r\nHost: monitor.host\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(first + smuggled)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    answer = b"".join(chunks)
    assert answer.count(b"HTTP/1.1 ") == 1, answer
    assert hashlib.sha256(b"hello").hexdigest().encode() in answer


def test_a_connect_tunnel_reaches_the_host_service(lab):
    r = lab.curl("http://monitor.host/hello", "-p", "-x",
                 "http://127.0.0.1:%d" % lab.outbound_port("vm1"))
    assert r.status == 200 and r.body == b"hello from host-monitor\n", r


def test_the_cli_sends_to_a_host_service_and_prints_the_response(lab, tmp_path):
    r = lab.guestd_command("vm1", "send", "host:monitor", "--path", "/echo-headers")
    assert r.returncode == 0, r.stderr
    assert ("forwarded", 'for="vm:vm1"') in echoed_headers(r.stdout.decode())
    data = tmp_path / "report.bin"
    data.write_bytes(b"x" * 10_000)
    r = lab.guestd_command("vm1", "send", "host:monitor", "--path", "/sha256",
                           "--data", "@" + str(data))
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split() == [hashlib.sha256(b"x" * 10_000).hexdigest(), "10000"]


def test_an_unknown_service_is_refused_saying_so(lab):
    r = via_proxy(lab, "vm1", "http://nosuch.host/hello")
    assert r.status == 404, r
    assert "no host service 'nosuch'" in r.text
    r = lab.guestd_command("vm1", "send", "host:nosuch")
    assert r.returncode == 1
    assert b"no host service 'nosuch'" in r.stderr
    assert guest_log(lab, "guest_refused", vm="vm1", status=404)


def reload(lab):
    """SIGHUP with the lab's config as it is now, once hostd says it took it."""
    lab.write_hostd_config()
    start = len(lab.hostd.lines())
    lab.hostd.popen.send_signal(signal.SIGHUP)
    lab.hostd.wait_for(r"event=config_reloaded", start=start)


def test_a_host_service_for_some_vms_is_unknown_to_the_others(lab):
    # [host_services.monitor] with vms: only those VMs may reach it, and to
    # any other it is a service hostd does not offer (as a VM it may not
    # reach is one that does not exist). SIGHUP brings it in and takes it out.
    address = "tcp:127.0.0.1:%d" % lab.host_service_ports["monitor"]
    lab.hostd_overrides["host_services"] = {"monitor": {"address": address, "vms": ["vm2"]}}
    reload(lab)
    try:
        r = via_proxy(lab, "vm1", "http://monitor.host/hello")
        assert r.status == 404, r
        assert "hostd offers vm vm1 no host service 'monitor'" in r.text
        denied = guest_log(lab, "guest_acl", vm="vm1", target="host:monitor", decision="deny",
                           rule="host_services.monitor")
        assert denied and "found" not in denied[-1]  # it exists, and was not for vm1
        r = lab.guestd_command("vm1", "send", "host:monitor")
        assert r.returncode == 1 and b"no host service 'monitor'" in r.stderr
        r = via_proxy(lab, "vm2", "http://monitor.host/hello")
        assert r.status == 200 and r.body == b"hello from host-monitor\n", r
        assert guest_log(lab, "guest_acl", vm="vm2", target="host:monitor", decision="allow",
                         rule="host_services.monitor")
    finally:
        del lab.hostd_overrides["host_services"]
        reload(lab)
    assert via_proxy(lab, "vm1", "http://monitor.host/hello").status == 200


def test_vmgatectl_check_answers_for_a_host_service_as_the_vm_would_be_answered(lab):
    # check host:NAME --as vm:VM runs the VM's own path (decision, connect):
    # allowed and reachable, listed for other VMs only (404, as to the VM),
    # listed but refusing connections (502), and a VM hostd does not know.
    address = "tcp:127.0.0.1:%d" % lab.host_service_ports["monitor"]
    lab.hostd_overrides["host_services"] = {
        "monitor": {"address": address, "vms": ["vm2"]},
        "closed": "tcp:127.0.0.1:1"}
    reload(lab)
    try:
        code, out, err = ctl(lab, "--json", "check", "--as", "vm:vm2", "host:monitor")
        body = json.loads(out)
        assert code == 0 and body["ok"] and body["status"] == 200, out
        assert body["acl"] == {"allowed": True, "rule": "host_services.monitor"}
        assert [h["hop"] for h in body["hops"]] == ["caller", "authorize", "service"]
        assert body["hops"][2]["address"] == address

        code, out, err = ctl(lab, "check", "--as", "vm:vm1", "host:monitor")
        assert code == 1, (out, err)
        assert out.startswith("check host:monitor: FAILED 404 hostd offers vm vm1 no host "
                              "service 'monitor'"), out
        assert "vm:vm1 acl: deny (rule \"host_services.monitor\")" in out
        request = re.search(r"\(request (\S+)\)", out).group(1)
        assert guest_log(lab, "guest_acl", req=request, vm="vm1", decision="deny")
        code, out, err = ctl(lab, "--json", "check", "--as", "vm:vm1", "host:monitor")
        hops = json.loads(out)["hops"]
        assert [(h["hop"], h["ok"]) for h in hops] == [("caller", True), ("authorize", False)]

        code, out, err = ctl(lab, "--json", "check", "--as", "vm:vm1", "host:closed")
        body = json.loads(out)
        assert code == 1 and body["status"] == 502, out
        assert body["hops"][-1]["hop"] == "service" and not body["hops"][-1]["ok"]
        assert "host service closed (tcp:127.0.0.1:1) is unreachable" in body["reason"]

        code, out, err = ctl(lab, "--json", "check", "--as", "vm:nosuchvm", "host:monitor")
        body = json.loads(out)
        assert code == 1 and body["status"] == 404 and body["reason"] == "no vm is called nosuchvm"
        assert [h["hop"] for h in body["hops"]] == ["caller"]

        code, out, err = ctl(lab, "check", "host:monitor")
        assert code == 2 and "as=vm:NAME" in err, (out, err)
    finally:
        del lab.hostd_overrides["host_services"]
        reload(lab)


def test_a_vm_reaches_another_where_an_acl_rule_names_the_pair(lab):
    r = via_proxy(lab, "vm1", "http://vm2:5986/echo-headers")
    assert r.status == 200, r
    assert r.text.splitlines()[0].startswith("GET /echo-headers ")
    headers = echoed_headers(r.text)
    assert ("forwarded", 'for="vm:vm1"') in headers
    assert ("x-vm-uuid", lab.vms[0].uuid) in headers
    assert guest_log(lab, "guest_acl", vm="vm1", target="vm2", port=5986, decision="allow",
                     rule="vm1-to-vm2")
    r = lab.guestd_command("vm1", "send", "vm2", "--port", "5986", "--path", "/hello")
    assert r.returncode == 0 and r.stdout == b"hello from vm2\n", r.stderr


def test_vm_to_vm_is_denied_by_default(lab):
    # The other way round, and another port: no rule names them.
    r = via_proxy(lab, "vm2", "http://vm1:5986/hello")
    assert r.status == 403, r
    assert "vm vm2 may not reach vm1 on port 5986 (rule default)" in r.text
    r = via_proxy(lab, "vm1", "http://vm2:8114/hello")
    assert r.status == 403, r
    assert guest_log(lab, "guest_acl", vm="vm1", target="vm2", port=8114, decision="deny",
                     rule="default")
    # A VM that does not exist is refused the same way: nothing is learnt.
    r = via_proxy(lab, "vm2", "http://nosuchvm:5986/hello")
    assert r.status == 403, r
    r = lab.guestd_command("vm2", "send", "vm1", "--port", "5986")
    assert r.returncode == 1 and b"may not reach vm1" in r.stderr


def ndjson(out):
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


def test_a_guest_send_to_a_group_reaches_each_vm_an_acl_rule_lets_it():
    """SEND group:web: one part per VM the caller may reach, in the fan-out's
    format; a VM of the group no rule lets it reach is not revealed, only
    logged; one it names itself is a 403 part, and the CLI exits 1."""
    rule = {"name": "vm1-to-web", "action": "allow", "identities": ["vm:vm1"],
            "vms": ["vm2", "vm3"], "ports": [5986]}
    with Lab([VM("vm1", outbound=True), VM("vm2", outbound=True), VM("vm3"), VM("vm4")], inbound=True,
             acl=[rule], hostd={"groups": {"web": ["vm2", "vm3", "vm4"]}}) as lab:
        r = lab.guestd_command("vm1", "send", "group:web", "--port", "5986", "--path", "/hello")
        assert r.returncode == 0, r.stderr
        out = r.stdout.decode()
        assert "hello from vm2" in out and "hello from vm3" in out, out
        assert "vm4" not in out, out
        assert guest_log(lab, "guest_acl", vm="vm1", target="vm4", via="group:web",
                         decision="deny", rule="default")
        assert guest_log(lab, "guest_acl", vm="vm1", target="vm2", via="group:web",
                         decision="allow", rule="vm1-to-web")

        # Each agent learns the caller from hostd alone, as for one VM.
        r = lab.guestd_command("vm1", "send", "group:web", "--port", "5986",
                               "--path", "/echo-headers",
                               "--header", "Accept: application/x-ndjson",
                               "--header", "Forwarded: for=\"vm:vm4\"",
                               "--header", "X-VM-Uuid: " + lab.vms[3].uuid,
                               "--header", "X-Forwarded-For: 203.0.113.9")
        assert r.returncode == 0, r.stderr
        lines = ndjson(r.stdout)
        parts, summary = lines[:-1], lines[-1]
        assert sorted(p["vm"] for p in parts) == ["vm2", "vm3"]
        assert summary["summary"] and summary["vms"] == 2 and summary["failed"] == 0
        for part in parts:
            headers = echoed_headers(part["response"]["body"])
            assert [v for n, v in headers if n == "forwarded"] == ['for="vm:vm1"'], headers
            assert [v for n, v in headers if n == "x-vm-uuid"] == [lab.vms[0].uuid], headers
            assert not [v for n, v in headers if n == "x-forwarded-for"], headers
            assert ("host", "localhost") in headers

        # A VM the caller names but may not reach: a 403 part, and exit 1.
        r = lab.guestd_command("vm1", "send", "vm2,vm4", "--port", "5986", "--path", "/hello",
                               "--header", "Accept: application/x-ndjson")
        assert r.returncode == 1, r.stderr
        assert b"1 of 2 VMs did not answer below 400" in r.stderr, r.stderr
        by_vm = {p["vm"]: p for p in ndjson(r.stdout)[:-1]}
        assert by_vm["vm2"]["status"] == 200
        assert by_vm["vm4"]["status"] == 403 and "uuid" not in by_vm["vm4"] or \
            not by_vm["vm4"].get("uuid")

        # No rule lets vm2 reach any of them: the whole SEND is refused, worded
        # from what it wrote; a tunnel to many VMs is refused too.
        r = lab.guestd_command("vm2", "send", "group:web", "--port", "5986")
        assert r.returncode == 1
        assert b"refused (403 not-allowed): vm vm2 may not reach 'group:web' on port 5986" \
            in r.stderr, r.stderr
        assert guest_log(lab, "guest_refused", vm="vm2", status=403)


def test_a_rule_removed_by_sighup_denies_the_next_request(lab):
    assert via_proxy(lab, "vm1", "http://vm2:5986/hello").status == 200
    lab.acl_rules = []
    reload(lab)
    r = via_proxy(lab, "vm1", "http://vm2:5986/hello")
    assert r.status == 403, r
    assert guest_log(lab, "guest_acl", vm="vm1", target="vm2", port=5986, decision="deny",
                     rule="default")
    lab.acl_rules = [ACL_VM1_TO_VM2]
    reload(lab)
    assert via_proxy(lab, "vm1", "http://vm2:5986/hello").status == 200


def test_the_outbound_proxy_refuses_what_is_not_a_proxy_request(lab):
    port = lab.outbound_port("vm1")
    r = lab.curl("http://127.0.0.1:%d/hello" % port)
    assert r.status == 400
    assert "absolute-form" in r.text


def test_an_outbound_listener_off_loopback_is_refused_at_load(tmp_path):
    from vmgate_lab import GUESTD
    config = tmp_path / "guestd.toml"
    config.write_text('listen = "unix:%s"\n\n[outbound]\nlisten = "tcp:0.0.0.0:5580"\n'
                      % (tmp_path / "g.sock"))
    r = subprocess.run([GUESTD, "--config", str(config), "--check-config"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert r.returncode == 1
    assert re.search(r"guestd.toml:4: outbound.listen: tcp:0.0.0.0:5580 is not a loopback", r.stderr), r.stderr


def test_a_body_over_max_request_body_is_refused_413(lab):
    lab.hostd_overrides.setdefault("limits", {})["max_request_body"] = 1000
    reload(lab)
    try:
        r = via_proxy(lab, "vm1", "http://monitor.host/sha256", "--data-binary", "x" * 2000)
        assert r.status == 413, r
        assert "limits.max_request_body" in r.text
        r = via_proxy(lab, "vm1", "http://monitor.host/sha256", "--data-binary", "x" * 1000)
        assert r.status == 200, r
    finally:
        del lab.hostd_overrides["limits"]["max_request_body"]
        reload(lab)


def test_an_app_request_in_progress_finishes_when_guestd_is_asked_to_stop():
    """SIGTERM to guestd: its outbound proxy stops accepting, and an app's
    request under way finishes within limits.shutdown_grace_ms."""
    import threading
    with Lab([VM("vm1", outbound=True)], inbound=True, host_services=["monitor"]) as lab:
        result = {}

        def ask():
            result["r"] = via_proxy(lab, "vm1", "http://monitor.host/slow?ms=1000")

        asker = threading.Thread(target=ask)
        asker.start()
        lab.hostd.wait_for(r"event=guest_send ")
        guestd = lab.guestds["vm1"]
        guestd.popen.send_signal(signal.SIGTERM)
        asker.join(30)
        r = result["r"]
        assert r.status == 200 and r.body.endswith(b"slow\n"), r
        assert guestd.popen.wait(30) == 0
