"""A BITS upload (MS-BPAU) crosses hostd + guestd to a VM's port 8114 as a
Windows BITS client sends it: BITS_POST packets (Create-Session, Fragments
with Content-Range, Close-Session), a method hostd does not know and must
pass through as it came. The file the agent assembles has the SHA-256 the
client computed; the agent's refusals (a fragment past a gap) reach the
client as the agent sent them; a fragment cut short (the client died) does
not complete the session."""

import hashlib
import http.client
import os
import socket

import pytest

from vmgate_lab import VM, Lab, wait_until

MIB = 1 << 20
FILE_BYTES = 50 * MIB + 12345  # not a multiple of the fragment size
FRAGMENT_BYTES = 8 * MIB
UPLOAD_PROTOCOL = "{7df0354d-249b-430f-820d-3d2a9bef4931}"
USER_AGENT = "Microsoft BITS/7.8"


@pytest.fixture(scope="module")
def lab():
    # The first listener routes to guest port 5986, the second to 8114: the
    # header form reaches 8114 through the second.
    listeners = [{"address": "tcp:127.0.0.1:0", "guest_port": 5986, "trusted": True},
                 {"address": "tcp:127.0.0.1:0", "guest_port": 8114, "trusted": True}]
    with Lab([VM("vm1"), VM("vm2")], listeners=listeners) as lab:
        yield lab


@pytest.fixture(scope="module")
def payload(lab):
    path = lab.path("upload.bin")
    with open(path, "wb") as f:
        f.write(os.urandom(FILE_BYTES))
    with open(path, "rb") as f:
        return path, hashlib.sha256(f.read()).hexdigest()


class BitsClient:
    """The packets a BITS client sends, each a BITS_POST on one kept-alive
    connection; `target` is the remote URL (origin form with `headers`
    naming the VM, or absolute form through hostd as a proxy)."""

    def __init__(self, port, target, headers=None):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.target = target
        self.headers = dict(headers or {})
        self.session = None

    def close(self):
        self.conn.close()

    def packet(self, packet_type, extra=None, body=b""):
        """One packet; `body` is bytes or a file object read for Content-Length bytes."""
        self.conn.putrequest("BITS_POST", self.target, skip_accept_encoding=True)
        headers = {"User-Agent": USER_AGENT, "BITS-Packet-Type": packet_type, **self.headers}
        if self.session:
            headers["BITS-Session-Id"] = self.session
        headers.update(extra or {})
        length = headers.pop("Content-Length", None)
        if length is None:
            length = len(body)
        headers["Content-Length"] = str(length)
        for name, value in headers.items():
            self.conn.putheader(name, value)
        self.conn.endheaders()
        if isinstance(body, bytes):
            if body:
                self.conn.send(body)
        else:
            left = int(length)
            while left:
                block = body.read(min(left, MIB))
                assert block
                self.conn.send(block)
                left -= len(block)
        r = self.conn.getresponse()
        text = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, text

    def create_session(self):
        status, headers, text = self.packet("Create-Session", {
            "BITS-Supported-Protocols": UPLOAD_PROTOCOL, "Content-Name": "upload.bin"})
        assert status == 200, (status, headers, text)
        assert headers["bits-packet-type"].lower() == "ack"
        assert headers["bits-protocol"].lower() == UPLOAD_PROTOCOL
        self.session = headers["bits-session-id"]
        return headers

    def fragment(self, f, first, last, total):
        f.seek(first)
        return self.packet("Fragment", {"Content-Range": "bytes %d-%d/%d" % (first, last, total),
                                        "Content-Length": str(last - first + 1)}, f)

    def upload(self, path, fragment_bytes=FRAGMENT_BYTES):
        """Create-Session, every fragment in order, Close-Session: the Close ack's headers."""
        total = os.path.getsize(path)
        status, headers, _ = self.packet("Ping")
        assert status == 200 and headers["bits-packet-type"].lower() == "ack"
        self.create_session()
        with open(path, "rb") as f:
            for first in range(0, total, fragment_bytes):
                last = min(first + fragment_bytes, total) - 1
                status, headers, text = self.fragment(f, first, last, total)
                assert status == 200, (status, headers, text)
                assert headers["bits-received-content-range"] == str(last + 1)
        status, headers, text = self.packet("Close-Session")
        assert status == 200, (status, headers, text)
        return headers


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            h.update(block)
    return h.hexdigest()


def test_upload_through_the_vm_header_on_port_8114_is_exact_at_both_ends(lab, payload):
    path, digest = payload
    client = BitsClient(lab.ports[1], "/uploads/by-header.bin", {"X-VM-Id": "vm1"})
    try:
        ack = client.upload(path)
    finally:
        client.close()
    assert ack["x-content-sha256"] == digest
    assert ack["x-content-length"] == str(FILE_BYTES)
    assert file_sha256(os.path.join(lab.files_dir, "by-header.bin")) == digest
    # Every packet reached vm1's port 8114 as a BITS_POST: hostd kept the method.
    record = lab.last_request(method="BITS_POST", form="header", vm="vm1")
    assert record["port"] == "8114" and record["status"] == "200"


def test_upload_through_hostd_as_a_proxy_is_exact_at_both_ends(lab, payload):
    path, digest = payload
    client = BitsClient(lab.ports[0], "http://vm2:8114/uploads/by-proxy.bin")
    try:
        ack = client.upload(path, fragment_bytes=5 * MIB)
    finally:
        client.close()
    assert ack["x-content-sha256"] == digest
    assert file_sha256(os.path.join(lab.files_dir, "by-proxy.bin")) == digest
    record = lab.last_request(method="BITS_POST", form="absolute", vm="vm2")
    assert record["port"] == "8114"


def test_a_fragment_past_a_gap_gets_the_agents_416_and_an_overlap_writes_only_new_bytes(
        lab, payload):
    path, digest = payload
    client = BitsClient(lab.ports[1], "/uploads/out-of-order.bin", {"X-VM-Id": "vm1"})
    try:
        client.create_session()
        with open(path, "rb") as f:
            status, headers, _ = client.fragment(f, 0, MIB - 1, FILE_BYTES)
            assert status == 200 and headers["bits-received-content-range"] == str(MIB)
            # Out of order: bytes 2 MiB.. before 1 MiB..2 MiB. The agent's
            # refusal arrives as it sent it, with where to resume.
            status, headers, text = client.fragment(f, 2 * MIB, 3 * MIB - 1, FILE_BYTES)
            assert status == 416, (status, headers, text)
            assert headers["bits-packet-type"].lower() == "ack"
            assert headers["bits-error-code"] == "0x80070057"
            assert headers["bits-received-content-range"] == str(MIB)
            assert headers["x-agent-name"] == "vm1"
            # Overlapping what is held, with other bytes in the overlap: only
            # the new part is written (BITS never overwrites what it has).
            f.seek(MIB)
            new_part = f.read(MIB)
            overlap = b"\0" * (MIB // 2) + new_part
            status, headers, text = client.packet(
                "Fragment", {"Content-Range": "bytes %d-%d/%d" % (MIB // 2, 2 * MIB - 1,
                                                                  FILE_BYTES)}, overlap)
            assert status == 200, (status, headers, text)
            assert headers["bits-received-content-range"] == str(2 * MIB)
            for first in range(2 * MIB, FILE_BYTES, FRAGMENT_BYTES):
                last = min(first + FRAGMENT_BYTES, FILE_BYTES) - 1
                status, headers, text = client.fragment(f, first, last, FILE_BYTES)
                assert status == 200, (status, headers, text)
        status, headers, text = client.packet("Close-Session")
        assert status == 200, (status, headers, text)
        assert headers["x-content-sha256"] == digest
    finally:
        client.close()


def test_a_fragment_cut_mid_body_does_not_complete_the_session(lab, payload):
    path, digest = payload
    client = BitsClient(lab.ports[1], "/uploads/cut.bin", {"X-VM-Id": "vm1"})
    try:
        client.create_session()
        total = 3 * MIB
        with open(path, "rb") as f:
            data = f.read(total)
        status, headers, _ = client.packet(
            "Fragment", {"Content-Range": "bytes 0-%d/%d" % (MIB - 1, total)}, data[:MIB])
        assert status == 200
        # The last fragment, its client dying halfway through the body.
        head = ("BITS_POST /uploads/cut.bin HTTP/1.1\r\nHost: vm1\r\nX-VM-Id: vm1\r\n"
                "User-Agent: %s\r\nBITS-Packet-Type: Fragment\r\nBITS-Session-Id: %s\r\n"
                "Content-Range: bytes %d-%d/%d\r\nContent-Length: %d\r\n\r\n" % (
                    USER_AGENT, client.session, MIB, total - 1, total, total - MIB))
        with socket.create_connection(("127.0.0.1", lab.ports[1]), timeout=30) as s:
            s.sendall(head.encode() + data[MIB:MIB + MIB // 2])
        # Closing now fails: the cut fragment counted for nothing.
        status, headers, text = client.packet("Close-Session")
        assert status == 400, (status, headers, text)
        assert b"incomplete: %d of %d bytes" % (MIB, total) in text
        assert not os.path.exists(os.path.join(lab.files_dir, "cut.bin"))
        # The client resumes where the server says, and the session completes;
        # 409 until the agent has seen the cut connection end (it comes
        # through hostd and guestd after our close).
        def resend():
            answer = client.packet(
                "Fragment", {"Content-Range": "bytes %d-%d/%d" % (MIB, total - 1, total)},
                data[MIB:])
            return answer if answer[0] != 409 else None

        status, headers, text = wait_until(resend, 10, "the cut fragment to be dropped", 0.1)
        assert status == 200, (status, headers, text)
        status, headers, text = client.packet("Close-Session")
        assert status == 200, (status, headers, text)
        assert headers["x-content-sha256"] == hashlib.sha256(data).hexdigest()
    finally:
        client.close()


def test_cancel_session_removes_the_partial_file_and_forgets_the_session(lab, payload):
    client = BitsClient(lab.ports[1], "/uploads/cancelled.bin", {"X-VM-Id": "vm1"})
    try:
        client.create_session()
        status, headers, _ = client.packet(
            "Fragment", {"Content-Range": "bytes 0-9/100"}, b"0123456789")
        assert status == 200
        status, headers, _ = client.packet("Cancel-Session")
        assert status == 200 and headers["bits-packet-type"].lower() == "ack"
        status, headers, text = client.packet("Close-Session")
        assert status == 400 and b"no session" in text
        assert not [n for n in os.listdir(lab.files_dir) if "cancelled" in n]
    finally:
        client.close()
