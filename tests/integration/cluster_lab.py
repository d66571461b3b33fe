"""cluster_lab: etcd and several hostds in cluster mode, for integration tests.

Etcd runs one or three members on loopback ports in a temp dir; each
ClusterHost is a vmgate_lab.Lab (its own libvirt test-driver node, agents and
guestds on unix sockets) whose hostd has [cluster] pointing at that etcd,
with a peer certificate from one test CA made at run time. Everything dies
with the `with` blocks.

    with Etcd() as etcd, Cluster(etcd) as cluster:
        kvm1 = cluster.host("kvm1", [VM("vm1")])
        kvm2 = cluster.host("kvm2", [VM("vm2")])
        r = kvm1.curl("/hello", "-H", "X-VM-Id: vm2")   # delivered through kvm2
"""

import http.client
import json
import os
import shutil
import subprocess
import tempfile
import time

from pki import Pki
from vmgate_lab import Lab, LabError, Process, UnixHTTPConnection, free_tcp_port, wait_until

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"


class Etcd:
    """An etcd cluster of `members` members on loopback."""

    def __init__(self, members=1):
        self.count = members
        self.dir = None
        self.client_ports = [free_tcp_port() for _ in range(members)]
        self.peer_ports = [free_tcp_port() for _ in range(members)]
        self.processes = [None] * members

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix="vmgate-etcd-")
        try:
            for i in range(self.count):
                self.start_member(i, wait=False)
            for i in range(self.count):
                self.wait_healthy(i)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    @property
    def endpoints(self):
        return ["tcp:127.0.0.1:%d" % p for p in self.client_ports]

    def url(self, i=0):
        return "http://127.0.0.1:%d" % self.client_ports[i]

    def start_member(self, i, wait=True):
        initial = ",".join("m%d=http://127.0.0.1:%d" % (j, p) for j, p in enumerate(self.peer_ports))
        argv = [ETCD, "--name", "m%d" % i, "--data-dir", os.path.join(self.dir, "m%d" % i),
                "--listen-client-urls", self.url(i), "--advertise-client-urls", self.url(i),
                "--listen-peer-urls", "http://127.0.0.1:%d" % self.peer_ports[i],
                "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % self.peer_ports[i],
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", "vmgate-test"]
        self.processes[i] = Process("etcd-m%d" % i, argv, self.dir)
        if wait:
            self.wait_healthy(i)

    def wait_healthy(self, i):
        def healthy():
            if not self.processes[i].alive():
                raise LabError("etcd m%d exited:\n%s" % (i, self.processes[i].stderr()[-3000:]))
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.client_ports[i], timeout=2)
                c.request("GET", "/health")
                body = c.getresponse().read()
                c.close()
                return json.loads(body).get("health") == "true"
            except (OSError, ValueError):
                return False
        wait_until(healthy, 30, "etcd member m%d to be healthy" % i, interval=0.1)

    def kill_member(self, i):
        if self.processes[i]:
            self.processes[i].kill()

    def ctl(self, *args, member=None):
        endpoints = (self.url(member) if member is not None else
                     ",".join(self.url(j) for j in range(self.count)
                              if self.processes[j] and self.processes[j].alive()))
        r = subprocess.run([ETCDCTL, "--endpoints", endpoints, *args], capture_output=True,
                           text=True, timeout=30, env=dict(os.environ, ETCDCTL_API="3"))
        if r.returncode != 0:
            raise LabError("etcdctl %s: %s" % (" ".join(args), r.stderr))
        return r.stdout

    def revision(self):
        out = json.loads(self.ctl("endpoint", "status", "-w", "json"))
        return int(out[0]["Status"]["header"]["revision"])

    def close(self):
        for p in self.processes:
            if p:
                p.stop(grace=3.0)
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


class ClusterHost:
    """One host of a Cluster: its Lab, and its peer port."""

    def __init__(self, name, lab, peer_port):
        self.name = name
        self.lab = lab
        self.peer_port = peer_port

    def __getattr__(self, attribute):
        return getattr(self.lab, attribute)

    def admin(self, path):
        c = UnixHTTPConnection(self.lab.path("admin.sock"))
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read().decode().rstrip("\n")
        finally:
            c.close()

    def sees(self, vm_name, host, state=None):
        """Whether this host's directory places `vm_name` on `host` (in `state`)."""
        status, body = self.admin("/v1/vms")
        if status != 200:
            return False
        return any(v["name"] == vm_name and v["host"] == host and
                   (state is None or v["state"] == state) for v in json.loads(body))

    def knows(self, vm_name):
        status, body = self.admin("/v1/vms")
        return status == 200 and any(v["name"] == vm_name for v in json.loads(body))


class Cluster:
    """Hosts sharing one etcd and one CA."""

    def __init__(self, etcd, lease_ttl_s=10, reconcile_interval_ms=60000):
        self.etcd = etcd
        self.lease_ttl_s = lease_ttl_s
        self.reconcile_interval_ms = reconcile_interval_ms
        self.hosts = {}
        self.dir = None

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix="vmgate-cluster-")
        self.pki = Pki(os.path.join(self.dir, "pki"))
        self.ca = self.pki.ca("cluster")
        return self

    def __exit__(self, *exc):
        for host in reversed(list(self.hosts.values())):
            host.lab.close()
        self.hosts.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
        return False

    def cluster_section(self, name, peer_port, cert):
        return {"enabled": True, "host_name": name, "etcd_endpoints": self.etcd.endpoints,
                "lease_ttl_s": self.lease_ttl_s, "etcd_timeout_ms": 1000,
                "reconcile_interval_ms": self.reconcile_interval_ms,
                "reconnect_min_ms": 100, "reconnect_max_ms": 1000,
                "peer_listen": "tcp:127.0.0.1:%d" % peer_port,
                "peer_certificate": cert.cert, "peer_key": cert.key, "peer_ca": self.ca.cert,
                "peer_connect_timeout_ms": 2000}

    def host(self, name, vms, hostd=None, **lab_args):
        """Starts a host with `vms` and waits until etcd has been read."""
        peer_port = free_tcp_port()
        cert = self.pki.peer(self.ca, name)
        overrides = dict(hostd or {})
        overrides["cluster"] = dict(self.cluster_section(name, peer_port, cert),
                                    **overrides.get("cluster", {}))
        lab = Lab(vms, hostd=overrides, **lab_args)
        lab.__enter__()
        host = ClusterHost(name, lab, peer_port)
        self.hosts[name] = host
        lab.hostd.wait_for(r"event=etcd_connected")
        return host

    def converged(self, timeout=10.0):
        """Waits until every host sees every host's VMs where they run."""
        def done():
            for host in self.hosts.values():
                if not host.lab.hostd.alive():
                    continue
                for other in self.hosts.values():
                    if not other.lab.hostd.alive():
                        continue
                    for vm in other.lab.vms:
                        if vm.running and not host.sees(vm.name, other.name):
                            return False
            return True
        wait_until(done, timeout, "every host to see every VM", interval=0.05)
