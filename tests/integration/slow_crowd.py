"""A crowd of hostile slow clients against a hostd listener, driven from one
thread: head tricklers (a request head sent one byte a second, never
finished) and slow readers (a large response read one byte a second through
a small receive buffer). Each remembers when hostd cut it. Used by
test_slow_clients.py and bench/slow_clients.py."""

import errno
import resource
import socket
import threading
import time

TRICKLED_HEAD = b"GET /hello HTTP/1.1\r\nHost: vm1\r\nX-VM-Id: vm1\r\nX-Padding: " + b"x" * 4096
# Far more than the kernel buffers between hostd and a reader (its send
# buffer, a splice pipe, the reader's 4 KiB receive buffer): hostd's write stalls.
SLOW_READ_BYTES = 64 * 1024 * 1024
SLOW_READ_REQUEST = (b"GET /bytes/%d?sha=0 HTTP/1.1\r\nHost: vm1\r\nX-VM-Id: vm1\r\n\r\n"
                     % SLOW_READ_BYTES)
READER_RCVBUF = 4096


def raise_descriptor_limit(wanted):
    """Raises this process's soft RLIMIT_NOFILE (children inherit it) to `wanted`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            raise RuntimeError("RLIMIT_NOFILE hard limit %d is below the %d needed" % (hard, wanted))
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


class SlowClient:
    def __init__(self, kind, sock, connecting_at):
        self.kind = kind  # "trickle" or "read"
        self.sock = sock
        # Taken before connect(): hostd cannot have accepted it earlier, so
        # a cut measured from here is never short of hostd's own timeout.
        self.connecting_at = connecting_at
        self.cut_at = None  # when this side saw hostd close or reset it
        self.error = None  # what it saw then
        self.sent = 0
        self.read = 0


class SlowCrowd:
    """`tricklers` + `readers` clients of 127.0.0.1:`port`, each stepped once
    a second (one byte sent, or one read) by a thread, until close()."""

    def __init__(self, port, tricklers, readers, step_interval=1.0):
        self.port = port
        self.step_interval = step_interval
        self.clients = []
        self._stop = threading.Event()
        for _ in range(readers):
            connecting_at = time.monotonic()
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            # Before connect, so that the window hostd sees is small from the start.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, READER_RCVBUF)
            s.connect(("127.0.0.1", port))
            s.sendall(SLOW_READ_REQUEST)
            self.clients.append(SlowClient("read", s, connecting_at))
        for _ in range(tricklers):
            connecting_at = time.monotonic()
            s = socket.create_connection(("127.0.0.1", port))
            self.clients.append(SlowClient("trickle", s, connecting_at))
        for c in self.clients:
            c.sock.setblocking(False)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def of_kind(self, kind):
        return [c for c in self.clients if c.kind == kind]

    def still_connected(self, kind=None):
        """Clients hostd has not been seen to cut. A trickler is checked on
        its socket at once; a reader only when it reads."""
        for c in self.clients:
            if c.kind == "trickle" and c.cut_at is None:
                self._peek(c)
        return [c for c in self.clients if c.cut_at is None and kind in (None, c.kind)]

    def _peek(self, c):
        try:
            if c.sock.recv(1, socket.MSG_PEEK) == b"":
                c.cut_at = time.monotonic()
                c.error = "eof"
        except BlockingIOError:
            pass
        except OSError as e:
            c.cut_at = time.monotonic()
            c.error = repr(e)

    def _step(self, c):
        try:
            if c.kind == "trickle":
                if c.sent < len(TRICKLED_HEAD):
                    c.sock.send(TRICKLED_HEAD[c.sent:c.sent + 1])
                    c.sent += 1
                self._peek(c)
            else:
                got = c.sock.recv(1)
                if got == b"":
                    c.cut_at = time.monotonic()
                    c.error = "eof"
                c.read += len(got)
        except BlockingIOError:
            pass
        except OSError as e:
            if e.errno not in (errno.EAGAIN,):
                c.cut_at = time.monotonic()
                c.error = repr(e)

    def _run(self):
        while not self._stop.is_set():
            for c in self.clients:
                if c.cut_at is None:
                    self._step(c)
            self._stop.wait(self.step_interval)

    def close(self):
        self._stop.set()
        self._thread.join()
        for c in self.clients:
            c.sock.close()
