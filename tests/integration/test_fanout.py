"""Fan-out against real processes: 20 VMs, each a guestd on the unix stand-in
with a native agent, except one whose guestd is not there (unreachable), one
whose agent never answers (timed out), one that is shut off (not running) and
one the ACL rules deny (a 403 part when the client names it, itself or in a
range; never revealed when only the group brings it in), all in one static
group with a VM of another kind the client may not see at all. One POST of a random body reaches every VM that can take it; each
part and the summary are checked, the body each agent received compared by
SHA-256, and the multipart read as clients read it: python's `email`,
`requests`, curl. vmgatectl send collapses the same answers and exits 1."""

import email.parser
import email.policy
import hashlib
import json
import os
import subprocess

import pytest
import requests

from vmgate_lab import VM, Lab, SilentAgent, metric, parse_kv, wait_until

VM_TIMEOUT_MS = 1500
BODY = os.urandom(100 * 1024)
BODY_SHA = hashlib.sha256(BODY).hexdigest()

NAMES = ["web%02d" % i for i in range(1, 21)]
DEAD = "web17"      # no guestd: unreachable
SILENT = "web18"    # an agent that reads the request and never answers
SHUT_OFF = "web19"  # not running: never tried
DENIED = "web20"    # the ACL rules deny it to this client
ANSWERING = [n for n in NAMES if n not in (DEAD, SILENT, SHUT_OFF, DENIED)]
HIDDEN = "db01"     # denied and never named: never revealed

VMGATECTL = os.environ.get("VMGATECTL")


@pytest.fixture(scope="module")
def lab():
    silent = SilentAgent()
    vms = []
    for name in NAMES:
        if name == DEAD:
            vms.append(VM(name, guestd=False))
        elif name == SILENT:
            vms.append(VM(name, agent=None,
                          guestd_agents={"5986": "tcp:127.0.0.1:%d" % silent.port}))
        elif name == SHUT_OFF:
            vms.append(VM(name, running=False))
        else:
            vms.append(VM(name))
    vms.append(VM(HIDDEN))
    listeners = [
        # The client is known by its address, so the ACL rules apply to it.
        {"address": "tcp:127.0.0.1:0", "guest_port": 5986, "identity": "source",
         "name": "source"},
        {"address": "tcp:127.0.0.1:0", "guest_port": 5986, "trusted": True, "name": "trusted"},
    ]
    acl = [
        {"name": "lab-web", "action": "allow", "identities": ["cidr:127.0.0.0/8"],
         "vms": ["web*"]},
        {"name": "not-web20", "action": "deny", "identities": ["cidr:127.0.0.0/8"],
         "vms": [DENIED]},
    ]
    # A guestd that is not there is tried again until the connect timeout:
    # inside the VM's own, so that the dead one is unreachable, not timed out.
    hostd = {"fanout": {"vm_timeout_ms": VM_TIMEOUT_MS, "max_parallel": 8},
             "channel": {"connect_timeout_ms": 500},
             "groups": {"fleet": ["web[01-20]", HIDDEN]}}
    with Lab(vms, hostd=hostd, listeners=listeners, acl=acl) as lab:
        yield lab
    silent.close()


FLEET = "group:fleet"             # DENIED and HIDDEN came in through the group: not revealed
FLEET_AND_DENIED = FLEET + "," + DENIED  # DENIED named: a 403 part
RANGE = "web[01-20]"               # DENIED named by the range: a 403 part


def parse_multipart(content_type, body):
    """The parts as python's email package reads a MIME multipart."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    assert message.is_multipart()
    return list(message.iter_parts())


def agent_response(part):
    """The agent's HTTP response a part carries: status, headers, body."""
    raw = part.get_payload(decode=True)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    assert int(headers["content-length"]) == len(body)
    return status, headers, body


def check_parts(parts, request_id, expect_denied_part):
    """Every VM in exactly one class, each answered one with the body's SHA-256."""
    *vm_parts, summary_part = parts
    assert summary_part["X-VM-Summary"] == "true"
    summary = json.loads(summary_part.get_payload(decode=True))
    by_vm = {p["X-VM-Id"]: p for p in vm_parts}
    assert len(by_vm) == len(vm_parts), "a VM has two parts"
    expected = set(NAMES) if expect_denied_part else set(NAMES) - {DENIED}
    assert set(by_vm) == expected
    assert HIDDEN not in by_vm
    for name in ANSWERING:
        p = by_vm[name]
        assert p["X-VM-Class"] == "answered", (name, dict(p))
        assert p["X-VM-Status"] == "200"
        assert p["X-VM-Uuid"]
        assert p.get_content_type() == "application/http"
        status, headers, body = agent_response(p)
        assert status == 200
        assert body == ("%s %d\n" % (BODY_SHA, len(BODY))).encode(), name
    assert by_vm[DEAD]["X-VM-Class"] == "unreachable"
    assert by_vm[DEAD]["X-VM-Status"] == "502"
    assert by_vm[SILENT]["X-VM-Class"] == "timed_out"
    assert by_vm[SILENT]["X-VM-Status"] == "504"
    assert by_vm[SHUT_OFF]["X-VM-Class"] == "not_running"
    assert by_vm[SHUT_OFF]["X-VM-Status"] == "503"
    if expect_denied_part:
        assert by_vm[DENIED]["X-VM-Class"] == "refused"
        assert by_vm[DENIED]["X-VM-Status"] == "403"
        assert by_vm[DENIED]["X-VM-Uuid"] == ""  # it wrote no UUID: it learns none
        status, _, _ = agent_response(by_vm[DENIED])
        assert status == 403
    # The summary: every VM named once, in the class of its part.
    assert summary["request_id"] == request_id
    assert summary["vms"] == len(expected)
    assert summary["answered"] == len(ANSWERING)
    named = {}
    for vm_class, entry in summary["classes"].items():
        assert entry["count"] == len(entry["vms"])
        for vm in entry["vms"]:
            assert vm not in named, "%s is in two classes" % vm
            named[vm] = vm_class
    assert named == {name: p["X-VM-Class"] for name, p in by_vm.items()}
    return summary


def test_one_post_reaches_every_vm_and_each_answer_comes_back_as_a_part(lab):
    r = requests.post(lab.url("/sha256", port=lab.ports[0]), data=BODY,
                      headers={"X-VM-Id": FLEET}, timeout=30, stream=True)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("multipart/mixed; boundary=")
    assert r.headers["Transfer-Encoding"] == "chunked"
    assert r.headers["X-VM-Count"] == str(len(NAMES) - 1)
    content = r.raw.read()
    request_id = r.headers["X-Request-Id"]
    check_parts(parse_multipart(r.headers["Content-Type"], content), request_id,
                expect_denied_part=False)
    # One request record and one line per VM, under one request id.
    lines = lab.request_log(request_id)
    records = [parse_kv(l) for l in lines if "event=request " in l]
    per_vm = [parse_kv(l) for l in lines if "event=fanout_vm " in l]
    assert len(records) == 1
    assert records[0]["vms"] == str(len(NAMES) - 1)
    assert records[0]["failed"] == "3"
    assert records[0]["status"] == "200"
    assert sorted(v["vm"] for v in per_vm) == sorted(set(NAMES) - {DENIED})
    assert {v["vm"]: v["class"] for v in per_vm}[SILENT] == "timed_out"


def test_the_trusted_client_sees_every_vm_of_the_group(lab):
    r = requests.post(lab.url("/sha256", port=lab.ports[1]), data=BODY,
                      headers={"X-VM-Id": FLEET}, timeout=30, stream=True)
    parts = parse_multipart(r.headers["Content-Type"], r.raw.read())
    by_vm = {p["X-VM-Id"]: p for p in parts[:-1]}
    assert set(by_vm) == set(NAMES) | {HIDDEN}
    assert by_vm[DENIED]["X-VM-Class"] == "answered"


def test_a_vm_the_client_names_but_may_not_reach_is_a_403_part(lab):
    for target in (FLEET_AND_DENIED, RANGE):
        r = requests.post(lab.url("/sha256", port=lab.ports[0]), data=BODY,
                          headers={"X-VM-Id": target}, timeout=30, stream=True)
        check_parts(parse_multipart(r.headers["Content-Type"], r.raw.read()),
                    r.headers["X-Request-Id"], expect_denied_part=True)


def test_a_target_of_vms_the_client_may_not_see_is_refused_403_as_unicast(lab):
    r = requests.post(lab.url("/sha256", port=lab.ports[0]), data=BODY,
                      headers={"X-VM-Id": "group:fleet,!web[01-19]"}, timeout=30)
    assert r.status_code == 403
    assert HIDDEN not in r.text and DENIED not in r.text


def test_the_silent_vm_holds_neither_the_others_nor_the_stream(lab):
    r = requests.post(lab.url("/sha256", port=lab.ports[0]), data=BODY,
                      headers={"X-VM-Id": FLEET}, timeout=30, stream=True)
    parts = parse_multipart(r.headers["Content-Type"], r.raw.read())
    order = [p["X-VM-Id"] for p in parts[:-1]]
    # The timed-out VM's part comes after every answered one.
    assert order.index(SILENT) > max(order.index(n) for n in ANSWERING)
    summary = json.loads(parts[-1].get_payload(decode=True))
    assert summary["ms"] < VM_TIMEOUT_MS + 3000


def test_curl_reads_the_stream_and_email_parses_it(lab):
    path = lab.path("body.bin")
    with open(path, "wb") as f:
        f.write(BODY)
    r = lab.curl(lab.url("/sha256", port=lab.ports[0]), "--data-binary", "@" + path,
                 "-H", "X-VM-Id: " + FLEET_AND_DENIED)
    assert r.status == 200, r.stderr
    check_parts(parse_multipart(r.headers["content-type"], r.body), r.request_id,
                expect_denied_part=True)


def test_ndjson_gives_one_object_per_vm_then_the_summary(lab):
    r = requests.post(lab.url("/sha256", port=lab.ports[0]), data=BODY,
                      headers={"X-VM-Id": RANGE, "Accept": "application/x-ndjson"},
                      timeout=30, stream=True)
    assert r.headers["Content-Type"] == "application/x-ndjson"
    lines = [json.loads(l) for l in r.iter_lines() if l]
    *vms, summary = lines
    assert summary["summary"] is True
    by_vm = {v["vm"]: v for v in vms}
    assert set(by_vm) == set(NAMES)
    for name in ANSWERING:
        assert by_vm[name]["class"] == "answered"
        assert by_vm[name]["response"]["body"] == "%s %d\n" % (BODY_SHA, len(BODY))
        assert by_vm[name]["response"]["body_encoding"] == "utf-8"
    assert by_vm[SILENT]["class"] == "timed_out"
    assert summary["classes"]["refused"]["vms"] == [DENIED]


def test_a_body_over_fanout_max_body_is_refused_413_with_the_request_id(lab):
    # The head alone: hostd answers from the declared length, before reading a byte of it.
    r = lab.raw_response(b"POST /sha256 HTTP/1.1\r\nHost: h\r\nX-VM-Id: " + FLEET.encode() +
                         b"\r\nContent-Length: %d\r\n\r\n" % (4 * 1024 * 1024 + 1),
                         port=lab.ports[0])
    assert r.status == 413
    assert "fanout.max_body" in r.text
    assert r.request_id in r.text
    assert not [l for l in lab.request_log(r.request_id) if "event=fanout_vm " in l]


def test_fanout_metrics_count_sizes_durations_and_classes(lab):
    before = metric(lab, "vmgate_fanout_vm_results_total", **{"class": "timed_out"})
    requests.post(lab.url("/sha256", port=lab.ports[0]), data=b"x",
                  headers={"X-VM-Id": FLEET}, timeout=30).content
    wait_until(lambda: metric(lab, "vmgate_fanout_vm_results_total",
                              **{"class": "timed_out"}) == before + 1, 5, "the count")
    assert metric(lab, "vmgate_fanout_vms_count") >= 1
    assert metric(lab, "vmgate_fanout_duration_seconds_count") >= 1


@pytest.mark.skipif(not VMGATECTL, reason="VMGATECTL is not set")
def test_vmgatectl_send_collapses_alike_answers_and_exits_1_when_some_failed(lab):
    path = lab.path("send-body.bin")
    with open(path, "wb") as f:
        f.write(BODY)
    r = subprocess.run([VMGATECTL, "send", FLEET_AND_DENIED, "--port", str(lab.ports[0]),
                        "--path", "/sha256", "--data", "@" + path],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    lines = r.stdout.splitlines()
    assert "web[01-16] (16): 200 %s %d" % (BODY_SHA, len(BODY)) in lines
    assert any(l.startswith("web18: 504 timed out") for l in lines)
    assert any(l.startswith("web17: 502 unreachable") for l in lines)
    assert any(l.startswith("web19: 503 not running") for l in lines)
    assert any(l.startswith("web20: 403 refused") for l in lines)
    assert lines[-1].startswith("20 VMs: 16 answered; failed: ")
    # --json for scripts: every VM and the summary.
    r = subprocess.run([VMGATECTL, "send", FLEET_AND_DENIED, "--port", str(lab.ports[0]),
                        "--path", "/sha256", "--data", "@" + path, "--json"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    assert r.returncode == 1
    document = json.loads(r.stdout)
    assert len(document["vms"]) == 20
    assert document["summary"]["answered"] == 16


@pytest.mark.skipif(not VMGATECTL, reason="VMGATECTL is not set")
def test_vmgatectl_send_exits_3_when_the_target_names_no_vm(lab):
    r = subprocess.run([VMGATECTL, "send", "group:nosuch", "--port", str(lab.ports[1])],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    assert r.returncode == 3, r.stdout + r.stderr


@pytest.mark.skipif(not VMGATECTL, reason="VMGATECTL is not set")
def test_vmgatectl_send_exits_0_when_every_vm_answered(lab):
    r = subprocess.run([VMGATECTL, "send", ",".join(ANSWERING[:5]), "--port",
                        str(lab.ports[1]), "--path", "/hello"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1].startswith("5 VMs: 5 answered")


def test_a_name_no_vm_has_is_a_404_part_or_403_for_a_client_that_may_not_reach_it(lab):
    for port, name, vm_class, status in ((lab.ports[1], "nosuch", "not_found", "404"),
                                          (lab.ports[0], "nosuch", "refused", "403"),
                                          (lab.ports[0], "web99", "not_found", "404")):
        r = requests.post(lab.url("/sha256", port=port), data=b"x",
                          headers={"X-VM-Id": "web01," + name}, timeout=30, stream=True)
        parts = parse_multipart(r.headers["Content-Type"], r.raw.read())
        by_vm = {p["X-VM-Id"]: p for p in parts[:-1]}
        assert by_vm["web01"]["X-VM-Class"] == "answered"
        assert (by_vm[name]["X-VM-Class"], by_vm[name]["X-VM-Status"]) == (vm_class, status)
        summary = json.loads(parts[-1].get_payload(decode=True))
        assert summary["classes"][vm_class]["vms"] == [name]
