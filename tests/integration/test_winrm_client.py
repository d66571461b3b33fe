"""Unmodified WS-Management clients work through hostd: python3-winrm told
only HTTP_PROXY (absolute form), winrm with the routing header, and wsl (a
bash + curl client) told only http_proxy. The agents are wsman_agent.py with
Basic auth, so credentials pass through hostd untouched; vm3's keeps Nagle's
algorithm on, so each of its responses is a head and a body that waits for
the ACK of the head (the agent guestd must not stall behind)."""

import os
import shutil
import subprocess

import pytest

from vmgate_lab import SYSTEM_PYTHON, VM, Lab, wait_until

# No spaces: wsl pastes the password into a curl command line unquoted.
USER, PASSWORD = "vmgate", "s3cret-pass"

WINRM_SCRIPT = r"""
import sys, winrm
url, vm_header, command = sys.argv[1], sys.argv[2], sys.argv[3]
session = winrm.Session(url, auth=(%r, %r), transport="basic")
if vm_header:
    session.protocol.transport.default_headers["X-VM-Id"] = vm_header
result = session.run_cmd(command)
sys.stdout.write("status=%%d\n" %% result.status_code)
sys.stdout.write(result.std_out.decode("utf-8", "replace"))
""" % (USER, PASSWORD)

# One session, many commands: every exchange after the first rides on the same
# kept-alive connections (client to hostd, guestd to the agent).
WINRM_REPEAT_SCRIPT = r"""
import sys, winrm
url, vm_header, command, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
session = winrm.Session(url, auth=(%r, %r), transport="basic")
if vm_header:
    session.protocol.transport.default_headers["X-VM-Id"] = vm_header
for _ in range(calls):
    result = session.run_cmd(command)
    sys.stdout.write("status=%%d %%s\n" %% (result.status_code, result.std_out.decode().strip()))
""" % (USER, PASSWORD)


def _winrm_available():
    return subprocess.run([SYSTEM_PYTHON, "-c", "import winrm"],
                          capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def lab():
    agent_args = ("--user", USER, "--password", PASSWORD)
    with Lab([VM("vm1", agent="wsman", agent_args=agent_args),
              VM("vm2", agent="wsman", agent_args=agent_args),
              VM("vm3", agent="wsman", agent_args=agent_args + ("--nagle",))]) as lab:
        yield lab


def without_proxy_env():
    """The caller's environment with no proxy settings at all."""
    return {k: v for k, v in os.environ.items()
            if k.lower() not in ("http_proxy", "https_proxy", "no_proxy", "all_proxy")}


def proxy_env(lab, **extra):
    """The caller's environment with hostd as the HTTP proxy and nothing exempt."""
    env = without_proxy_env()
    proxy = "http://127.0.0.1:%d" % lab.port
    env.update(HTTP_PROXY=proxy, http_proxy=proxy, **extra)
    return env


def run_winrm(lab, url, command, vm_header=""):
    r = subprocess.run([SYSTEM_PYTHON, "-c", WINRM_SCRIPT, url, vm_header, command],
                       env=proxy_env(lab), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def run_winrm_repeatedly(lab, url, command, calls, vm_header="", proxy=True):
    r = subprocess.run([SYSTEM_PYTHON, "-c", WINRM_REPEAT_SCRIPT, url, vm_header, command,
                        str(calls)], env=proxy_env(lab) if proxy else without_proxy_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def agent_requests(lab, vm):
    return [l for l in lab.agents[vm].lines() if l.startswith("event=request ")]


pytestmark = pytest.mark.skipif(not _winrm_available(),
                                reason="python3-winrm is not importable by /usr/bin/python3")


def test_winrm_with_only_http_proxy_runs_a_command_on_the_vm_in_the_url(lab):
    before = len(agent_requests(lab, "vm1"))
    out = run_winrm(lab, "http://vm1:5986/wsman", "hostname")
    assert out.splitlines() == ["status=0", "vm1"]
    # The whole shell (Create, Command, Receive, Signal, Delete) went through
    # hostd in absolute form; the agent saw no routing header and a Forwarded.
    seen = agent_requests(lab, "vm1")[before:]
    assert len(seen) >= 4
    assert all("x_vm_id=- " in l and "forwarded=" in l and "forwarded=-" not in l for l in seen)
    assert lab.last_request(form="absolute", vm="vm1")["status"] == "200"


def test_winrm_routing_header_overrides_the_host_in_the_url(lab):
    # The URL still says vm1: the X-VM-Id header decides (it ranks above
    # the absolute form), and the command runs on vm2.
    before = len(agent_requests(lab, "vm1"))
    out = run_winrm(lab, "http://vm1:5986/wsman", "hostname", vm_header="vm2")
    assert out.splitlines() == ["status=0", "vm2"]
    # A request sent to vm1 afterwards is the only one vm1 logs since `before`:
    # none of the shell's requests reached it, not merely none logged yet.
    lab.curl("/routing-marker", "-H", "X-VM-Id: vm1")
    seen = wait_until(lambda: (lambda new: new if any("/routing-marker" in l for l in new)
                               else None)(agent_requests(lab, "vm1")[before:]),
                      10, "vm1's record of the marker request")
    assert len(seen) == 1, seen
    assert lab.last_request(form="header", vm="vm2")["status"] == "200"


def test_winrm_command_output_and_exit_code_come_back_unchanged(lab):
    out = run_winrm(lab, "http://vm2:5986/wsman", "echo through vmgate")
    assert out.splitlines() == ["status=0", "through vmgate"]
    # A non-zero exit code is the one a lossy path would turn into 0.
    out = run_winrm(lab, "http://vm2:5986/wsman", "exit 37")
    assert out.splitlines() == ["status=37"]


def test_winrm_through_http_proxy_to_an_agent_that_splits_its_writes_runs_every_command(lab):
    # vm3's agent writes each response's head, then holds its body until
    # guestd ACKs the head; ten commands on one session all come back whole.
    before = len(agent_requests(lab, "vm3"))
    out = run_winrm_repeatedly(lab, "http://vm3:5986/wsman", "hostname", 10)
    assert out.splitlines() == ["status=0 vm3"] * 10
    seen = agent_requests(lab, "vm3")[before:]
    assert len(seen) >= 40  # five requests per command
    assert all("status=200" in l for l in seen), seen
    assert lab.last_request(form="absolute", vm="vm3")["status"] == "200"


def test_winrm_routing_header_to_an_agent_that_splits_its_writes_runs_every_command(lab):
    # Straight to hostd, no proxy: the header alone routes.
    out = run_winrm_repeatedly(lab, "http://127.0.0.1:%d/wsman" % lab.port, "echo split", 5,
                               vm_header="vm3", proxy=False)
    assert out.splitlines() == ["status=0 split"] * 5
    assert lab.last_request(form="header", vm="vm3")["status"] == "200"


@pytest.mark.skipif(shutil.which("wsl") is None, reason="wsl (Debian package wsl) not installed")
def test_wsl_enumerate_through_hostd_as_http_proxy(lab):
    home = lab.path("wsl-home")
    os.makedirs(home, exist_ok=True)
    env = proxy_env(lab, HOME=home, WSENDPOINT="vm2:5986", WSUSER=USER, WSPASS=PASSWORD,
                    WSNOSSL="true", WSDONTASK="y")
    before = len(agent_requests(lab, "vm2"))
    records_before = len(lab.hostd_requests())
    r = subprocess.run(["wsl", "enum", "Win32_OperatingSystem"], cwd=home, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    assert "<p:CSName>vm2</p:CSName>" in r.stdout, r.stdout[-3000:]
    seen = agent_requests(lab, "vm2")[before:]
    assert any("action=Enumerate" in l and "status=200" in l for l in seen), seen
    # hostd's records of wsl's own requests, not of a winrm request before them.
    wait_until(lambda: [q for q in lab.hostd_requests()[records_before:]
                        if q.get("form") == "absolute" and q.get("vm") == "vm2"
                        and q.get("status") == "200"],
               10, "hostd's record of wsl's request to vm2")


@pytest.mark.skipif(shutil.which("wsl") is None, reason="wsl (Debian package wsl) not installed")
def test_wsl_identify_through_hostd_names_the_vm(lab):
    home = lab.path("wsl-home-id")
    os.makedirs(home, exist_ok=True)
    env = proxy_env(lab, HOME=home, WSENDPOINT="vm1:5986", WSUSER=USER, WSPASS=PASSWORD,
                    WSNOSSL="true", WSDONTASK="y")
    r = subprocess.run(["wsl", "identify", "check"], cwd=home, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    assert "VM: vm1" in r.stdout, r.stdout[-3000:]
