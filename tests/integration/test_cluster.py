"""Cluster mode: hostds sharing a directory in a real etcd (started here, on
loopback ports), each with its own libvirt test-driver node, agents and
guestds, forwarding to one another over mutual TLS.

Each test names the behaviour it proves; each was checked to fail with the
behaviour taken out of hostd.
"""

import os
import socket

import pytest

from cluster_lab import Cluster, Etcd, clear_libvirtd, define_and_start, migrate
from vmgate_lab import VM, SessionLibvirtd, metric, wait_until


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
        wait_until(lambda: kvm2.peer_requests(status="200", **{"from": "kvm1"}), 5,
                   "kvm2's record of the forwarded request")
        line = kvm2.peer_requests(status="200")[0]
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
        # Prompt, without a clock: a 502 naming kvm2 is only given while its
        # lease (3 s) lives; a request that hung past it would get a 404.
        r = kvm1.curl("/hello", "-H", "X-VM-Id: vm2", timeout=10)
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
        kvm3 = cluster.fall_behind_a_compaction(kvm1, kvm2, "kvm3", [VM("vm3")])
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
        etcd.revoke_leases()
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
            clear_libvirtd(lv)
        kvm1 = cluster.host("kvm1", [vm_a], libvirt_uri=lv1.uri)
        kvm2 = cluster.host("kvm2", [vm_b], libvirt_uri=lv2.uri)
        vm_a.cid = vm_b.cid = 9
        path = define_and_start(lv1, vm_a, kvm1.lab.dir)
        wait_until(lambda: kvm2.sees("vm9", "kvm1", "running"), 5, "kvm2 to place vm9 on kvm1")
        r = kvm2.curl("/hello", "-H", "X-VM-Id: vm9")
        assert r.status == 200 and r.body == b"hello from vm9\n", r
        assert kvm1.peer_requests(status="200", vm="vm9")
        # A tunnel to vm9 through kvm2, carried by kvm1, open across the move.
        tunnel = socket.create_connection(("127.0.0.1", kvm2.port), timeout=10)
        tunnel.sendall(b"CONNECT vm9:5986 HTTP/1.1\r\nHost: vm9:5986\r\n\r\n")
        assert tunnel.recv(4096).startswith(b"HTTP/1.1 200 "), "the tunnel was not established"
        # The move: gone from kvm1, started on kvm2. (How fast is bench/'s
        # to measure: here it only has to happen.)
        lv1.virsh("destroy", "vm9")
        lv1.virsh("undefine", "vm9")
        # The tunnel kvm1 carried ends with the VM there: nothing routes to kvm1.
        tunnel.settimeout(10)
        try:
            rest = tunnel.recv(4096)
        except ConnectionResetError:
            rest = b""
        assert rest == b"", rest
        tunnel.close()
        lv2.virsh("define", path)
        lv2.virsh("start", "vm9")
        # Defined there first (shut off), then started: routable once running.
        wait_until(lambda: kvm1.sees("vm9", "kvm2", "running"), 5,
                   "kvm1 to place vm9 on kvm2, running")
        r = kvm1.curl("/hello", "-H", "X-VM-Id: vm9")
        assert r.status == 200 and r.body == b"hello from vm9\n", r
        assert kvm2.peer_requests(status="200", vm="vm9")


def test_a_vm_on_another_host_is_answered_in_dns_with_that_hosts_address_and_follows_a_move():
    if os.geteuid() != 0:
        pytest.skip("SessionLibvirtd needs root")
    # Documentation addresses: DNS only says them, nobody connects to them.
    addresses = {"kvm1": ["192.0.2.1"], "kvm2": ["192.0.2.2", "2001:db8::2"],
                 "kvm3": ["192.0.2.3"]}
    vm_b = VM("vm7")
    vm_c = VM("vm7", uuid=vm_b.uuid)
    with SessionLibvirtd() as lv2, SessionLibvirtd() as lv3, Etcd() as etcd, \
            Cluster(etcd) as cluster:
        for lv in (lv2, lv3):
            clear_libvirtd(lv)
        kvm1 = cluster.host("kvm1", [VM("vm1")], dns_addresses=addresses["kvm1"])
        kvm2 = cluster.host("kvm2", [vm_b], libvirt_uri=lv2.uri, dns_addresses=addresses["kvm2"])
        # kvm3 names its client addresses itself; its [dns] answers nothing here.
        cluster.host("kvm3", [vm_c], libvirt_uri=lv3.uri,
                     hostd={"cluster": {"client_addresses": addresses["kvm3"]}})
        vm_b.cid = vm_c.cid = 9
        path = define_and_start(lv2, vm_b, kvm2.lab.dir)
        wait_until(lambda: kvm1.sees("vm7", "kvm2", "running"), 5, "kvm1 to place vm7 on kvm2")
        r = kvm1.dig("vm7.vms.example", "A")
        assert r.status == "NOERROR" and r.addresses == ["192.0.2.2"], r.text
        r = kvm1.dig("vm7.vms.example", "AAAA", "+tcp")
        assert r.addresses == ["2001:db8::2"], r.text
        # kvm1's own VM still answers kvm1's address.
        assert kvm1.dig("vm1.vms.example").addresses == ["192.0.2.1"]
        migrate("vm7", path, lv2, lv3)
        wait_until(lambda: kvm1.sees("vm7", "kvm3", "running"), 5, "kvm1 to place vm7 on kvm3")
        r = kvm1.dig("vm7.vms.example", "A")
        assert r.status == "NOERROR" and r.addresses == ["192.0.2.3"], r.text
        # kvm3 publishes no IPv6 address: the name exists, with no AAAA (NODATA).
        r = kvm1.dig("vm7.vms.example", "AAAA")
        assert r.status == "NOERROR" and r.addresses == [], r.text


def test_a_tls_client_naming_a_remote_vm_by_sni_reaches_its_agent_untouched():
    """SNI passthrough at one host for a VM on another: the ClientHello and
    everything after it cross the peer link as they came, so the client
    verifies the agent's own certificate and reads the agent's answer."""
    import subprocess
    suffix = ".vms.example"
    with Etcd() as etcd, Cluster(etcd) as cluster:
        vm2 = VM("vm2", agent=None, guestd=False)
        kvm2 = cluster.host("kvm2", [vm2])
        cert, key = kvm2.lab.path("agent-cert.pem"), kvm2.lab.path("agent-key.pem")
        made = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "1", "-subj", "/CN=vm2" + suffix, "-addext",
             "subjectAltName=DNS:vm2" + suffix, "-keyout", key, "-out", cert],
            capture_output=True)
        assert made.returncode == 0, made.stderr
        agent = kvm2.lab.spawn("agent-vm2", ["openssl", "s_server", "-accept", "127.0.0.1:0",
                                             "-cert", cert, "-key", key, "-www"])
        agent_port = int(agent.wait_for(r"^ACCEPT 127\.0\.0\.1:(\d+)$", stream="stdout").group(1))
        vm2.guestd_agents = {"5986": "tcp:127.0.0.1:%d" % agent_port}
        vm2.guestd = True
        kvm2.lab.start_guestd(vm2)
        kvm1 = cluster.host("kvm1", [VM("vm1")], hostd={"routing": {"host_suffix": suffix}},
                            listeners=[{"address": "tcp:127.0.0.1:0", "guest_port": 5986,
                                        "mode": "passthrough", "trusted": True}])
        cluster.converged()
        r = subprocess.run(
            ["openssl", "s_client", "-connect", "127.0.0.1:%d" % kvm1.port,
             "-servername", "vm2" + suffix, "-verify_hostname", "vm2" + suffix,
             "-CAfile", cert, "-verify_return_error", "-ign_eof"],
            input=b"GET / HTTP/1.0\r\n\r\n", capture_output=True, timeout=20)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out
        assert b"Verify return code: 0 (ok)" in out, out
        assert b"HTTP/1.0 200 ok" in r.stdout, out
        wait_until(lambda: kvm2.peer_requests(status="200", vm="vm2"), 5,
                   "kvm2's record of the forwarded passthrough")
        record = kvm1.lab.last_request(form="sni", vm="vm2")
        assert record["status"] == "200", record


def test_check_of_a_remote_vm_opens_its_channel_through_its_host():
    """/v1/check and /v1/vms for a VM on another host: its transport is that
    host's peer link, and the check goes through it to that VM's guestd."""
    import json
    with Etcd() as etcd, Cluster(etcd) as cluster:
        kvm1 = cluster.host("kvm1", [VM("vm1")])
        kvm2 = cluster.host("kvm2", [VM("vm2")])
        cluster.converged()
        status, body = kvm1.admin("/v1/check?target=vm2&port=5986")
        assert status == 200, body
        hops = {h["hop"]: h for h in json.loads(body)["hops"]}
        assert hops["transport"]["via_host"] == "kvm2", hops
        assert hops["channel"]["status"] == 200, hops
        wait_until(lambda: kvm2.peer_requests(status="200", vm="vm2"), 5,
                   "kvm2's record of the checked channel")
        status, body = kvm1.admin("/v1/vms")
        vm2 = [v for v in json.loads(body) if v["name"] == "vm2"][0]
        assert vm2["via_host"] == "kvm2" and "transport_error" not in vm2, vm2


def test_a_guest_reaches_a_vm_on_another_host_only_where_its_own_host_allows_it():
    """A guest's SEND to a VM on another host: the ACL rules of the host it
    arrived at decide, and the VM's host delivers it, knowing the caller."""
    rule = {"name": "vm1-to-vm2", "action": "allow", "identities": ["vm:vm1"],
            "vms": ["vm2"], "ports": [5986]}
    with Etcd() as etcd, Cluster(etcd) as cluster:
        kvm1 = cluster.host("kvm1", [VM("vm1", outbound=True)], inbound=True, acl=[rule])
        kvm2 = cluster.host("kvm2", [VM("vm2")])
        cluster.converged()
        r = kvm1.lab.guestd_command("vm1", "send", "vm2", "--port", "5986", "--path", "/hello")
        assert r.returncode == 0 and r.stdout == b"hello from vm2\n", r.stderr
        wait_until(lambda: kvm2.peer_requests(status="200", vm="vm2", identity="vm:vm1"), 5,
                   "kvm2's record of vm1's request")
        # Another port: no rule on kvm1 names it, and nothing reaches kvm2.
        before = metric(kvm1.lab, "vmgate_peer_messages_total", direction="sent")
        r = kvm1.lab.guestd_command("vm1", "send", "vm2", "--port", "8114")
        assert r.returncode == 1 and b"may not reach vm2 on port 8114" in r.stderr, r.stderr
        assert metric(kvm1.lab, "vmgate_peer_messages_total", direction="sent") == before
