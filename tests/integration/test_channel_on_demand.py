"""Channels formed on demand (libvirt.attach_vsock_on_demand): a request for
a running domain without a vsock device makes hostd attach
<vsock model='virtio'><cid auto='yes'/></vsock> to the live domain, through
a real libvirtd (session mode, run as nobody, sharing test:///default).

libvirt's test driver cannot take this further, and the tests say where it
stops: in libvirt 9.0 it has no virDomainAttachDeviceFlags at all, so the
attach is refused by the driver inside libvirtd, and that refusal, libvirt's
own words, is what the client's 503 carries: the proof that hostd's call
reached libvirt. A device written with auto='yes' gets no CID from the test
driver (QEMU assigns one at start), which hostd reports as such. What
follows a CID (the directory, guestd's answer, one attach in flight per
domain) is proven against a stand-in for libvirt in
tests/unit/channel_on_demand_test.cpp."""

import os

import pytest

from vmgate_lab import (VM, Lab, SessionLibvirtd, UnixHTTPConnection, domain_xml, parse_kv,
                        wait_until)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: libvirtd runs unprivileged as nobody via setpriv")

NOT_SUPPORTED = ("this function is not supported by the connection driver: "
                 "virDomainAttachDeviceFlags")
AUTO_CID = "<vsock model='virtio'><cid auto='yes'/></vsock>"


@pytest.fixture(scope="module")
def libvirtd():
    with SessionLibvirtd() as lv:
        yield lv


def define_and_start(lab, libvirtd, vm, xml):
    path = lab.path(vm.name + ".xml")
    with open(path, "w") as f:
        f.write(xml)
    libvirtd.virsh("define", path)
    libvirtd.virsh("start", vm.name)


@pytest.fixture(scope="module")
def lab(libvirtd):
    bare = VM("bare", vsock=False, agent=None, guestd=False)
    auto = VM("autocid", vsock=False, agent=None, guestd=False)
    hostd = {"libvirt": {"attach_vsock_on_demand": True, "attach_timeout_ms": 5000}}
    with Lab([bare, auto], hostd=hostd, libvirt_uri=libvirtd.uri, start_hostd=False) as lab:
        lab.hostd_overrides["channel"] = {"transport": "unix:" + lab.path("cid-{cid}.sock")}
        # First: test:///default keeps what is defined only while a client is connected.
        lab.start_hostd()
        define_and_start(lab, libvirtd, bare, domain_xml(bare))
        define_and_start(lab, libvirtd, auto,
                         domain_xml(auto).replace("<devices></devices>",
                                                  "<devices>%s</devices>" % AUTO_CID))
        for name in ("bare", "autocid"):
            wait_until(lambda: known(lab, name), 10, "hostd to know " + name)
        yield lab


def known(lab, name):
    """Whether hostd's directory has the domain (asked of the admin API,
    which attaches nothing)."""
    c = UnixHTTPConnection(lab.path("admin.sock"))
    try:
        c.request("GET", "/v1/resolve?target=" + name)
        return c.getresponse().status != 404
    finally:
        c.close()


def attach_lines(lab, vm):
    return [parse_kv(l) for l in lab.hostd.lines()
            if "event=vsock_attach " in l and parse_kv(l).get("vm") == vm]


def test_a_domain_without_vsock_gets_an_attach_and_libvirts_refusal_reaches_the_client(
        lab, libvirtd):
    before = len(attach_lines(lab, "bare"))
    r = lab.curl("/hello", "-H", "X-VM-Id: bare")
    assert r.status == 503, (r, r.text)
    assert r.text.startswith(
        "503 Service Unavailable: vm bare has no vsock device, and libvirt could not attach one: " + NOT_SUPPORTED), \
        r.text
    assert len(attach_lines(lab, "bare")) == before + 1
    record = lab.last_request(vm="bare")
    assert record["status"] == "503", record
    # The test driver refused, so the live domain is as it was.
    assert "<vsock" not in libvirtd.virsh("dumpxml", "bare").stdout


def test_a_refused_attach_is_not_asked_of_libvirt_again_within_attach_retry_after(lab, libvirtd):
    # A client retrying in a loop: libvirt hears of the first request only
    # (the lab keeps the default attach_retry_after_ms, 10 s).
    lab.curl("/hello", "-H", "X-VM-Id: bare")
    attached = len(attach_lines(lab, "bare"))
    for _ in range(3):
        r = lab.curl("/hello", "-H", "X-VM-Id: bare")
        assert r.status == 503, (r, r.text)
        assert r.text.startswith(
            "503 Service Unavailable: vm bare has no vsock device, and libvirt could not attach "
            "one: " + NOT_SUPPORTED + " ("), r.text
        assert "libvirt.attach_retry_after_ms)" in r.text, r.text
    assert len(attach_lines(lab, "bare")) == attached


def test_a_device_libvirt_gave_no_cid_is_a_503_saying_so_and_not_attached_twice(lab, libvirtd):
    # The test driver keeps auto='yes' without an address, as a QEMU domain
    # whose CID is not assigned yet would read.
    assert "<cid auto='yes'/>" in libvirtd.virsh("dumpxml", "autocid").stdout
    r = lab.curl("/hello", "-H", "X-VM-Id: autocid")
    assert r.status == 503, (r, r.text)
    assert "vm autocid has a vsock device now, but libvirt assigned it no CID" in r.text, r.text
    # The live XML had a device: hostd re-read it rather than attach a second.
    assert libvirtd.virsh("dumpxml", "autocid").stdout.count("<vsock") == 1


def test_without_attach_on_demand_a_domain_without_vsock_is_503_and_libvirt_is_not_asked(
        libvirtd):
    bare = VM("bare2", vsock=False, agent=None, guestd=False)
    with Lab([bare], libvirt_uri=libvirtd.uri, start_hostd=False) as lab:
        lab.hostd_overrides["channel"] = {"transport": "unix:" + lab.path("cid-{cid}.sock")}
        lab.start_hostd()
        define_and_start(lab, libvirtd, bare, domain_xml(bare))
        try:
            wait_until(lambda: known(lab, "bare2"), 10, "hostd to know bare2")
            r = lab.curl("/hello", "-H", "X-VM-Id: bare2")
            assert r.status == 503 and "vm bare2 has no vsock device" in r.text, (r, r.text)
            assert not attach_lines(lab, "bare2")
        finally:
            libvirtd.virsh("destroy", "bare2", check=False)
            libvirtd.virsh("undefine", "bare2", check=False)
