"""Targets naming many VMs against a real hostd: groups from the config and
from libvirt domain metadata (<vmgate:groups>, read from a test-driver node),
ranges and exclusion, through /v1/resolve, /v1/groups and vmgatectl."""

import json
import os
import subprocess

import vmgate_lab
from vmgate_lab import VM, Lab, UnixHTTPConnection

VMGATECTL = os.environ.get(
    "VMGATECTL", os.path.join(vmgate_lab.SOURCE_DIR, "build", "ci", "tools", "vmgatectl",
                              "vmgatectl"))

VMS = [VM("web01", agent=None, groups=("web",)), VM("web02", agent=None, groups=("web",)),
       VM("web03", agent=None, groups=("web", "canary")), VM("db1", agent=None)]


def lab():
    return Lab(VMS, hostd={"groups": {"all": ["group:web", "db[1-2]"],
                                      "loop_a": ["group:loop_b"], "loop_b": ["group:loop_a"]}})


def admin_json(lab, path):
    c = UnixHTTPConnection(lab.path("admin.sock"))
    c.request("GET", path)
    r = c.getresponse()
    return r.status, json.loads(r.read())


def ctl(lab, *args):
    r = subprocess.run([VMGATECTL, "--admin", "unix:" + lab.path("admin.sock"), *args],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
    return r.returncode, r.stdout, r.stderr


def test_resolve_shows_each_vm_with_the_rule_that_added_it():
    with lab() as l:
        status, body = admin_json(l, "/v1/resolve?target=group:all,%20!web03")
        assert status == 200, body
        assert [vm["name"] for vm in body["vms"]] == ["web01", "web02", "db1"]
        by_name = {vm["name"]: vm for vm in body["vms"]}
        assert by_name["web01"]["added_by"]["source"] == "libvirt"
        assert by_name["web01"]["added_by"]["via"] == ["all", "web"]
        assert by_name["db1"]["added_by"]["rule"] == "range db[1-2] of config group all"
        assert body["unknown"] == ["db2"]
        assert [(x["name"], x["excluded_by"]) for x in body["excluded"]] == [("web03", "!web03")]

        code, out, err = ctl(l, "resolve", "group:web, !group:canary")
        assert code == 0, err
        assert "2 VMs" in out and "web01" in out and "web02" in out
        assert "libvirt metadata of web01 (via group:web)" in out
        assert "excluded:" in out and "!group:canary" in out

        status, body = admin_json(l, "/v1/resolve?target=group:loop_a")
        assert status == 400
        assert "group:loop_a → group:loop_b → group:loop_a" in body["error"]
        status, body = admin_json(l, "/v1/resolve?target=web[1-20000]")
        assert status == 400 and "fanout.max_targets" in body["error"]
        code, out, _ = ctl(l, "resolve", "group:nosuch")
        assert code == 1 and "not known" in out


def test_groups_lists_members_and_where_they_come_from():
    with lab() as l:
        status, groups = admin_json(l, "/v1/groups")
        assert status == 200
        by_name = {g["name"]: g for g in groups}
        assert set(by_name) >= {"all", "web", "canary"}
        assert by_name["canary"]["members"][0]["name"] == "web03"
        assert by_name["canary"]["members"][0]["from"] == "libvirt"
        assert by_name["all"]["in_config"] is True
        code, out, err = ctl(l, "groups")
        assert code == 0, err
        assert "group:all (config)" in out
        assert "group:canary" in out and "libvirt" in out
