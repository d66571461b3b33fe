"""Proxy credentials the way HTTP proxies take them (RFC 9110 §11.7.1), from
real clients: curl --proxy-user in the proxy form and through CONNECT,
python3-winrm told HTTP_PROXY=http://NAME:TOKEN@host:port, and a Bearer
token. Missing or wrong credentials get 407 with Proxy-Authenticate;
Proxy-Authorization never reaches the agent while Authorization does,
untouched; a client's claims in X-Forwarded-For are replaced; a tokens
file others can read stops hostd."""

import os
import signal
import subprocess

import pytest

from pki import Pki
from vmgate_lab import HOSTD, SYSTEM_PYTHON, VM, Lab

USER, PASSWORD = "vmgate", "s3cret-pass"

WINRM_SCRIPT = r"""
import sys, winrm
session = winrm.Session(sys.argv[1], auth=(%r, %r), transport="basic")
result = session.run_cmd(sys.argv[2])
sys.stdout.write("status=%%d\n" %% result.status_code)
sys.stdout.write(result.std_out.decode("utf-8", "replace"))
""" % (USER, PASSWORD)

ACL = [
    {"name": "ansible-all", "action": "allow", "identities": ["token:ansible"], "vms": ["*"]},
    {"name": "ci-vm1", "action": "allow", "identities": ["token:ci"], "vms": ["vm1"],
     "ports": [5986]},
]


def new_token(lab, name):
    """A token from vmgatectl, as an operator makes one; its line goes to the file."""
    vmgatectl = os.environ.get("VMGATECTL") or os.path.join(
        os.path.dirname(os.path.dirname(HOSTD)), "tools", "vmgatectl", "vmgatectl")
    r = subprocess.run([vmgatectl, "token", "new", name], capture_output=True, text=True,
                       timeout=30, check=True)
    with open(lab.path("tokens"), "a") as f:
        f.write(r.stderr)
    return r.stdout.strip()


@pytest.fixture(scope="module")
def lab():
    agent_args = ("--user", USER, "--password", PASSWORD)
    with Lab([VM("vm1", agent="native"), VM("vm2", agent="native"),
              VM("win1", agent="wsman", agent_args=agent_args)],
             start_hostd=False, acl=ACL,
             hostd={"auth": {"tokens_file": "TOKENS"}}) as lab:
        lab.hostd_overrides["auth"]["tokens_file"] = lab.path("tokens")
        lab.tokens = {name: new_token(lab, name) for name in ("ansible", "ci")}
        os.chmod(lab.path("tokens"), 0o600)
        pki = Pki(lab.path("pki"))
        lab.hosts_ca = pki.ca("hosts")
        server = pki.server(lab.hosts_ca, "kvm1")
        lab.listener_tables = [
            {"address": "tcp:127.0.0.1:0", "guest_port": 5986, "identity": "token"},
            # The same, over TLS: tokens never cross the network in the clear.
            {"address": "tcp:127.0.0.1:0", "guest_port": 5986, "identity": "token",
             "tls": server.tls_table()},
        ]
        lab.start_hostd()
        yield lab


def curl(lab, url, *args):
    r = subprocess.run(["curl", "-sS", "--max-time", "20", "-x", "http://127.0.0.1:%d" % lab.port,
                        "-D", "-", *args, url], capture_output=True, text=True, timeout=60)
    # (text mode: CRLF reads as LF)
    head, _, body = r.stdout.partition("\n\n")
    # A CONNECT's 200 comes first: the agent's response follows it.
    while head.startswith("HTTP/1.1 200 Connection established"):
        head, _, body = body.partition("\n\n")
    status = int(head.split(" ", 2)[1]) if head.startswith("HTTP/") else 0
    return status, head, body, r


def test_curl_in_proxy_form_with_the_right_token_reaches_the_vm(lab):
    status, _, body, r = curl(lab, "http://vm1:5986/hello",
                              "--proxy-user", "ansible:" + lab.tokens["ansible"])
    assert (status, body) == (200, "hello from vm1\n"), r.stderr
    rec = lab.last_request(identity="token:ansible", target="vm1")
    assert rec["acl"] == "allow" and rec["rule"] == "ansible-all"


def test_curl_through_connect_with_the_right_token_reaches_the_vm(lab):
    status, _, body, r = curl(lab, "http://vm2:5986/hello", "-p",
                              "--proxy-user", "ansible:" + lab.tokens["ansible"])
    assert (status, body) == (200, "hello from vm2\n"), r.stderr
    assert lab.last_request(method="CONNECT", identity="token:ansible")["status"] == "200"


@pytest.mark.parametrize("connect", [False, True])
@pytest.mark.parametrize("credentials", [None, "ansible:wrong", "nobody:x", "ci:" + "0" * 64])
def test_missing_or_wrong_credentials_get_407_with_proxy_authenticate(lab, connect, credentials):
    args = ["-p"] if connect else []
    if credentials:
        args += ["--proxy-user", credentials]
    status, head, body, r = curl(lab, "http://vm1:5986/hello", *args)
    assert status == 407, r.stdout + r.stderr
    assert 'proxy-authenticate: basic realm="vmgate", bearer realm="vmgate"' in head.lower()
    if not connect:
        assert body.startswith("407 Proxy Authentication Required: ") and "(request " in body
    # Neither the 407 nor anything else says whether a token name exists.
    assert "nobody" not in body and "ansible" not in body


def test_a_bearer_token_is_a_credential_too(lab):
    status, _, body, r = curl(lab, "http://vm1:5986/hello",
                              "--proxy-header", "Proxy-Authorization: Bearer " + lab.tokens["ci"])
    assert (status, body) == (200, "hello from vm1\n"), r.stderr
    assert lab.last_request(identity="token:ci")["rule"] == "ci-vm1"


def test_a_token_its_rules_do_not_allow_gets_403(lab):
    channels_before = len(lab.guestds["vm2"].lines())
    status, _, body, _ = curl(lab, "http://vm2:5986/hello", "--proxy-user", "ci:" + lab.tokens["ci"])
    assert status == 403
    # Decided before a channel is opened: guestd (one line per channel) never heard of it.
    assert len(lab.guestds["vm2"].lines()) == channels_before
    assert "ci-vm1" not in body
    assert lab.last_request(identity="token:ci", target="vm2")["acl"] == "deny"


def test_authorization_reaches_the_agent_and_proxy_authorization_does_not(lab):
    status, _, body, r = curl(lab, "http://vm1:5986/echo-headers",
                              "--proxy-user", "ansible:" + lab.tokens["ansible"],
                              "-H", "Authorization: Basic dXNlcjpwYXNz",
                              "-H", "X-Forwarded-For: 10.9.9.9",
                              "-H", "Forwarded: for=10.9.9.9")
    assert status == 200, r.stderr
    lines = body.lower().splitlines()
    assert "authorization: basic dxnlcjpwyxnz" in lines
    assert not any(l.startswith("proxy-authorization") for l in lines)
    # The agent learns the address hostd saw, not the one the client claimed.
    assert "x-forwarded-for: 127.0.0.1" in lines
    assert not any("10.9.9.9" in l for l in lines)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_python3_winrm_told_http_proxy_with_a_token_runs_a_command(lab, scheme):
    # https: the token listener over TLS. urllib3 1.26 (Debian 12) speaks TLS
    # to an https:// proxy but does not verify its certificate for an http://
    # target, so the CA bundle below is for what does verify it, not required.
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "no_proxy", "all_proxy")}
    port = lab.ports[0] if scheme == "http" else lab.ports[1]
    proxy = "%s://ansible:%s@127.0.0.1:%d" % (scheme, lab.tokens["ansible"], port)
    env.update(HTTP_PROXY=proxy, http_proxy=proxy, REQUESTS_CA_BUNDLE=lab.hosts_ca.cert,
               PYTHONWARNINGS="ignore")
    r = subprocess.run([SYSTEM_PYTHON, "-c", WINRM_SCRIPT, "http://win1:5986/wsman", "hostname"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("status=0\n") and "win1" in r.stdout
    rec = lab.last_request(identity="token:ansible", target="win1", port=5986)
    assert rec["status"] == "200" and rec["listener"] == "tcp:127.0.0.1:0"
    # The client's TLS close between requests is no malformed request.
    assert not [r for r in lab.hostd_requests() if r.get("status") == "400"]


def test_sighup_reloads_the_tokens_file(lab):
    token = new_token(lab, "later")
    status, _, _, _ = curl(lab, "http://vm1:5986/hello", "--proxy-user", "later:" + token)
    assert status == 407
    os.kill(lab.hostd.pid, signal.SIGHUP)
    lab.hostd.wait_for(r"event=tokens_reloaded .*tokens=3")
    # Known now; no rule names it, so it is denied rather than unauthenticated.
    status, _, _, _ = curl(lab, "http://vm1:5986/hello", "--proxy-user", "later:" + token)
    assert status == 403


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o620])
def test_a_tokens_file_others_can_read_or_write_stops_hostd(mode):
    with Lab([VM("vm1", agent=None)], start_hostd=False) as lab:
        tokens = lab.path("tokens")
        with open(tokens, "w") as f:
            f.write("ansible sha256:" + "ab" * 32 + "\n")
        os.chmod(tokens, mode)
        lab.hostd_overrides = {"auth": {"tokens_file": tokens}}
        lab.listener_tables = [{"address": "tcp:127.0.0.1:0", "identity": "token"}]
        for extra in (["--check-config"], []):
            r = subprocess.run([HOSTD, "--config", lab.write_hostd_config(), *extra],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 2, r.stderr
            assert tokens in r.stderr and "chmod 600" in r.stderr
