"""Who a guest-started connection comes from is where it arrived, and
nothing it sends: hostd's per-VM sockets come and go with the VMs (a session
libvirtd, changed with virsh while hostd runs), a connection whose VM was
undefined while it waited is refused as unknown, and over hybrid vsock
(Firecracker's UDS_PATH_PORT) the socket names the VM whose fcvsock: path
it extends."""

import os
import socket

import pytest

from vmgate_lab import GUESTD, VM, Lab, SessionLibvirtd, domain_xml, parse_kv, wait_until

EVENT_WAIT = 10.0  # seconds; events arrive in milliseconds, this only bounds a failure

root_only = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: libvirtd runs unprivileged as nobody via setpriv")


def exchange(path, data, timeout=10):
    """Connects to a unix socket, sends `data`, returns all that comes back."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(data)
        return read_all(s)


def read_all(s):
    chunks = []
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


SEND_ECHO = (b"VMGATE/1 SEND host:monitor\r\nPort: 80\r\n\r\n"
             b"GET /echo-headers HTTP/1.1\r\nHost: monitor\r\nForwarded: for=\"vm:other\"\r\n\r\n")


@root_only
def test_per_vm_sockets_follow_the_vms_and_an_undefined_caller_is_refused():
    with SessionLibvirtd() as libvirtd, \
            Lab([VM("vm5", cid=9, outbound=True)], libvirt_uri=libvirtd.uri, inbound=True,
                host_services=["monitor"]) as lab:
        vm = lab.vms[0]
        path = lab.inbound_path("vm5")
        assert not os.path.exists(path)

        xml = lab.path("vm5.xml")
        with open(xml, "w") as f:
            f.write(domain_xml(vm))
        libvirtd.virsh("define", xml)
        wait_until(lambda: os.path.exists(path), EVENT_WAIT, "vm5's socket")
        r = lab.guestd_command("vm5", "send", "host:monitor", "--path", "/echo-headers")
        assert r.returncode == 0, r.stderr
        assert b'Forwarded: for="vm:vm5"' in r.stdout

        # Accepted while vm5 is defined; its preamble comes after vm5 is gone.
        held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        held.settimeout(10)
        held.connect(path)
        try:
            libvirtd.virsh("undefine", "vm5")
            wait_until(lambda: not os.path.exists(path), EVENT_WAIT, "vm5's socket to go")
            held.sendall(SEND_ECHO)
            answer = read_all(held)
        finally:
            held.close()
        assert answer.startswith(b"VMGATE/1 403 unknown-vm\r\n"), answer
        assert b"vm %s is no longer defined" % vm.uuid.encode() in answer
        refused = [parse_kv(l) for l in lab.hostd.lines() if "event=guest_refused " in l]
        assert refused and refused[-1]["status"] == "403", refused

        r = lab.guestd_command("vm5", "send", "host:monitor")
        assert r.returncode == 1 and b"hostd-unreachable" in r.stderr, r.stderr


def test_hybrid_vsock_names_the_vm_by_its_uds_path():
    with Lab([VM("vm6", agent=None)], host_services=["monitor"], start_hostd=False) as lab:
        # Firecracker's layout: the VM's vsock is DIR/vm6.hv; a guest's
        # connection to the host's port 5501 arrives on DIR/vm6.hv_5501.
        lab.hostd_overrides["channel"] = {"transport": "fcvsock:" + lab.path("{name}.hv") +
                                          ":{port}"}
        lab.hostd_overrides["inbound"] = {"hybrid_port": 5501}
        lab.start_hostd()
        path = lab.path("vm6.hv_5501")
        wait_until(lambda: os.path.exists(path), EVENT_WAIT, "vm6's hybrid socket")

        # The VMM relays the guest's bytes as they come: a raw exchange.
        answer = exchange(path, SEND_ECHO)
        assert answer.startswith(b"VMGATE/1 200 OK\r\n\r\nHTTP/1.1 200 "), answer
        assert b'Forwarded: for="vm:vm6"' in answer
        assert b"vm:other" not in answer
        assert b"X-VM-Uuid: " + lab.vms[0].uuid.encode() in answer

        # guestd's CLI, its [outbound] hostd the relayed socket.
        config = lab.path("guestd-cli.toml")
        with open(config, "w") as f:
            f.write('[outbound]\nhostd = "unix:%s"\n' % path)
        import subprocess
        r = subprocess.run([GUESTD, "send", "host:monitor", "--path", "/hello",
                            "--config", config], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=30)
        assert r.returncode == 0 and r.stdout == b"hello from host-monitor\n", r.stderr
