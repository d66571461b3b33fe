"""An end that dies in the middle of a message: the agent or guestd
mid-response (a Content-Length body, a chunked body, a CONNECT tunnel), or
the client mid-upload. The other end sees the message cut, never finished as
if complete: no last chunk, no padding to the length, an upload the agent
sees end early; hostd's request record says which end went away
(aborted=upstream or aborted=client). After every fault hostd and guestd
still serve: a fresh request to the same VM through the same hostd succeeds
(guestd restarted first if the test killed it)."""

import re
import socket
import struct
import time

import pytest

from vmgate_lab import VM, Lab, parse_kv, wait_until

# The clients' own timeout: a cut that hostd does not pass on shows as a read
# that raises instead of ending. No test measures time itself.
NOT_A_HANG = 10.0
# Byte k of every body the test agent streams (tests/agents/test_agent.cpp).
PATTERN = bytes(((i * 131) + (i >> 8) * 7) & 0xFF for i in range(65536))
# Far more than every socket buffer on the way (client, hostd, channel,
# guestd, agent) holds, so a client that stops reading leaves the response
# mid-body with the agent blocked on its write.
BIG = 256 * 1024 * 1024
LAST_CHUNK = b"0\r\n\r\n"


@pytest.fixture
def lab():
    with Lab([VM("vm1")]) as lab:
        yield lab


@pytest.fixture
def tcp_lab():
    # The channel is TCP: guestd can pass an agent's reset on as a reset.
    with Lab([VM("vm1")], channel="tcp") as lab:
        yield lab


# -- helpers -----------------------------------------------------------------

def connect(lab):
    return socket.create_connection(("127.0.0.1", lab.port), timeout=NOT_A_HANG)


def request_head(method, target, *headers, version="1.1"):
    lines = ["%s %s HTTP/%s" % (method, target, version), "Host: vm1", "X-VM-Id: vm1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_to_end(s):
    """Everything the socket gets until hostd ends the connection, and how it
    ended: "eof" or "reset". A read that times out raises (a hang)."""
    data = b""
    while True:
        try:
            chunk = s.recv(1 << 20)
        except ConnectionResetError:
            return data, "reset"
        if not chunk:
            return data, "eof"
        data += chunk


def read_head(s):
    """The response head (through its empty line) and the bytes read past it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, "connection ended before a response head: %r" % data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


def header(head, name):
    m = re.search(r"^%s:\s*(.*?)\s*$" % re.escape(name), head, re.M | re.I)
    return m.group(1) if m else None


def dechunk(data):
    """The chunk data of a chunked body, and whether its last chunk came."""
    out = b""
    while True:
        line, sep, rest = data.partition(b"\r\n")
        if not sep:
            return out, False
        size = int(line.split(b";")[0], 16)
        if size == 0:
            return out, rest.startswith(b"\r\n")
        if len(rest) < size + 2:
            return out + rest[:size], False
        out += rest[:size]
        data = rest[size + 2:]


def reset_on_close(s):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def client_of(s):
    """How hostd's record names the client on socket `s`."""
    return "127.0.0.1:%d" % s.getsockname()[1]


def record_of(lab, client):
    """hostd's record of the request made on the connection from `client`."""
    return lab.last_request(timeout=NOT_A_HANG, client=client)


def body_cut_lines(lab, marker):
    return [parse_kv(l) for l in lab.agents["vm1"].lines()
            if "event=request_body_cut" in l and marker in l]


def check_serving(lab):
    """Both daemons still serve: a fresh request through the same hostd."""
    assert lab.hostd.alive() and lab.guestds["vm1"].alive()
    r = lab.curl("/hello", "-H", "X-VM-Id: vm1", timeout=NOT_A_HANG)
    assert (r.status, r.body) == (200, b"hello from vm1\n"), r.stderr


_markers = iter(range(1, 1 << 30))


def marker():
    """A query parameter that names one request in hostd's log."""
    return "m=%d-%d" % (time.monotonic_ns(), next(_markers))


def start_big_response(lab, chunked):
    """A request for a body of BIG bytes; returns the socket, the response
    head and the body bytes read so far, once the first 64 KiB came. The
    client then stops reading: the agent is left blocked mid-body."""
    target = "/bytes/%d?sha=0%s" % (BIG, "&chunked=1" if chunked else "")
    s = connect(lab)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.sendall(request_head("GET", target))
    head, body = read_head(s)
    while len(body) < 64 * 1024:
        chunk = s.recv(65536)
        assert chunk
        body += chunk
    return s, head, body


def check_cut_response(head, body, chunked):
    """What the client got for a BIG body whose sender died: a cut."""
    assert head.startswith("HTTP/1.1 200"), head
    if chunked:
        assert header(head, "transfer-encoding") == "chunked", head
        data, last = dechunk(body)
        assert not last and not body.endswith(LAST_CHUNK), body[-32:]
        assert 0 < len(data) < BIG
        assert data[:65536] == PATTERN[:len(data[:65536])]
    else:
        assert header(head, "content-length") == str(BIG), head
        assert 0 < len(body) < BIG, len(body)
        assert body[:65536] == PATTERN[:len(body[:65536])]


# -- the agent dies mid-response --------------------------------------------

@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_an_agent_dying_mid_length_body_cuts_the_client_short_unpadded(lab, reset):
    with connect(lab) as s:
        client = client_of(s)
        s.sendall(request_head("GET", "/die-mid-body?length=100000&sent=1000" + (
            "&reset=1" if reset else "")))
        raw, _ = read_to_end(s)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert header(head.decode(), "content-length") == "100000", head
    assert body == PATTERN[:1000], len(body)
    rec = record_of(lab, client)
    assert (rec["status"], rec.get("aborted")) == ("200", "upstream"), rec
    check_serving(lab)


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_an_agent_dying_mid_chunked_body_never_gets_the_last_chunk(lab, reset):
    with connect(lab) as s:
        client = client_of(s)
        s.sendall(request_head("GET", "/die-mid-body?framing=chunked&sent=1000" + (
            "&reset=1" if reset else "")))
        raw, _ = read_to_end(s)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert header(head.decode(), "transfer-encoding") == "chunked", head
    data, last = dechunk(body)
    assert not last and not body.endswith(LAST_CHUNK), body[-32:]
    assert data == PATTERN[:1000], len(data)
    rec = record_of(lab, client)
    assert (rec["status"], rec.get("aborted")) == ("200", "upstream"), rec
    check_serving(lab)


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_an_agent_killed_mid_response_cuts_the_client(lab, chunked):
    s, head, body = start_big_response(lab, chunked)
    client = client_of(s)
    with s:
        port = lab.agent_ports["vm1"]
        lab.agents["vm1"].kill()  # SIGKILL
        rest, _ = read_to_end(s)
    check_cut_response(head, body + rest, chunked)
    rec = record_of(lab, client)
    assert (rec["status"], rec.get("aborted")) == ("200", "upstream"), rec
    # The same agent again, on its port: guestd's config names it.
    lab.vms[0].agent_args = ("--listen", "127.0.0.1:%d" % port)
    lab.start_agent(lab.vms[0])
    check_serving(lab)


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_guestd_killed_mid_response_cuts_the_client(lab, chunked):
    s, head, body = start_big_response(lab, chunked)
    client = client_of(s)
    with s:
        lab.kill_guestd("vm1")  # SIGKILL
        rest, _ = read_to_end(s)
    check_cut_response(head, body + rest, chunked)
    rec = record_of(lab, client)
    assert (rec["status"], rec.get("aborted")) == ("200", "upstream"), rec
    lab.start_guestd(lab.vms[0])
    check_serving(lab)


def test_an_agent_reset_mid_close_delimited_body_is_a_cut_over_a_tcp_channel(tcp_lab):
    # HTTP/1.0: no chunked coding, so the body ends with the connection. Only
    # the reset guestd passes on tells hostd (and so the client) it was cut.
    with connect(tcp_lab) as s:
        client = client_of(s)
        s.sendall(request_head("GET", "/die-mid-body?framing=close&sent=1000&reset=1",
                               version="1.0"))
        raw, _ = read_to_end(s)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert header(head.decode(), "content-length") is None, head
    assert body == PATTERN[:1000], len(body)
    rec = record_of(tcp_lab, client)
    assert (rec["status"], rec.get("aborted")) == ("200", "upstream"), rec
    check_serving(tcp_lab)


def test_a_close_delimited_body_the_agent_ends_in_order_is_not_aborted(tcp_lab):
    with connect(tcp_lab) as s:
        client = client_of(s)
        s.sendall(request_head("GET", "/die-mid-body?framing=close&sent=1000",
                               version="1.0"))
        raw, _ = read_to_end(s)
    assert raw.partition(b"\r\n\r\n")[2] == PATTERN[:1000]
    rec = record_of(tcp_lab, client)
    assert rec["status"] == "200" and "aborted" not in rec, rec


# -- the client dies mid-upload -----------------------------------------------

UPLOAD = 4 * 1024 * 1024
SENT = 300 * 1024


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_a_client_dying_mid_upload_is_a_cut_upload_for_the_agent(lab, chunked, reset):
    mark = marker()
    framing = "Transfer-Encoding: chunked" if chunked else "Content-Length: %d" % UPLOAD
    s = connect(lab)
    client = client_of(s)
    # Expect: the agent's 100 Continue says it has the head and reads the body.
    s.sendall(request_head("PUT", "/sha256?" + mark, framing, "Expect: 100-continue"))
    head, _ = read_head(s)
    assert head.startswith("HTTP/1.1 100"), head
    data = PATTERN * (SENT // len(PATTERN))
    s.sendall(b"%x\r\n" % UPLOAD + data if chunked else data)
    if reset:
        reset_on_close(s)
    s.close()
    (line,) = wait_until(lambda: body_cut_lines(lab, mark), NOT_A_HANG,
                         "the agent to see the upload cut")
    assert int(line["bytes"]) <= SENT, line
    rec = record_of(lab, client)
    assert rec.get("aborted") == "client", rec
    # The agent never answered it: nothing but the cut in its log.
    assert not any("sha256" in l and "event=request_body_cut" not in l and mark in l
                   for l in lab.agents["vm1"].lines())
    check_serving(lab)


# -- CONNECT tunnels ------------------------------------------------------------

def open_tunnel(lab):
    s = connect(lab)
    s.sendall(b"CONNECT vm1:5986 HTTP/1.1\r\nHost: vm1:5986\r\n\r\n")
    head, rest = read_head(s)
    assert head.startswith("HTTP/1.1 200"), head
    assert rest == b""
    return s


def ends_after_a_write(s):
    """After the tunnel's far end is gone, a write is where it must end: the
    write, or the read after it, finds the connection closed."""
    try:
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        return True
    data, _ = read_to_end(s)
    return data == b""


def test_an_agent_dying_in_a_tunnel_ends_it_for_the_client_both_ways(lab):
    with open_tunnel(lab) as s:
        client = client_of(s)
        s.sendall(b"GET /die-mid-body?length=100000&sent=1000&reset=1 HTTP/1.1\r\n"
                  b"Host: vm1\r\n\r\n")
        raw, _ = read_to_end(s)  # the agent's side ended: so does the client's reading
        assert raw.partition(b"\r\n\r\n")[2] == PATTERN[:1000]
        # guestd closed the channel; the client's side ends at its next write.
        assert ends_after_a_write(s)
    rec = record_of(lab, client)
    assert (rec["status"], rec.get("aborted")) == ("200", "upstream"), rec
    check_serving(lab)


def test_an_agent_reset_in_a_tunnel_over_a_tcp_channel_ends_it_at_once(tcp_lab):
    with open_tunnel(tcp_lab) as s:
        client = client_of(s)
        s.sendall(b"GET /die-mid-body?length=100000&sent=1000&reset=1 HTTP/1.1\r\n"
                  b"Host: vm1\r\n\r\n")
        raw, _ = read_to_end(s)
        assert raw.partition(b"\r\n\r\n")[2] == PATTERN[:1000]
        # The reset reached hostd: the tunnel is over without the client
        # writing again, and its record is written.
        rec = record_of(tcp_lab, client)
    assert (rec["status"], rec.get("aborted")) == ("200", "upstream"), rec
    check_serving(tcp_lab)


def test_guestd_killed_in_a_tunnel_ends_it_for_the_client(lab):
    with open_tunnel(lab) as s:
        client = client_of(s)
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: vm1\r\n\r\n")
        head, _ = read_head(s)
        assert head.startswith("HTTP/1.1 200"), head
        lab.kill_guestd("vm1")  # SIGKILL
        read_to_end(s)
        assert ends_after_a_write(s)
    rec = record_of(lab, client)
    assert (rec["status"], rec.get("aborted")) == ("200", "upstream"), rec
    lab.start_guestd(lab.vms[0])
    check_serving(lab)


def test_a_client_reset_in_a_tunnel_cuts_the_agents_upload(lab):
    mark = marker()
    s = open_tunnel(lab)
    client = client_of(s)
    s.sendall(b"PUT /sha256?%s HTTP/1.1\r\nHost: vm1\r\nContent-Length: %d\r\n"
              b"Expect: 100-continue\r\n\r\n" % (mark.encode(), UPLOAD))
    head, _ = read_head(s)
    assert head.startswith("HTTP/1.1 100"), head
    s.sendall(PATTERN)
    reset_on_close(s)
    s.close()
    wait_until(lambda: body_cut_lines(lab, mark), NOT_A_HANG, "the agent to see the upload cut")
    rec = record_of(lab, client)
    assert rec.get("aborted") == "client", rec
    check_serving(lab)
