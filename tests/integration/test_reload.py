"""SIGHUP reads hostd's config file again: new connections get the new ACL
rules, limits and listeners while established ones keep what they started
with; a file that does not load, or a listener that cannot bind, is logged
with FILE:LINE and the running config and listeners keep serving; what
needs a restart (libvirt, channels, threads) is logged and kept."""

import http.client
import os
import re
import signal
import socket
import subprocess

import pytest

from vmgate_lab import HOSTD, VM, Lab, parse_kv

NOT_A_HANG = 30.0  # seconds: only to tell "answered" from "hung"
ALLOW_LOOPBACK = {"name": "loopback", "action": "allow", "identities": ["cidr:127.0.0.0/8"], "vms": ["vm1"]}


@pytest.fixture
def lab():
    listeners = [{"address": "tcp:127.0.0.1:0", "guest_port": 5986, "identity": "source"}]
    with Lab([VM("vm1")], listeners=listeners, acl=[ALLOW_LOOPBACK]) as lab:
        yield lab


def reload(lab, event):
    start = len(lab.hostd.lines())
    os.kill(lab.hostd.pid, signal.SIGHUP)
    return lab.hostd.wait_for(event, start=start).string


def rewrite(lab, acl=None, limits=None, text=None):
    lab.acl_rules = list(acl if acl is not None else lab.acl_rules)
    if limits:
        lab.hostd_overrides = dict(lab.hostd_overrides, limits=limits)
    lab.write_hostd_config(text)


def status_of_hello(lab, extra=b"", port=None):
    s = socket.create_connection(("127.0.0.1", port or lab.port), timeout=NOT_A_HANG)
    try:
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-VM-Id: vm1\r\n" + extra +
                  b"Connection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return int(data.split(b" ", 2)[1])
    finally:
        s.close()


def open_tunnel(lab, port=None):
    s = socket.create_connection(("127.0.0.1", port or lab.port), timeout=NOT_A_HANG)
    s.sendall(b"CONNECT vm1:5986 HTTP/1.1\r\nHost: vm1:5986\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 200 "), head
    return s


def hello_through(s):
    s.sendall(b"GET /hello HTTP/1.1\r\nHost: vm1\r\n\r\n")
    data = b""
    while b"hello from vm1\n" not in data:
        chunk = s.recv(4096)
        assert chunk, "tunnel closed: %r" % data
        data += chunk


def test_an_acl_rule_removed_denies_the_next_request_and_an_open_tunnel_stays(lab):
    tunnel = open_tunnel(lab)
    assert status_of_hello(lab) == 200
    rewrite(lab, acl=[])
    reload(lab, r"event=config_reloaded .*acl_rules=0")
    assert status_of_hello(lab) == 403
    hello_through(tunnel)  # established before the reload: it carries on
    tunnel.close()


def test_a_bad_config_is_logged_with_file_and_line_and_the_old_one_keeps_serving(lab):
    rewrite(lab, acl=[], limits={"header_bytes": "lots"})
    line = reload(lab, r"event=config_reload_failed")
    assert re.search(r"hostd\.toml:\d+: [a-z.]*header_bytes", line), line
    # Neither the rule removed nor the limit applies: the file as a whole was refused.
    assert status_of_hello(lab) == 200
    assert lab.hostd.alive()


def test_a_changed_limit_applies_to_new_connections(lab):
    padding = b"X-Padding: " + b"p" * 3000 + b"\r\n"
    assert status_of_hello(lab, padding) == 200
    rewrite(lab, limits={"header_bytes": 2048})
    reload(lab, r"event=config_reloaded")
    assert status_of_hello(lab, padding) == 431
    assert status_of_hello(lab) == 200


def test_a_restart_only_key_is_logged_as_needing_a_restart_and_kept(lab):
    lab.hostd_overrides = dict(lab.hostd_overrides, channel={"max_per_vm": 7})
    rewrite(lab)
    reload(lab, r"event=reload_needs_restart .*key=channel.max_per_vm")
    assert status_of_hello(lab) == 200


# -- listeners ----------------------------------------------------------------

TRUSTED = {"address": "tcp:127.0.0.1:0", "guest_port": 5986, "trusted": True}


def reload_listeners(lab):
    """SIGHUP after the listener tables changed; the `listening` lines of the
    listeners it added, by name."""
    start = len(lab.hostd.lines())
    rewrite(lab)
    os.kill(lab.hostd.pid, signal.SIGHUP)
    lab.hostd.wait_for(r"event=config_reloaded .*listeners=%d\b" % len(lab.listener_tables),
                       start=start)
    added = [parse_kv(l) for l in lab.hostd.lines()[start:] if "event=listening" in l]
    return {fields["listener"]: int(fields["addr"].rsplit(":", 1)[1]) for fields in added}


def keep_alive(port):
    return http.client.HTTPConnection("127.0.0.1", port, timeout=NOT_A_HANG)


def get_hello(conn, headers=None):
    """GET /hello on a kept connection: its status, having checked that the
    connection's socket is still the one it was (http.client would open
    another, quietly, if hostd had closed it)."""
    sock = conn.sock
    conn.request("GET", "/hello", headers=dict({"X-VM-Id": "vm1"}, **(headers or {})))
    r = conn.getresponse()
    r.read()
    assert sock is None or conn.sock is sock, "the kept connection was closed"
    assert not r.will_close
    return r.status


def test_a_listener_added_by_sighup_accepts_and_reaches_a_vm(lab):
    lab.listener_tables = lab.listener_tables + [dict(TRUSTED, name="added")]
    ports = reload_listeners(lab)
    assert list(ports) == ["added"], ports  # the running one is kept, not bound again
    assert status_of_hello(lab, port=ports["added"]) == 200
    assert status_of_hello(lab) == 200


def test_a_listener_removed_stops_accepting_and_its_open_connections_carry_on(lab):
    lab.listener_tables = lab.listener_tables + [dict(TRUSTED, name="doomed")]
    port = reload_listeners(lab)["doomed"]
    conn = keep_alive(port)
    assert get_hello(conn) == 200
    tunnel = open_tunnel(lab, port)

    start = len(lab.hostd.lines())
    lab.listener_tables = lab.listener_tables[:1]
    reload_listeners(lab)
    lab.hostd.wait_for(r"event=listener_removed .*listener=doomed", start=start)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=NOT_A_HANG)
    # Accepted before the reload: each goes on, on its own socket.
    assert get_hello(conn) == 200
    hello_through(tunnel)
    tunnel.close()
    conn.close()
    assert status_of_hello(lab) == 200  # the listener kept is untouched


def new_token(lab, name, file_name):
    """A token from vmgatectl, as an operator makes one, its line in `file_name`."""
    vmgatectl = os.environ.get("VMGATECTL") or os.path.join(
        os.path.dirname(os.path.dirname(HOSTD)), "tools", "vmgatectl", "vmgatectl")
    r = subprocess.run([vmgatectl, "token", "new", name], capture_output=True, text=True,
                       timeout=30, check=True)
    path = lab.path(file_name)
    with open(path, "a") as f:
        f.write(r.stderr)
    os.chmod(path, 0o600)
    return r.stdout.strip()


@pytest.fixture
def trusted_lab():
    with Lab([VM("vm1")], listeners=[dict(TRUSTED, name="wsman")],
             acl=[{"name": "ops", "action": "allow", "identities": ["token:ops"],
                   "vms": ["vm1"]}]) as lab:
        yield lab


def test_a_listener_changed_to_token_identity_asks_new_connections_for_one_and_old_ones_keep_theirs(
        trusted_lab):
    lab = trusted_lab
    token = new_token(lab, "ops", "tokens")
    old = keep_alive(lab.port)
    assert get_hello(old) == 200  # trusted: no credentials

    # The tokens file is new to this hostd as well: it started without one.
    start = len(lab.hostd.lines())
    lab.hostd_overrides = dict(lab.hostd_overrides, auth={"tokens_file": lab.path("tokens")})
    lab.listener_tables = [{"address": "tcp:127.0.0.1:0", "guest_port": 5986, "name": "wsman",
                            "identity": "token"}]
    assert reload_listeners(lab) == {}  # changed in place: no new socket
    lab.hostd.wait_for(r"event=listener_changed .*listener=wsman .*identity=token", start=start)
    lab.hostd.wait_for(r"event=tokens_reloaded .*tokens=1", start=start)

    fresh = keep_alive(lab.port)
    assert get_hello(fresh) == 407
    assert get_hello(fresh, {"Proxy-Authorization": "Bearer " + token}) == 200
    fresh.close()
    # Accepted as trusted, and trusted to its end.
    assert get_hello(old) == 200
    old.close()


def test_a_changed_tokens_file_path_checks_new_connections_against_the_new_file(trusted_lab):
    lab = trusted_lab
    first = new_token(lab, "ops", "tokens-a")
    second = new_token(lab, "ops", "tokens-b")
    lab.listener_tables = [dict(lab.listener_tables[0], identity="token", trusted=False)]
    lab.hostd_overrides = dict(lab.hostd_overrides, auth={"tokens_file": lab.path("tokens-a")})
    reload_listeners(lab)

    def status(token):
        conn = keep_alive(lab.port)
        try:
            return get_hello(conn, {"Proxy-Authorization": "Bearer " + token})
        finally:
            conn.close()

    assert (status(first), status(second)) == (200, 407)
    lab.hostd_overrides = dict(lab.hostd_overrides, auth={"tokens_file": lab.path("tokens-b")})
    reload_listeners(lab)
    assert (status(first), status(second)) == (407, 200)


def test_a_bad_listener_section_is_logged_with_its_line_and_the_running_listeners_stay(lab):
    lab.listener_tables = lab.listener_tables + [dict(TRUSTED, identity="bogus")]
    rewrite(lab, acl=[])  # refused with it: the rule stays
    line = reload(lab, r"event=config_reload_failed")
    assert re.search(r"hostd\.toml:\d+: listener\[1\]\.identity: ", line), line
    assert status_of_hello(lab) == 200


def test_a_listener_whose_port_is_in_use_refuses_the_whole_reload_at_its_line(lab):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        lab.listener_tables = lab.listener_tables + [
            dict(TRUSTED, address="tcp:127.0.0.1:%d" % port, name="taken")]
        rewrite(lab, acl=[])  # refused with it: the rule stays
        line = reload(lab, r"event=config_reload_failed")
        assert re.search(r"hostd\.toml:\d+: listener\[1\]: cannot listen on tcp:127\.0\.0\.1:%d"
                         % port, line), line
        assert status_of_hello(lab) == 200
    finally:
        taken.close()
