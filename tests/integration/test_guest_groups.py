"""A guest joins and leaves groups (`vmgate-guestd join|leave GROUP`): hostd
records the membership for the VM its connection's arrival names, only for
groups [groups.joinable] lists and only for the VMs it lets; /v1/groups
shows it as a guest join, and it survives a restart of hostd (the state
file)."""

import json

from vmgate_lab import VM, Lab, UnixHTTPConnection, parse_kv


def groups(lab):
    c = UnixHTTPConnection(lab.path("admin.sock"))
    try:
        c.request("GET", "/v1/groups")
        r = c.getresponse()
        assert r.status == 200
        return {g["name"]: g for g in json.loads(r.read())}
    finally:
        c.close()


def members(lab, group):
    g = groups(lab).get(group)
    return sorted((m["name"], m["from"]) for m in g["members"]) if g else []


def test_join_and_leave_are_recorded_for_the_calling_vm_and_survive_a_restart():
    with Lab([VM("vm1", outbound=True), VM("vm2", outbound=True)], inbound=True,
             hostd={"groups.joinable": {"web": ["vm*"], "db": ["vm2"]}}) as lab:
        r = lab.guestd_command("vm1", "join", "web")
        assert r.returncode == 0, r.stderr
        assert r.stdout == b"joined web\n"
        r = lab.guestd_command("vm2", "join", "web")
        assert r.returncode == 0, r.stderr
        assert members(lab, "web") == [("vm1", "guest_join"), ("vm2", "guest_join")]

        r = lab.guestd_command("vm2", "leave", "web")
        assert r.returncode == 0 and r.stdout == b"left web\n", r.stderr
        assert members(lab, "web") == [("vm1", "guest_join")]

        # Per group, who may join: db lets vm2 only.
        r = lab.guestd_command("vm1", "join", "db")
        assert r.returncode == 1
        assert b"refused (403 not-allowed): vm vm1 may not join group 'db'" in r.stderr, r.stderr
        r = lab.guestd_command("vm1", "join", "ops")
        assert r.returncode == 1
        assert b"refused (403 not-joinable): group 'ops' is not joinable" in r.stderr, r.stderr
        assert members(lab, "db") == []
        logged = [parse_kv(l) for l in lab.hostd.lines() if "event=guest_membership " in l]
        assert [(f["vm"], f["verb"], f["group"], f["status"]) for f in logged] == [
            ("vm1", "JOIN", "web", "200"), ("vm2", "JOIN", "web", "200"),
            ("vm2", "LEAVE", "web", "200"), ("vm1", "JOIN", "db", "403"),
            ("vm1", "JOIN", "ops", "403")]

        # The state file keeps it: a new hostd knows vm1 is in web.
        lab.hostd.stop()
        lab.start_hostd()
        assert members(lab, "web") == [("vm1", "guest_join")]
        r = lab.guestd_command("vm1", "leave", "web")
        assert r.returncode == 0, r.stderr
        assert members(lab, "web") == []
