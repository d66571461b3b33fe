"""Cluster mode: hostds sharing a directory in a real etcd (started here, on
loopback ports), each with its own libvirt test-driver node, agents and
guestds, forwarding to one another over mutual TLS.

Each test names the behaviour it proves; each was checked to fail with the
behaviour taken out of hostd.
"""

import email.parser
import email.policy
import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest
import requests

from cluster_lab import Cluster, Etcd
from vmgate_lab import VM, SessionLibvirtd, domain_xml, metric, wait_until


def peer_requests(host, **match):
    lines = [l for l in host.lab.hostd.lines() if "event=peer_request" in l]
    return [l for l in lines if all("%s=%s" % kv in l for kv in match.items())]


def test_a_request_for_a_vm_on_another_host_is_delivered_there_once():
    with Etcd() as etcd, Cluster(etcd) as cluster:
        kvm1 = cluster.host("kvm1", [VM("vm1")])
        kvm2 = cluster.host("kvm2", [VM("vm2")])
        cluster.converged()
        # Header form, entering at the host that does not run the VM.
        r = kvm1.curl("/hello", "-H", "X-VM-Id: vm2")
        assert r.status == 200, r
        assert r.body == b"hello from vm2\n"
        # Absolute form (a client told HTTP_PROXY).
        r = kvm1.curl("http://vm2:5986/hello", "--proxy", "http://127.0.0.1:%d" % kvm1.port)
        assert r.status == 200, r
        assert r.body == b"hello from vm2\n"
        # The receiver delivered it, knowing the first host and the client.
        wait_until(lambda: peer_requests(kvm2, status="200", **{"from": "kvm1"}), 5,
                   "kvm2's record of the forwarded request")
        line = peer_requests(kvm2, status="200")[0]
        assert "client=127.0.0.1:" in line
        assert metric(kvm1.lab, "vmgate_peer_messages_total", direction="sent") >= 1
        assert metric(kvm2.lab, "vmgate_peer_messages_total", direction="received") >= 1
        # Local VMs are not forwarded anywhere.
        sent = metric(kvm2.lab, "vmgate_peer_messages_total", direction="sent")
        r = kvm2.curl("/hello", "-H", "X-VM-Id: vm2")
        assert r.status == 200 and r.body == b"hello from vm2\n"
        assert metric(kvm2.lab, "vmgate_peer_messages_total", direction="sent") == sent


def test_a_peer_that_is_not_a_cluster_host_or_names_a_vm_by_name_is_refused():
    with Etcd() as etcd, Cluster(etcd) as cluster:
        kvm1 = cluster.host("kvm1", [VM("vm1")])
        cluster.host("kvm2", [VM("vm2")])
        cluster.converged()
        # A certificate from the cluster CA for a host with no record.
        stranger = cluster.pki.peer(cluster.ca, "kvm9")
        uuid = kvm1.lab.vms[0].uuid
        import subprocess

        def ask(cert, target):
            request = ("CONNECT %s HTTP/1.1\r\nHost: %s\r\nVmgate-Host: kvm1\r\n\r\n"
                       % (target, target))
            r = subprocess.run(
                ["openssl", "s_client", "-quiet", "-connect", "127.0.0.1:%d" % kvm1.peer_port,
                 "-cert", cert.cert, "-key", cert.key, "-CAfile", cluster.ca.cert,
                 "-servername", "kvm1"], input=request.encode(), capture_output=True, timeout=20)
            return r.stdout.decode(errors="replace")

        assert " 403 " in ask(stranger, "%s:5986" % uuid).splitlines()[0]
        kvm2_cert = cluster.pki.peer(cluster.ca, "kvm2")
        assert " 400 " in ask(kvm2_cert, "vm1:5986").splitlines()[0]
        # A VM this host does not run is never forwarded on.
        vm2_uuid = cluster.hosts["kvm2"].lab.vms[0].uuid
        first = ask(kvm2_cert, "%s:5986" % vm2_uuid).splitlines()[0]
        assert " 404 " in first
        assert metric(kvm1.lab, "vmgate_peer_messages_total", direction="sent") == 0


def test_a_killed_host_gets_a_prompt_502_naming_it_then_its_vms_are_gone_after_the_ttl():
    with Etcd() as etcd, Cluster(etcd, lease_ttl_s=3) as cluster:
        kvm1 = cluster.host("kvm1", [VM("vm1")])
        kvm2 = cluster.host("kvm2", [VM("vm2")])
        cluster.converged()
        kvm2.lab.hostd.kill()
        started = time.monotonic()
        r = kvm1.curl("/hello", "-H", "X-VM-Id: vm2", timeout=10)
        assert time.monotonic() - started < 2.0
        assert r.status == 502, r
        assert "kvm2" in r.text
        # The lease expires: vm2 is gone from kvm1's directory.
        wait_until(lambda: not kvm1.knows("vm2"), 3 + 5, "vm2 to vanish with kvm2's lease")
        r = kvm1.curl("/hello", "-H", "X-VM-Id: vm2")
        assert r.status == 404, r


def test_routing_goes_on_from_the_cache_while_etcd_is_down_and_readyz_says_degraded():
    with Etcd() as etcd, Cluster(etcd) as cluster:
        kvm1 = cluster.host("kvm1", [VM("vm1")])
        cluster.host("kvm2", [VM("vm2")])
        cluster.converged()
        assert kvm1.admin("/readyz") == (200, "ready")
        etcd.kill_member(0)
        kvm1.lab.hostd.wait_for(r"event=etcd_unreachable")
        status, body = kvm1.admin("/readyz")
        assert status == 200 and body.startswith("degraded: etcd unreachable"), body
        r = kvm1.curl("/hello", "-H", "X-VM-Id: vm2")
        assert r.status == 200 and r.body == b"hello from vm2\n", r
        etcd.start_member(0)
        wait_until(lambda: kvm1.admin("/readyz") == (200, "ready"), 10,
                   "kvm1 ready again once etcd is back")
        r = kvm1.curl("/hello", "-H", "X-VM-Id: vm2")
        assert r.status == 200, r


def test_a_watch_behind_a_compaction_reads_everything_again_and_converges():
    with Etcd() as etcd, Cluster(etcd) as cluster:
        kvm1 = cluster.host("kvm1", [VM("vm1")])
        kvm2 = cluster.host("kvm2", [VM("vm2")])
        cluster.converged()
        # kvm1's watch falls behind: stopped while etcd restarts (which
        # breaks the watch), kvm3 arrives, kvm2 leaves, and etcd compacts away
        # the history in between. Resumed, kvm1 watches again from after the
        # last change it saw, finds that compacted, and reads everything again.
        kvm1.lab.hostd.popen.send_signal(signal.SIGSTOP)
        try:
            etcd.kill_member(0)
            etcd.start_member(0)
            kvm3 = cluster.host("kvm3", [VM("vm3")])
            kvm2.lab.hostd.stop()
            etcd.ctl("del", "--prefix", "/vmgate/v1/vms/" + kvm2.lab.vms[0].uuid)
            etcd.ctl("compact", str(etcd.revision()))
        finally:
            kvm1.lab.hostd.popen.send_signal(signal.SIGCONT)
        kvm1.lab.hostd.wait_for(r"event=etcd_watch_compacted")
        wait_until(lambda: kvm1.sees("vm3", "kvm3") and not kvm1.knows("vm2"), 10,
                   "kvm1 to converge after the compaction")
        r = kvm1.curl("/hello", "-H", "X-VM-Id: vm3")
        assert r.status == 200 and r.body == b"hello from vm3\n", r
        assert metric(kvm1.lab, "vmgate_cluster_watch_compactions_total") >= 1
        del kvm3


def test_a_three_member_etcd_with_one_member_killed_keeps_working():
    with Etcd(members=3) as etcd, Cluster(etcd) as cluster:
        kvm1 = cluster.host("kvm1", [VM("vm1")])
        cluster.host("kvm2", [VM("vm2")])
        cluster.converged()
        etcd.kill_member(0)
        # A host that arrives now is seen by kvm1 through the other members.
        cluster.host("kvm3", [VM("vm3")])
        wait_until(lambda: kvm1.sees("vm3", "kvm3"), 15, "kvm1 to see vm3 with one member down")
        r = kvm1.curl("/hello", "-H", "X-VM-Id: vm3")
        assert r.status == 200 and r.body == b"hello from vm3\n", r
        status, body = kvm1.admin("/readyz")
        assert status == 200 and body == "ready", body


def test_a_lease_that_expires_while_the_host_lives_is_replaced_and_everything_republished():
    with Etcd() as etcd, Cluster(etcd) as cluster:
        kvm1 = cluster.host("kvm1", [VM("vm1")])
        kvm2 = cluster.host("kvm2", [VM("vm2")])
        cluster.converged()
        # As etcd does when a lease expires: the lease and its keys go.
        leases = etcd.ctl("lease", "list").split()
        for lease in leases:
            if all(c in "0123456789abcdef" for c in lease) and len(lease) > 8:
                etcd.ctl("lease", "revoke", lease)
        kvm2.lab.hostd.wait_for(r"event=etcd_lease_lost")
        wait_until(lambda: kvm1.sees("vm2", "kvm2"), 10, "kvm2's VMs republished")
        r = kvm1.curl("/hello", "-H", "X-VM-Id: vm2")
        assert r.status == 200, r


def test_a_vm_undefined_on_one_host_and_started_on_another_is_routed_there_within_a_second():
    if os.geteuid() != 0:
        pytest.skip("SessionLibvirtd needs root")
    vm_a = VM("vm9")
    vm_b = VM("vm9", uuid=vm_a.uuid)
    with SessionLibvirtd() as lv1, SessionLibvirtd() as lv2, Etcd() as etcd, \
            Cluster(etcd) as cluster:
        for lv in (lv1, lv2):
            lv.virsh("destroy", "test", check=False)
            lv.virsh("undefine", "test", check=False)
        kvm1 = cluster.host("kvm1", [vm_a], libvirt_uri=lv1.uri)
        kvm2 = cluster.host("kvm2", [vm_b], libvirt_uri=lv2.uri)
        vm_a.cid = vm_b.cid = 9
        path = os.path.join(kvm1.lab.dir, "vm9.xml")
        with open(path, "w") as f:
            f.write(domain_xml(vm_a))
        lv1.virsh("define", path)
        lv1.virsh("start", "vm9")
        wait_until(lambda: kvm2.sees("vm9", "kvm1", "running"), 5, "kvm2 to place vm9 on kvm1")
        r = kvm2.curl("/hello", "-H", "X-VM-Id: vm9")
        assert r.status == 200 and r.body == b"hello from vm9\n", r
        assert peer_requests(kvm1, status="200", vm="vm9")
        # The move: gone from kvm1, started on kvm2.
        lv1.virsh("destroy", "vm9")
        lv1.virsh("undefine", "vm9")
        lv2.virsh("define", path)
        lv2.virsh("start", "vm9")
        started = time.monotonic()
        # Defined there first (shut off), then started: routable once running.
        wait_until(lambda: kvm1.sees("vm9", "kvm2", "running"), 5,
                   "kvm1 to place vm9 on kvm2, running")
        assert time.monotonic() - started < 1.0
        r = kvm1.curl("/hello", "-H", "X-VM-Id: vm9")
        assert r.status == 200 and r.body == b"hello from vm9\n", r
        assert peer_requests(kvm2, status="200", vm="vm9")


# -- fan-out across hosts -------------------------------------------------------

def spread_vms(names):
    """VMs in the group "spread" by their domain metadata, which every host sees."""
    return [VM(name, groups=("spread",)) for name in names]


def multipart_parts(response):
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + response.headers["content-type"].encode() + b"\r\n\r\n" +
        response.content)
    assert message.is_multipart()
    *vms, summary = list(message.iter_parts())
    return {p["X-VM-Id"]: p for p in vms}, json.loads(summary.get_payload(decode=True))


def agent_body(part):
    raw = part.get_payload(decode=True)
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def peer_messages(host, direction):
    return metric(host.lab, "vmgate_peer_messages_total", direction=direction)


def three_hosts(cluster):
    hosts = [cluster.host("kvm1", spread_vms(["a1", "a2"])),
             cluster.host("kvm2", spread_vms(["b1", "b2"])),
             cluster.host("kvm3", spread_vms(["c1", "c2"]))]
    cluster.converged()
    wait_until(lambda: all(h.admin("/v1/resolve?target=group:spread")[1].count('"uuid"') >= 6
                           for h in hosts), 10, "every host to resolve group:spread to 6 VMs")
    return hosts


ALL_SPREAD = ["a1", "a2", "b1", "b2", "c1", "c2"]


def test_a_fanout_over_three_hosts_sends_one_message_per_other_host_and_merges_every_answer():
    body = os.urandom(64 * 1024)
    sha = hashlib.sha256(body).hexdigest()
    with Etcd() as etcd, Cluster(etcd) as cluster:
        kvm1, kvm2, kvm3 = three_hosts(cluster)
        sent = peer_messages(kvm1, "sent")
        received = [peer_messages(h, "received") for h in (kvm2, kvm3)]
        r = requests.post(kvm1.url("/sha256"), data=body, headers={"X-VM-Id": "group:spread"},
                          timeout=30)
        assert r.status_code == 200, r.text
        parts, summary = multipart_parts(r)
        assert sorted(parts) == ALL_SPREAD
        for name, part in parts.items():
            assert part["X-VM-Class"] == "answered", (name, dict(part))
            assert part["X-VM-Uuid"]
            assert agent_body(part) == (200, ("%s %d\n" % (sha, len(body))).encode()), name
        assert summary["vms"] == 6 and summary["answered"] == 6, summary
        # One message per other host, whatever the number of its VMs.
        assert peer_messages(kvm1, "sent") == sent + 2
        assert [peer_messages(h, "received") for h in (kvm2, kvm3)] == [n + 1 for n in received]
        line = peer_requests(kvm2, target="/vmgate/v1/fanout", status="200")[-1]
        assert "vms=2" in line and "from=kvm1" in line and "client=127.0.0.1:" in line
        # The same merge as NDJSON.
        r = requests.post(kvm1.url("/sha256"), data=body, timeout=30,
                          headers={"X-VM-Id": "group:spread", "Accept": "application/x-ndjson"})
        *lines, last = [json.loads(l) for l in r.iter_lines() if l]
        assert last["summary"] is True and last["answered"] == 6, last
        assert sorted(l["vm"] for l in lines) == ALL_SPREAD
        assert all(l["response"]["body"] == "%s %d\n" % (sha, len(body)) for l in lines)
        assert peer_messages(kvm1, "sent") == sent + 4


def test_a_fanout_reaching_a_dead_host_fails_its_vms_promptly_naming_it_and_the_others_answer():
    with Etcd() as etcd, Cluster(etcd, lease_ttl_s=30) as cluster:
        kvm1, kvm2, kvm3 = three_hosts(cluster)
        kvm3.lab.hostd.kill()
        started = time.monotonic()
        r = requests.get(kvm1.url("/hello"), headers={"X-VM-Id": "group:spread"}, timeout=30)
        assert time.monotonic() - started < 3.0
        parts, summary = multipart_parts(r)
        assert sorted(parts) == ALL_SPREAD
        for name in ("a1", "a2", "b1", "b2"):
            assert parts[name]["X-VM-Class"] == "answered", (name, dict(parts[name]))
            assert agent_body(parts[name]) == (200, ("hello from %s\n" % name).encode())
        for name in ("c1", "c2"):
            assert parts[name]["X-VM-Class"] == "unreachable", dict(parts[name])
            assert parts[name]["X-VM-Status"] == "502"
            assert "kvm3" in parts[name]["X-VM-Reason"]
        assert summary["answered"] == 4
        assert sorted(summary["classes"]["unreachable"]["vms"]) == ["c1", "c2"]
        assert summary["vms"] == 6


def test_a_fanout_message_is_delivered_only_to_the_receivers_own_vms_named_by_uuid():
    with Etcd() as etcd, Cluster(etcd) as cluster:
        kvm1 = cluster.host("kvm1", [VM("vm1")])
        kvm2 = cluster.host("kvm2", [VM("vm2")])
        cluster.converged()
        vm1 = kvm1.lab.vms[0].uuid
        vm2 = kvm2.lab.vms[0].uuid
        agent_head = "GET /hello HTTP/1.1\r\nHost: vm\r\n\r\n"
        # kvm2 asks kvm1 for its vm1 by UUID, for vm1 by name, and for its own vm2.
        listed = "".join(v + "\n" for v in (vm1, "vm1", vm2))
        message = ("POST /vmgate/v1/fanout HTTP/1.1\r\nHost: kvm1\r\nVmgate-Host: kvm1\r\n"
                   "Vmgate-Request-Id: peerfan1\r\nVmgate-Port: 5986\r\nVmgate-Vms: 3\r\n"
                   "Vmgate-Head-Bytes: %d\r\nContent-Length: %d\r\n\r\n%s%s"
                   % (len(agent_head), len(listed) + len(agent_head), listed, agent_head))
        cert = cluster.pki.peer(cluster.ca, "kvm2")
        out = subprocess.run(
            ["openssl", "s_client", "-quiet", "-connect", "127.0.0.1:%d" % kvm1.peer_port,
             "-cert", cert.cert, "-key", cert.key, "-CAfile", cluster.ca.cert,
             "-servername", "kvm1"], input=message.encode(), capture_output=True,
            timeout=20).stdout.decode(errors="replace")
        assert out.startswith("HTTP/1.1 200 "), out
        lines = [json.loads(l) for l in out.split("\n") if l.startswith("{")]
        *vms, summary = lines
        assert summary["summary"] is True and summary["vms"] == 3, summary
        by_uuid = {v["uuid"]: v for v in vms if v["uuid"]}
        assert by_uuid[vm1]["class"] == "answered"
        assert by_uuid[vm1]["response"]["body"] == "hello from vm1\n"
        assert by_uuid[vm2]["class"] == "not_found"
        assert "not on host kvm1" in by_uuid[vm2]["reason"]
        by_name = [v for v in vms if v["vm"] == "vm1" and not v["uuid"]]
        assert by_name and by_name[0]["class"] == "not_found"
        assert "not a UUID" in by_name[0]["reason"]
        # Never forwarded again, not even vm2 to the host that runs it.
        assert peer_messages(kvm1, "sent") == 0
        assert peer_messages(kvm2, "received") == 0


class SilentAgent:
    """Accepts connections and reads from them, never answering."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


def test_a_host_that_cuts_its_results_mid_way_fails_its_unanswered_vms_at_once_naming_it():
    silent = SilentAgent()
    # Long enough that only the cut, not a timeout, can end c1's wait in time.
    slow = {"fanout": {"vm_timeout_ms": 20000}}
    try:
        with Etcd() as etcd, Cluster(etcd) as cluster:
            kvm1 = cluster.host("kvm1", spread_vms(["a1"]), hostd=slow)
            kvm3 = cluster.host("kvm3", [VM("c1", agent=None, groups=("spread",),
                                            guestd_agents={"5986": "tcp:127.0.0.1:%d" %
                                                           silent.port}),
                                         VM("c2", groups=("spread",))], hostd=slow)
            cluster.converged()
            outcome = {}

            def ask():
                started = time.monotonic()
                outcome["response"] = requests.get(kvm1.url("/hello"), timeout=60,
                                                   headers={"X-VM-Id": "group:spread"})
                outcome["seconds"] = time.monotonic() - started

            client = threading.Thread(target=ask)
            client.start()
            # c2 has answered on kvm3 (its part is on its way), c1 never will.
            kvm3.lab.hostd.wait_for(r"event=fanout_vm .*vm=c2 ", timeout=10)
            kvm3.lab.hostd.kill()
            client.join(30)
            assert outcome["seconds"] < 10, outcome
            parts, summary = multipart_parts(outcome["response"])
            assert sorted(parts) == ["a1", "c1", "c2"]
            assert parts["a1"]["X-VM-Class"] == "answered"
            assert parts["c2"]["X-VM-Class"] == "answered"
            assert parts["c1"]["X-VM-Class"] == "unreachable", dict(parts["c1"])
            assert "kvm3" in parts["c1"]["X-VM-Reason"]
            assert summary["vms"] == 3 and summary["answered"] == 2
    finally:
        silent.close()


def test_a_peer_that_sends_no_head_within_the_connect_timeout_is_cut_and_hostd_goes_on():
    import ssl
    with Etcd() as etcd, Cluster(etcd) as cluster:
        kvm1 = cluster.host("kvm1", [VM("vm1")])
        cluster.host("kvm2", [VM("vm2")])
        cluster.converged()
        cert = cluster.pki.peer(cluster.ca, "kvm2")
        context = ssl.create_default_context(cafile=cluster.ca.cert)
        context.load_cert_chain(cert.cert, cert.key)
        with socket.create_connection(("127.0.0.1", kvm1.peer_port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="kvm1") as tls:
                started = time.monotonic()
                # Nothing sent: kvm1 closes the link after peer_connect_timeout_ms (2 s).
                try:
                    closed = tls.recv(1) == b""
                except (ssl.SSLError, ConnectionResetError):
                    closed = True
                assert closed and time.monotonic() - started < 5
        assert kvm1.lab.hostd.alive()
        r = kvm1.curl("/hello", "-H", "X-VM-Id: vm2")
        assert r.status == 200 and r.body == b"hello from vm2\n", r
