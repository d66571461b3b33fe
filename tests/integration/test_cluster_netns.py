"""Cluster mode across real network stacks: each host in a network namespace
of its own (hostd, guestds and agents started with `ip netns exec`), joined to
a hub namespace by a veth pair on 10.77.0.0/24 addresses that exist only
inside those namespaces. etcd and the clients (curl, dig) run in the hub, so
every request crosses a veth and a bridge, and hosts reach each other only
over those addresses (cluster_lab.Netns).

Needs root (ip netns add); skipped with the reason otherwise. Each test names
the behaviour it proves; each was checked to fail with the behaviour taken out.
"""

import json
import os

import pytest

from cluster_lab import (Cluster, Etcd, Netns, clear_libvirtd, define_and_start, migrate,
                         netns_unavailable)
from vmgate_lab import VM, SessionLibvirtd, metric, wait_until

_why_not = netns_unavailable()
pytestmark = pytest.mark.skipif(_why_not is not None, reason=str(_why_not))

SUFFIX = "vms.example"


def sent(host):
    return metric(host.lab, "vmgate_peer_messages_total", direction="sent")


@pytest.fixture(scope="module")
def cluster():
    """Three hosts, one VM each, all three VMs in group web: shared by the
    tests that leave the cluster as they found it."""
    with Netns() as net, Etcd(netns=net) as etcd, Cluster(etcd, netns=net) as cluster:
        for n in (1, 2, 3):
            cluster.host("kvm%d" % n, [VM("vm%d" % n, groups=("web",))])
        cluster.converged()
        yield cluster


@pytest.mark.parametrize("form", ["header", "connect", "absolute", "host"])
def test_a_vm_on_another_host_is_reached_in_every_routing_form_across_namespaces(cluster, form):
    kvm1, kvm2 = cluster.hosts["kvm1"], cluster.hosts["kvm2"]
    proxy = "http://%s:%d" % (kvm1.address, kvm1.port)
    if form == "header":
        r = kvm1.curl("/hello", "-H", "X-VM-Id: vm2")
    elif form == "connect":
        r = kvm1.curl("http://vm2:5986/hello", "-p", "-x", proxy)
    elif form == "absolute":
        r = kvm1.curl("http://vm2:5986/hello", "--proxy", proxy)
    else:
        r = kvm1.curl("/hello", "-H", "Host: vm2.%s:5986" % SUFFIX)
    assert r.status == 200, r
    assert r.body == b"hello from vm2\n"
    record = kvm1.lab.last_request(form=form, vm="vm2")
    assert record["status"] == "200", record
    # vm2's agent answers only inside kvm2's namespace: kvm2 delivered it for
    # kvm1 (on a link kvm1 may have pooled), knowing the client by its hub address.
    assert sent(kvm1) >= 1
    wait_until(lambda: kvm2.peer_requests(status="200", vm="vm2", **{"from": "kvm1"}), 5,
               "kvm2's record of the forwarded request")
    line = kvm2.peer_requests(status="200", vm="vm2")[-1]
    assert "client=%s:" % Netns.HUB_ADDRESS in line, line


def test_dns_names_each_vm_by_the_address_of_its_host_and_that_address_needs_no_hop(cluster):
    kvm1, kvm2 = cluster.hosts["kvm1"], cluster.hosts["kvm2"]
    for n in (1, 2, 3):
        for carrier in ((), ("+tcp",)):
            r = kvm1.dig("vm%d.%s" % (n, SUFFIX), "A", *carrier)
            assert r.status == "NOERROR", r.text
            assert r.addresses == [cluster.hosts["kvm%d" % n].address], r.text
    # A client that resolved vm2 through kvm1's DNS connects to kvm2 itself.
    address = kvm1.dig("vm2." + SUFFIX).addresses[0]
    before = sent(kvm1)
    r = kvm2.curl("http://vm2.%s:5986/hello" % SUFFIX,
                  "--resolve", "vm2.%s:5986:%s" % (SUFFIX, address))
    assert r.status == 200 and r.body == b"hello from vm2\n", r
    assert sent(kvm1) == before and sent(kvm2) == 0


def test_a_group_spanning_three_hosts_costs_two_peer_messages(cluster):
    # One request entering at kvm1 for VMs on kvm1, kvm2 and kvm3: kvm1
    # delivers its own, and each other host gets one message for its VMs.
    kvm1 = cluster.hosts["kvm1"]
    before = sent(kvm1)
    r = kvm1.curl("/hello", "-H", "X-VM-Id: group:web", "-H", "Accept: application/x-ndjson")
    assert r.status == 200, r
    lines = [json.loads(l) for l in r.text.splitlines() if l.strip()]
    *results, summary = lines
    assert summary.get("summary") is True, summary
    assert {v["vm"]: v["class"] for v in results} == {
        "vm1": "answered", "vm2": "answered", "vm3": "answered"}, results
    for v in results:
        assert v["response"]["body"] == "hello from %s\n" % v["vm"], v
    assert summary["answered"] == 3, summary
    assert sent(kvm1) == before + 2


def test_a_killed_host_gets_a_prompt_502_naming_it_and_an_unplugged_one_within_the_timeout():
    with Netns() as net, Etcd(netns=net) as etcd, \
            Cluster(etcd, netns=net, lease_ttl_s=3) as cluster:
        kvm1 = cluster.host("kvm1", [VM("vm1")])
        kvm2 = cluster.host("kvm2", [VM("vm2")])
        kvm3 = cluster.host("kvm3", [VM("vm3")])
        cluster.converged()
        # Prompt, without a clock: a 502 naming the host is only given while
        # its lease (3 s) lives (later the VM is unknown: 404), and a request
        # that hung would meet curl's own timeout instead.
        # Killed: its kernel still answers, with a reset.
        kvm2.kill()
        r = kvm1.curl("/hello", "-H", "X-VM-Id: vm2", timeout=10)
        assert r.status == 502 and "kvm2" in r.text, r
        # Unplugged: nothing answers at all; peer_connect_timeout_ms (2 s) bounds it.
        net.unplug("kvm3")
        r = kvm1.curl("/hello", "-H", "X-VM-Id: vm3", timeout=10)
        assert r.status == 502 and "kvm3" in r.text, r
        # The leases expire: their VMs leave kvm1's directory.
        wait_until(lambda: not kvm1.knows("vm2") and not kvm1.knows("vm3"), 3 + 5,
                   "vm2 and vm3 to vanish with their hosts' leases")
        assert kvm1.curl("/hello", "-H", "X-VM-Id: vm2").status == 404
        assert kvm1.curl("/hello", "-H", "X-VM-Id: vm3").status == 404


def test_routing_goes_on_while_etcd_restarts_and_changes_after_it_are_seen():
    with Netns() as net, Etcd(netns=net) as etcd, Cluster(etcd, netns=net) as cluster:
        kvm1 = cluster.host("kvm1", [VM("vm1")])
        cluster.host("kvm2", [VM("vm2")])
        cluster.converged()
        etcd.kill_member(0)
        kvm1.lab.hostd.wait_for(r"event=etcd_unreachable")
        status, body = kvm1.admin("/readyz")
        assert status == 200 and body.startswith("degraded: etcd unreachable"), body
        r = kvm1.curl("/hello", "-H", "X-VM-Id: vm2")
        assert r.status == 200 and r.body == b"hello from vm2\n", r
        etcd.start_member(0)
        wait_until(lambda: kvm1.admin("/readyz") == (200, "ready"), 10,
                   "kvm1 ready again once etcd is back")
        # Watched again: a host that arrives after the restart is routable.
        cluster.host("kvm3", [VM("vm3")])
        wait_until(lambda: kvm1.sees("vm3", "kvm3"), 10, "kvm1 to see vm3 after the restart")
        r = kvm1.curl("/hello", "-H", "X-VM-Id: vm3")
        assert r.status == 200 and r.body == b"hello from vm3\n", r


def test_a_three_member_etcd_with_one_member_killed_keeps_the_cluster_working():
    with Netns() as net, Etcd(members=3, netns=net) as etcd, \
            Cluster(etcd, netns=net) as cluster:
        kvm1 = cluster.host("kvm1", [VM("vm1")])
        cluster.host("kvm2", [VM("vm2")])
        cluster.converged()
        etcd.kill_member(0)
        cluster.host("kvm3", [VM("vm3")])
        wait_until(lambda: kvm1.sees("vm3", "kvm3"), 15, "kvm1 to see vm3 with one member down")
        for name in ("vm2", "vm3"):
            r = kvm1.curl("/hello", "-H", "X-VM-Id: " + name)
            assert r.status == 200 and r.body == ("hello from %s\n" % name).encode(), r
        assert kvm1.admin("/readyz") == (200, "ready")


def test_a_watch_behind_a_compaction_reads_everything_again_across_namespaces():
    with Netns() as net, Etcd(netns=net) as etcd, Cluster(etcd, netns=net) as cluster:
        kvm1 = cluster.host("kvm1", [VM("vm1")])
        kvm2 = cluster.host("kvm2", [VM("vm2")])
        cluster.converged()
        cluster.fall_behind_a_compaction(kvm1, kvm2, "kvm3", [VM("vm3")])
        kvm1.lab.hostd.wait_for(r"event=etcd_watch_compacted")
        wait_until(lambda: kvm1.sees("vm3", "kvm3") and not kvm1.knows("vm2"), 10,
                   "kvm1 to converge after the compaction")
        r = kvm1.curl("/hello", "-H", "X-VM-Id: vm3")
        assert r.status == 200 and r.body == b"hello from vm3\n", r


def test_a_migrated_vm_is_routed_to_and_named_in_dns_at_its_new_host():
    vm_b = VM("vm7")
    vm_c = VM("vm7", uuid=vm_b.uuid)
    with SessionLibvirtd() as lv2, SessionLibvirtd() as lv3, Netns() as net, \
            Etcd(netns=net) as etcd, Cluster(etcd, netns=net) as cluster:
        for lv in (lv2, lv3):
            clear_libvirtd(lv)
        kvm1 = cluster.host("kvm1", [VM("vm1")])
        kvm2 = cluster.host("kvm2", [vm_b], libvirt_uri=lv2.uri)
        kvm3 = cluster.host("kvm3", [vm_c], libvirt_uri=lv3.uri)
        vm_b.cid = vm_c.cid = 9
        path = define_and_start(lv2, vm_b, kvm2.lab.dir)
        wait_until(lambda: kvm1.sees("vm7", "kvm2", "running"), 5, "kvm1 to place vm7 on kvm2")
        assert kvm1.dig("vm7." + SUFFIX).addresses == [kvm2.address]
        r = kvm1.curl("/hello", "-H", "X-VM-Id: vm7")
        assert r.status == 200 and r.body == b"hello from vm7\n", r
        assert kvm2.peer_requests(status="200", vm="vm7")
        migrate("vm7", path, lv2, lv3)
        wait_until(lambda: kvm1.sees("vm7", "kvm3", "running"), 5, "kvm1 to place vm7 on kvm3")
        r = kvm1.curl("/hello", "-H", "X-VM-Id: vm7")
        assert r.status == 200 and r.body == b"hello from vm7\n", r
        assert kvm3.peer_requests(status="200", vm="vm7")
        # Every host's DNS follows: kvm1's, and kvm2's, which no longer runs it.
        for host in (kvm1, kvm2, kvm3):
            r = host.dig("vm7." + SUFFIX)
            assert r.status == "NOERROR" and r.addresses == [kvm3.address], (host.name, r.text)
        r = kvm3.curl("http://vm7.%s:5986/hello" % SUFFIX,
                      "--resolve", "vm7.%s:5986:%s" % (SUFFIX, kvm3.address))
        assert r.status == 200 and r.body == b"hello from vm7\n", r


def test_no_namespace_or_link_of_a_finished_cluster_is_left_behind():
    with Netns() as net:
        net.add_host("kvm1")
        names = list(net.namespaces)
    left = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    assert not set(names) & set(left), left


def test_a_tls_client_naming_a_remote_vm_by_sni_reaches_its_agent_across_namespaces():
    """The TLS-SNI form: a passthrough listener on kvm1 for a VM whose agent,
    a TLS server of its own, answers only inside kvm2's namespace. The client
    in the hub verifies the agent's certificate through both hosts."""
    import subprocess
    with Netns() as net, Etcd(netns=net) as etcd, Cluster(etcd, netns=net) as cluster:
        agents_ca = cluster.pki.ca("agents")
        made = cluster.pki.server(agents_ca, "vm2", dns=["vm2." + SUFFIX], ips=())
        cert, key = made.cert, made.key
        vm2 = VM("vm2", agent=None, guestd=False)
        kvm2 = cluster.host("kvm2", [vm2])
        agent = kvm2.lab.spawn("agent-vm2", ["openssl", "s_server", "-accept", "127.0.0.1:0",
                                             "-cert", cert, "-key", key, "-www"])
        agent_port = int(agent.wait_for(r"^ACCEPT 127\.0\.0\.1:(\d+)$", stream="stdout").group(1))
        vm2.guestd_agents = {"5986": "tcp:127.0.0.1:%d" % agent_port}
        vm2.guestd = True
        kvm2.lab.start_guestd(vm2)
        kvm1 = cluster.host("kvm1", [VM("vm1")], listeners=[
            {"address": "tcp:0.0.0.0:5986", "guest_port": 5986, "mode": "passthrough",
             "trusted": True, "trusted_remote": True}])
        cluster.converged()
        r = subprocess.run(Netns.exec_argv(net.hub, [
            "openssl", "s_client", "-connect", "%s:5986" % kvm1.address,
            "-servername", "vm2." + SUFFIX, "-verify_hostname", "vm2." + SUFFIX,
            "-CAfile", agents_ca.cert, "-verify_return_error", "-ign_eof"]),
            input=b"GET / HTTP/1.0\r\n\r\n", capture_output=True, timeout=20)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out
        assert b"Verify return code: 0 (ok)" in out, out
        assert b"HTTP/1.0 200 ok" in r.stdout, out
        wait_until(lambda: kvm2.peer_requests(status="200", vm="vm2", **{"from": "kvm1"}), 5,
                   "kvm2's record of the forwarded passthrough")
