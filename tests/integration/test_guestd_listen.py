"""guestd is never an open forwarder: a unix or tcp channel listener trusts
every peer that reaches it, so one that anyone but guestd's own user could
reach is refused at start unless asked for twice, and the unix socket file
has its socket_mode from the moment guestd listens."""

import os
import stat
import subprocess
import tempfile

import pytest

from vmgate_lab import GUESTD, VM, Lab

NOT_A_HANG = 30.0  # seconds; a refused start exits at once


def socket_mode(path):
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode), "%s is not a socket" % path
    return stat.S_IMODE(st.st_mode)


def run_guestd(text, *args):
    """vmgate-guestd on a config holding `text`; its exit code and stderr."""
    with tempfile.TemporaryDirectory(prefix="vmgate-guestd-listen-") as d:
        path = os.path.join(d, "guestd.toml")
        with open(path, "w") as f:
            f.write(text)
        p = subprocess.run([GUESTD, "--config", path, *args], capture_output=True, text=True,
                           timeout=NOT_A_HANG)
        return p.returncode, p.stderr.replace(path, "guestd.toml")


def test_the_lab_guestd_socket_is_only_its_users():
    with Lab([VM("vm1")]) as lab:
        path = lab.socket_path("vm1")
        assert socket_mode(path) == 0o600
        assert os.lstat(path).st_uid == os.geteuid()
        r = lab.curl("/hello", "-H", "X-VM-Id: vm1")
        assert r.status == 200 and r.body == b"hello from vm1\n"


def test_a_group_writable_socket_asked_for_twice_has_that_mode():
    with Lab([VM("vm1")], guestd={None: {"socket_mode": "0660", "listen_remote": True}}) as lab:
        assert socket_mode(lab.socket_path("vm1")) == 0o660
        r = lab.curl("/hello", "-H", "X-VM-Id: vm1")
        assert r.status == 200


@pytest.mark.parametrize("text, message", [
    ('listen = "tcp:0.0.0.0:5500"\n',
     "guestd.toml:1: listen: tcp:0.0.0.0:5500 is not a loopback address"),
    ('listen = "tcp:[::]:5500"\n',
     "guestd.toml:1: listen: tcp:[::]:5500 is not a loopback address"),
    ('listen = "unix:/run/vmgate-test/g.sock"\nsocket_mode = "0666"\n',
     "guestd.toml:2: socket_mode: 0666 lets group members and other users connect to "
     "unix:/run/vmgate-test/g.sock"),
])
def test_a_listener_others_can_reach_is_refused_unless_asked_for_twice(text, message):
    for args in [("--check-config",), ()]:
        code, stderr = run_guestd(text, *args)
        assert code == 1, stderr
        assert stderr.startswith("vmgate-guestd: " + message), stderr
        assert "set listen_remote = true as well if you mean it" in stderr
        assert "event=listening" not in stderr

    code, stderr = run_guestd(text + "listen_remote = true\n", "--check-config")
    assert code == 0, stderr


def test_a_loopback_tcp_listener_needs_no_second_word():
    code, stderr = run_guestd('listen = "tcp:127.0.0.1:5500"\n', "--check-config")
    assert code == 0, stderr
