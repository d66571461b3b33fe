"""hostd answers DNS for names under routing.host_suffix, asked by dig over
UDP and TCP: a VM's name (or UUID) → the addresses of the host that runs it,
NXDOMAIN for a VM it does not know, REFUSED for names outside its zone, and
the directory followed as VMs come and go."""

import os
import re
import socket
import struct
import subprocess

import pytest

from vmgate_lab import VM, Lab, SessionLibvirtd, domain_xml, wait_until

V4 = "192.0.2.10"
V6 = "2001:db8::10"
SUFFIX = "vms.example"


def dns_lab(vms, **kw):
    hostd = {"dns": {"listen": ["127.0.0.1:0"], "addresses": [V4, V6], "ttl_seconds": 7,
                     "tcp_idle_timeout_ms": 500}}
    return Lab(vms, hostd=hostd, **kw)


def dns_port(lab):
    # Logged just after the listeners and libvirt's first sync, which is all
    # the lab waits for.
    m = lab.hostd.wait_for(r"event=dns_listening addr=\S+:(\d+) ")
    return int(m.group(1))


class Dig:
    def __init__(self, stdout):
        self.text = stdout
        m = re.search(r"status: (\w+)", stdout)
        self.status = m.group(1) if m else None
        m = re.search(r";; flags: ([a-z ]+);", stdout)
        self.flags = m.group(1).split() if m else []
        self.answers = self.section("ANSWER")
        self.authority = self.section("AUTHORITY")

    def section(self, name):
        m = re.search(r";; %s SECTION:\n(.*?)(?:\n\n|\Z)" % name, self.text, re.S)
        return [line.split() for line in m.group(1).splitlines()] if m else []


def dig(lab, name, qtype="A", *extra):
    r = subprocess.run(["dig", "@127.0.0.1", "-p", str(dns_port(lab)), name, qtype,
                        "+time=5", "+tries=1", "+norecurse", *extra],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    return Dig(r.stdout)


def query_bytes(name, qtype=1, qid=0x1234):
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    qname = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    return header + qname + struct.pack("!HH", qtype, 1)


@pytest.fixture(scope="module")
def lab():
    with dns_lab([VM("vm1"), VM("vm2", running=False)]) as lab:
        yield lab


@pytest.mark.parametrize("carrier", ["udp", "tcp"])
def test_a_vm_name_answers_the_address_of_the_host_that_runs_it(lab, carrier):
    extra = ("+tcp",) if carrier == "tcp" else ()
    r = dig(lab, "vm1." + SUFFIX, "A", *extra)
    assert r.status == "NOERROR", r.text
    assert "aa" in r.flags and "ra" not in r.flags, r.text
    assert [a[3:] for a in r.answers] == [["A", V4]], r.text
    assert r.answers[0][1] == "7", r.text  # dns.ttl_seconds
    r = dig(lab, "vm1." + SUFFIX, "AAAA", *extra)
    assert [a[3:] for a in r.answers] == [["AAAA", V6]], r.text


def test_names_are_matched_ignoring_case_and_a_uuid_names_its_vm(lab):
    r = dig(lab, "VM1.VMS.Example", "A")
    assert [a[4] for a in r.answers] == [V4], r.text
    uuid = lab.vms[0].uuid
    r = dig(lab, "%s.%s" % (uuid, SUFFIX), "A")
    assert [a[4] for a in r.answers] == [V4], r.text


def test_a_shut_off_vm_still_answers_its_host(lab):
    # Where it runs is what DNS says; that it is not running is hostd's 503 to give.
    r = dig(lab, "vm2." + SUFFIX, "A")
    assert r.status == "NOERROR" and [a[4] for a in r.answers] == [V4], r.text


def test_an_unknown_vm_is_nxdomain_with_the_zone_soa(lab):
    r = dig(lab, "nosuchvm." + SUFFIX, "A")
    assert r.status == "NXDOMAIN", r.text
    assert r.answers == [], r.text
    assert [a[3] for a in r.authority] == ["SOA"] and r.authority[0][0] == SUFFIX + ".", r.text


def test_a_type_the_vm_has_no_record_of_is_nodata(lab):
    r = dig(lab, "vm1." + SUFFIX, "MX")
    assert r.status == "NOERROR" and r.answers == [], r.text
    assert [a[3] for a in r.authority] == ["SOA"], r.text


def test_the_zone_apex_answers_its_soa(lab):
    r = dig(lab, SUFFIX, "SOA")
    assert r.status == "NOERROR" and [a[3] for a in r.answers] == ["SOA"], r.text


def test_a_name_outside_the_zone_is_refused_hostd_does_no_recursion(lab):
    r = dig(lab, "example.com", "A")
    assert r.status == "REFUSED", r.text
    r = dig(lab, "vm1.vms.example.org", "A")
    assert r.status == "REFUSED", r.text


def test_garbage_over_udp_gets_formerr_or_nothing_and_the_next_query_is_answered(lab):
    port = dns_port(lab)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        # A header that says one question, then bytes that are no name.
        s.sendto(struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0) + b"\xff" * 40,
                 ("127.0.0.1", port))
        reply, _ = s.recvfrom(4096)
        qid, flags = struct.unpack("!HH", reply[:4])
        assert qid == 0xBEEF and flags & 0x8000 and flags & 0x000F == 1, reply  # FORMERR
        # A response (QR set) is never answered: two servers cannot ping-pong.
        s.sendto(struct.pack("!HHHHHH", 0xBEEF, 0x8100, 0, 0, 0, 0), ("127.0.0.1", port))
        with pytest.raises(socket.timeout):
            s.recvfrom(4096)
        # Too short for a header: nothing either.
        s.sendto(b"\x00\x01", ("127.0.0.1", port))
        with pytest.raises(socket.timeout):
            s.recvfrom(4096)
    finally:
        s.close()
    assert dig(lab, "vm1." + SUFFIX).status == "NOERROR"


def read_exact(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            return data
        data += chunk
    return data


def test_one_tcp_connection_carries_several_queries_and_an_idle_one_is_closed(lab):
    s = socket.create_connection(("127.0.0.1", dns_port(lab)), timeout=5)
    try:
        for qid, name in ((1, "vm1." + SUFFIX), (2, "nosuchvm." + SUFFIX)):
            q = query_bytes(name, qid=qid)
            s.sendall(struct.pack("!H", len(q)) + q)
        replies = []
        for _ in range(2):
            (length,) = struct.unpack("!H", read_exact(s, 2))
            replies.append(read_exact(s, length))
        assert [struct.unpack("!H", r[:2])[0] for r in replies] == [1, 2]
        assert [struct.unpack("!H", r[2:4])[0] & 0xF for r in replies] == [0, 3]  # NOERROR, NXDOMAIN
        # dns.tcp_idle_timeout_ms is 500: hostd closes, the client sees EOF.
        s.settimeout(10)
        assert s.recv(1) == b""
    finally:
        s.close()


def test_a_dns_section_without_a_host_suffix_is_a_config_error_naming_the_key(tmp_path):
    from vmgate_lab import HOSTD
    path = tmp_path / "hostd.toml"
    path.write_text('[dns]\nlisten = ["127.0.0.1:5353"]\naddresses = ["192.0.2.1"]\n')
    r = subprocess.run([HOSTD, "--config", str(path), "--check-config"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=30)
    assert r.returncode != 0
    assert re.search(r"hostd\.toml:2: dns\.listen: .*host_suffix", r.stderr), r.stderr
    path.write_text('[routing]\nhost_suffix = "vms.example"\n[dns]\nlisten = ["127.0.0.1:5353"]\n'
                    'addresses = ["not-an-address"]\n')
    r = subprocess.run([HOSTD, "--config", str(path), "--check-config"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=30)
    assert r.returncode != 0
    assert re.search(r"hostd\.toml:5: dns\.addresses: 'not-an-address'", r.stderr), r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: libvirtd runs as nobody via setpriv")
def test_answers_follow_the_directory_as_a_vm_is_defined_and_undefined():
    with SessionLibvirtd() as libvirtd, dns_lab([VM("dnsvm", cid=9)], libvirt_uri=libvirtd.uri,
                                                 start_hostd=False) as lab:
        lab.start_hostd()
        assert dig(lab, "dnsvm." + SUFFIX).status == "NXDOMAIN"
        xml = os.path.join(lab.dir, "dnsvm.xml")
        with open(xml, "w") as f:
            f.write(domain_xml(lab.vms[0]))
        libvirtd.virsh("define", xml)
        wait_until(lambda: dig(lab, "dnsvm." + SUFFIX).status == "NOERROR", 10,
                   "the defined VM's name to answer")
        libvirtd.virsh("undefine", "dnsvm")
        wait_until(lambda: dig(lab, "dnsvm." + SUFFIX).status == "NXDOMAIN", 10,
                   "the undefined VM's name to be gone")
