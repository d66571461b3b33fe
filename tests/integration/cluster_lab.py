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

With a Netns, each host runs in a network namespace of its own (hostd, its
guestds and agents, started with `ip netns exec`), joined by a veth pair to a
bridge in a hub namespace that holds etcd and the clients (curl, dig), on
10.77.0.0/24 addresses that exist only inside those namespaces:

    with Netns() as net, Etcd(netns=net) as etcd, Cluster(etcd, netns=net) as cluster:
        kvm1 = cluster.host("kvm1", [VM("vm1")])      # hostd on 10.77.0.11:5986
"""

import ctypes
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

from pki import Pki
from vmgate_lab import (Lab, LabError, Process, UnixHTTPConnection, domain_xml, free_tcp_port,
                        wait_until)

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"


# -- network namespaces ----------------------------------------------------------

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
NETNS_PREFIX = "vmgate-t"


def netns_unavailable():
    """Why a Netns cannot be made here (None: it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if not shutil.which("ip"):
        return "iproute2's ip is not installed"
    probe = "%s%d-probe" % (NETNS_PREFIX, os.getpid())
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return "ip netns add failed: " + r.stderr.strip()
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _netns_owner_alive(name):
    m = re.match(re.escape(NETNS_PREFIX) + r"(\d+)-", name)
    return not m or os.path.exists("/proc/" + m.group(1))


class Netns:
    """A hub namespace with a bridge (10.77.0.1/24: etcd, the clients) and,
    per host, a namespace joined to it by a veth pair (10.77.0.N/24, N from 11).

    Nothing is made in the root namespace: the veths are created inside the
    hub and the host's namespace, so runs side by side (parallel ctest) reuse
    the one subnet without meeting. The namespaces' names carry this
    process's pid; leaving the `with` block deletes them (and with them every
    link), and a later run deletes any whose process died without doing so
    (a test killed by ctest's timeout)."""

    SUBNET = "10.77.0."
    HUB_ADDRESS = SUBNET + "1"

    def __init__(self):
        Netns.serial = getattr(Netns, "serial", 0) + 1
        self.tag = "%s%d-%d" % (NETNS_PREFIX, os.getpid(), Netns.serial)
        self.hub = self.tag + "-hub"
        self.namespaces = []
        self.hosts = {}  # host name -> (namespace, address)

    def __enter__(self):
        self.remove_stale()
        try:
            self.add_namespace(self.hub)
            self.ip(self.hub, "link", "add", "br0", "type", "bridge")
            self.ip(self.hub, "addr", "add", self.HUB_ADDRESS + "/24", "dev", "br0")
            self.ip(self.hub, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    @staticmethod
    def remove_stale():
        r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
        for line in r.stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(NETNS_PREFIX) and not _netns_owner_alive(name):
                subprocess.run(["ip", "netns", "del", name], capture_output=True)

    @staticmethod
    def run(argv):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise LabError("%s: %s" % (" ".join(argv), r.stderr.strip()))
        return r.stdout

    def ip(self, namespace, *args):
        return self.run(["ip", "-n", namespace, *args])

    def add_namespace(self, name):
        self.run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        self.ip(name, "link", "set", "lo", "up")

    def add_host(self, host):
        """A namespace for `host`, plugged into the hub: (namespace, address)."""
        namespace = "%s-%s" % (self.tag, host)
        address = self.SUBNET + str(11 + len(self.hosts))
        self.add_namespace(namespace)
        hub_end = "h%d" % len(self.hosts)
        # Made in the hub with its peer straight in the host's namespace.
        self.ip(self.hub, "link", "add", hub_end, "type", "veth", "peer", "name", "eth0",
                "netns", namespace)
        self.ip(self.hub, "link", "set", hub_end, "master", "br0")
        self.ip(self.hub, "link", "set", hub_end, "up")
        self.ip(namespace, "addr", "add", address + "/24", "dev", "eth0")
        self.ip(namespace, "link", "set", "eth0", "up")
        self.hosts[host] = (namespace, address)
        return namespace, address

    def unplug(self, host):
        """The host's cable pulled: its end of the veth down (no RST, no ARP answer)."""
        self.ip(self.hosts[host][0], "link", "set", "eth0", "down")

    def plug(self, host):
        self.ip(self.hosts[host][0], "link", "set", "eth0", "up")

    @staticmethod
    def exec_argv(namespace, argv):
        # ip netns exec execs the command itself: the pid (and PDEATHSIG) stay.
        return ["ip", "netns", "exec", namespace, *argv]

    @staticmethod
    def call_in(namespace, function, *args):
        """`function(*args)` on a thread moved into `namespace` (setns(2)
        moves the calling thread only): its sockets are that namespace's."""
        result = {}

        def body():
            try:
                fd = os.open("/run/netns/" + namespace, os.O_RDONLY)
                try:
                    if _libc.setns(fd, _CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns into " + namespace)
                finally:
                    os.close(fd)
                result["value"] = function(*args)
            except BaseException as error:  # re-raised on the caller's thread
                result["error"] = error

        thread = threading.Thread(target=body)
        thread.start()
        thread.join()
        if "error" in result:
            raise result["error"]
        return result["value"]

    def close(self):
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.namespaces.clear()


class NetnsLab(Lab):
    """A Lab whose processes run in `namespace` and whose curl runs in the
    hub, reaching hostd on `address`."""

    def __init__(self, vms, netns, namespace, address, **lab_args):
        super().__init__(vms, **lab_args)
        self.netns = netns
        self.namespace = namespace
        self.client_host = address
        self.client_prefix = tuple(Netns.exec_argv(netns.hub, []))

    def spawn(self, name, argv, **kw):
        return super().spawn(name, Netns.exec_argv(self.namespace, argv), **kw)


# -- etcd ------------------------------------------------------------------------

class Etcd:
    """An etcd cluster of `members` members on loopback (with a Netns: on
    the hub's address, in the hub)."""

    def __init__(self, members=1, netns=None):
        self.count = members
        self.netns = netns
        self.address = netns.HUB_ADDRESS if netns else "127.0.0.1"
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
        return ["tcp:%s:%d" % (self.address, p) for p in self.client_ports]

    def url(self, i=0):
        return "http://%s:%d" % (self.address, self.client_ports[i])

    def in_place(self, argv):
        """`argv` run where etcd is (the hub of a Netns)."""
        return Netns.exec_argv(self.netns.hub, argv) if self.netns else argv

    def start_member(self, i, wait=True):
        peer = "http://%s:%%d" % self.address
        initial = ",".join("m%d=%s" % (j, peer % p) for j, p in enumerate(self.peer_ports))
        argv = [ETCD, "--name", "m%d" % i, "--data-dir", os.path.join(self.dir, "m%d" % i),
                "--listen-client-urls", self.url(i), "--advertise-client-urls", self.url(i),
                "--listen-peer-urls", peer % self.peer_ports[i],
                "--initial-advertise-peer-urls", peer % self.peer_ports[i],
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", "vmgate-test"]
        self.processes[i] = Process("etcd-m%d" % i, self.in_place(argv), self.dir)
        if wait:
            self.wait_healthy(i)

    def restart_member(self, i):
        """Killed, then started again on its data: what an etcd restart is."""
        self.kill_member(i)
        self.start_member(i)

    def wait_healthy(self, i):
        def ask():
            c = http.client.HTTPConnection(self.address, self.client_ports[i], timeout=2)
            try:
                c.request("GET", "/health")
                return json.loads(c.getresponse().read()).get("health") == "true"
            finally:
                c.close()

        def healthy():
            if not self.processes[i].alive():
                raise LabError("etcd m%d exited:\n%s" % (i, self.processes[i].stderr()[-3000:]))
            try:
                return Netns.call_in(self.netns.hub, ask) if self.netns else ask()
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
        r = subprocess.run(self.in_place([ETCDCTL, "--endpoints", endpoints, *args]),
                           capture_output=True,
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


    def revoke_leases(self):
        """As etcd does when a lease expires: every lease and its keys go."""
        for lease in self.ctl("lease", "list").split():
            if all(c in "0123456789abcdef" for c in lease) and len(lease) > 8:
                self.ctl("lease", "revoke", lease)


class ClusterHost:
    """One host of a Cluster: its Lab, its peer port, and (with a Netns) its
    namespace and address."""

    def __init__(self, name, lab, peer_port, namespace=None, address="127.0.0.1"):
        self.name = name
        self.lab = lab
        self.peer_port = peer_port
        self.namespace = namespace
        self.address = address

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

    def peer_requests(self, **match):
        """This host's records of requests other hosts forwarded to it."""
        lines = [l for l in self.lab.hostd.lines() if "event=peer_request" in l]
        return [l for l in lines if all("%s=%s" % kv in l for kv in match.items())]

    def kill(self):
        """The host dies: hostd, its guestds and agents, at once (SIGKILL)."""
        for p in self.lab.processes:
            p.kill()

    def dns_port(self):
        m = self.lab.hostd.wait_for(r"event=dns_listening addr=\S+:(\d+) ")
        return int(m.group(1))

    def dig(self, name, qtype="A", *extra):
        """dig at this host's [dns] listener (from the hub, with a Netns)."""
        argv = ["dig", "@" + self.address, "-p", str(self.dns_port()), name, qtype,
                "+time=5", "+tries=1", "+norecurse", *extra]
        if self.namespace:
            argv = Netns.exec_argv(self.lab.netns.hub, argv)
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise LabError("dig failed: " + r.stdout + r.stderr)
        return DigAnswer(r.stdout)


class DigAnswer:
    """dig's status and the data of its answer records."""

    def __init__(self, text):
        self.text = text
        m = re.search(r"status: (\w+)", text)
        self.status = m.group(1) if m else None
        m = re.search(r";; ANSWER SECTION:\n(.*?)(?:\n\n|\Z)", text, re.S)
        self.addresses = [line.split()[4] for line in m.group(1).splitlines()] if m else []


class Cluster:
    """Hosts sharing one etcd and one CA (with a Netns, each in its namespace)."""

    def __init__(self, etcd, lease_ttl_s=10, reconcile_interval_ms=60000, netns=None):
        self.etcd = etcd
        self.lease_ttl_s = lease_ttl_s
        self.reconcile_interval_ms = reconcile_interval_ms
        self.netns = netns
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

    def cluster_section(self, name, peer_address, cert):
        return {"enabled": True, "host_name": name, "etcd_endpoints": self.etcd.endpoints,
                "lease_ttl_s": self.lease_ttl_s, "etcd_timeout_ms": 1000,
                "reconcile_interval_ms": self.reconcile_interval_ms,
                "reconnect_min_ms": 100, "reconnect_max_ms": 1000,
                "peer_listen": "tcp:" + peer_address,
                "peer_certificate": cert.cert, "peer_key": cert.key, "peer_ca": self.ca.cert,
                "peer_connect_timeout_ms": 2000}

    def host(self, name, vms, hostd=None, dns_addresses=None, **lab_args):
        """Starts a host with `vms` and waits until etcd has been read.

        dns_addresses: [dns] on a loopback port answering these for the
        host's VMs. With a Netns every host answers DNS on its own address,
        port 53, with that address, and its listener is ADDRESS:5986."""
        cert = self.pki.peer(self.ca, name)
        overrides = dict(hostd or {})
        namespace = None
        if self.netns:
            namespace, address = self.netns.add_host(name)
            peer_port = 7443  # the namespace's own ports: every one is free
            dns = {"listen": ["%s:53" % address], "addresses": [address]}
            lab_args.setdefault("listeners", [{"address": "tcp:%s:5986" % address,
                                               "guest_port": 5986, "trusted": True,
                                               "trusted_remote": True}])
        else:
            address = "127.0.0.1"
            peer_port = free_tcp_port()
            dns = ({"listen": ["127.0.0.1:0"], "addresses": list(dns_addresses)}
                   if dns_addresses else None)
        if dns:
            overrides["dns"] = dict(dns, **overrides.get("dns", {}))
        overrides["cluster"] = dict(
            self.cluster_section(name, "%s:%d" % (address, peer_port), cert),
            **overrides.get("cluster", {}))
        if self.netns:
            lab = NetnsLab(vms, self.netns, namespace, address, hostd=overrides, **lab_args)
        else:
            lab = Lab(vms, hostd=overrides, **lab_args)
        lab.__enter__()
        host = ClusterHost(name, lab, peer_port, namespace, address)
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

    def fall_behind_a_compaction(self, lagging, leaving, arriving, arriving_vms):
        """`lagging` misses what happens while it is stopped (SIGSTOP) and
        etcd restarts (which breaks its watch): host `arriving` starts,
        `leaving` stops and its VMs' keys go, and etcd compacts the history
        in between. Resumed, `lagging` finds its watch's revision compacted.
        Returns the arriving host."""
        lagging.lab.hostd.popen.send_signal(signal.SIGSTOP)
        try:
            self.etcd.restart_member(0)
            arrived = self.host(arriving, arriving_vms)
            leaving.lab.hostd.stop()
            for vm in leaving.lab.vms:
                self.etcd.ctl("del", "--prefix", "/vmgate/v1/vms/" + vm.uuid)
            self.etcd.ctl("compact", str(self.etcd.revision()))
        finally:
            lagging.lab.hostd.popen.send_signal(signal.SIGCONT)
        return arrived


# -- libvirt events: a VM defined, started, moved --------------------------------

def clear_libvirtd(lv):
    """The session libvirtd without the test driver's own domain."""
    lv.virsh("destroy", "test", check=False)
    lv.virsh("undefine", "test", check=False)


def define_and_start(lv, vm, directory):
    """`vm` defined and started on `lv` (libvirt's define and start events);
    the domain XML's path, for a later move."""
    path = os.path.join(directory, vm.name + ".xml")
    with open(path, "w") as f:
        f.write(domain_xml(vm))
    lv.virsh("define", path)
    lv.virsh("start", vm.name)
    return path


def migrate(vm_name, path, source, destination):
    """The move, as libvirt reports one: gone from `source` (destroyed,
    undefined), then defined and started on `destination`."""
    source.virsh("destroy", vm_name)
    source.virsh("undefine", vm_name)
    destination.virsh("define", path)
    destination.virsh("start", vm_name)
