"""SIGHUP reads hostd's config file again: new connections get the new ACL
rules and limits while established ones keep what they started with; a
file that does not load is logged with FILE:LINE and the running config
keeps serving; what needs a restart (listeners, libvirt, channels) is
logged and kept."""

import os
import re
import signal
import socket

import pytest

from vmgate_lab import VM, Lab

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


def status_of_hello(lab, extra=b""):
    s = socket.create_connection(("127.0.0.1", lab.port), timeout=NOT_A_HANG)
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


def open_tunnel(lab):
    s = socket.create_connection(("127.0.0.1", lab.port), timeout=NOT_A_HANG)
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


def test_a_listener_change_is_logged_as_needing_a_restart_and_kept(lab):
    lab.listener_tables = lab.listener_tables + [
        {"address": "tcp:127.0.0.1:0", "guest_port": 5986, "trusted": True}]
    rewrite(lab)
    reload(lab, r"event=reload_needs_restart .*key=listener")
    assert status_of_hello(lab) == 200
