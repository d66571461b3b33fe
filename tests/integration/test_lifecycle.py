"""hostd follows libvirt lifecycle events while it runs: a domain defined,
started, destroyed, undefined or redefined in another process (virsh against
a shared libvirtd) changes what hostd answers, with no restart and no full
resynchronisation, and a redefined domain's new vsock CID is used."""

import os

import pytest

from vmgate_lab import VM, Lab, SessionLibvirtd, domain_xml, wait_until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: libvirtd runs unprivileged as nobody via setpriv")

EVENT_WAIT = 10.0  # seconds; events arrive in milliseconds, this only bounds a failure


@pytest.fixture(scope="module")
def libvirtd():
    with SessionLibvirtd() as lv:
        yield lv


@pytest.fixture(scope="module")
def lab(libvirtd):
    # vm9 is not defined yet: its guestd and agent already run, waiting.
    with Lab([VM("vm9", cid=7)], libvirt_uri=libvirtd.uri, start_hostd=False) as lab:
        # The channel path follows the CID, so a changed CID is observable.
        lab.hostd_overrides["channel"] = {"transport": "unix:" + lab.path("cid-{cid}.sock"),
                                          # pooled channels outlive the whole test
                                          "pool_idle_timeout_ms": 600000}
        os.symlink(lab.socket_path("vm9"), lab.path("cid-7.sock"))
        lab.start_hostd()
        yield lab


def status_of(lab, vm):
    return lab.curl("/hello", "-H", "X-VM-Id: " + vm).status


def wait_for_status(lab, vm, want):
    seen = []

    def check():
        seen.append(status_of(lab, vm))
        return seen[-1] == want

    wait_until(check, EVENT_WAIT, "%s to answer %d (last: %s)" % (vm, want, seen[-1:]),
               interval=0.05)


def define(lab, libvirtd, vm):
    path = lab.path("%s-cid%d.xml" % (vm.name, vm.cid))
    with open(path, "w") as f:
        f.write(domain_xml(vm))
    libvirtd.virsh("define", path)


def test_domain_lifecycle_is_followed_without_restarting_hostd(lab, libvirtd):
    vm = lab.vms[0]
    pid = lab.hostd.pid
    assert status_of(lab, "vm9") == 404

    define(lab, libvirtd, vm)  # defined domains are shut off
    wait_for_status(lab, "vm9", 503)

    libvirtd.virsh("start", "vm9")
    wait_for_status(lab, "vm9", 200)
    assert lab.curl("/hello", "-H", "X-VM-Id: " + vm.uuid).text == "hello from vm9\n"

    libvirtd.virsh("destroy", "vm9")
    wait_for_status(lab, "vm9", 503)

    libvirtd.virsh("start", "vm9")
    wait_for_status(lab, "vm9", 200)

    libvirtd.virsh("destroy", "vm9")
    libvirtd.virsh("undefine", "vm9")
    wait_for_status(lab, "vm9", 404)

    # Same name, new CID: only the new CID's channel leads to guestd now.
    os.unlink(lab.path("cid-7.sock"))
    os.symlink(lab.socket_path("vm9"), lab.path("cid-8.sock"))
    vm.cid = 8
    define(lab, libvirtd, vm)
    logged = len(lab.hostd_requests())
    libvirtd.virsh("start", "vm9")
    wait_for_status(lab, "vm9", 200)
    # The pooled channel to CID 7 is still open (its guestd lives on here), but
    # it leads to the VM's old address: the request went over a new channel.
    first_ok = wait_until(
        lambda: next((r for r in lab.hostd_requests()[logged:]
                      if r.get("vm") == "vm9" and r["status"] == "200"), None),
        EVENT_WAIT, "the record of vm9's first answer at CID 8")
    assert "channel" not in first_ok, first_ok

    # All of it through events: the same hostd, and one full sync (at start).
    assert lab.hostd.pid == pid and lab.hostd.alive()
    syncs = [l for l in lab.hostd.lines() if "event=libvirt_sync " in l]
    assert len(syncs) == 1, syncs


def test_an_unrelated_domain_change_leaves_a_running_vm_routable(lab, libvirtd):
    if status_of(lab, "vm9") != 200:
        pytest.skip("depends on the lifecycle test leaving vm9 running")
    other = VM("vm-other", cid=20, agent=None)
    define(lab, libvirtd, other)
    wait_for_status(lab, "vm-other", 503)
    assert status_of(lab, "vm9") == 200
    libvirtd.virsh("undefine", "vm-other")
    wait_for_status(lab, "vm-other", 404)
    assert status_of(lab, "vm9") == 200
