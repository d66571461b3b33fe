"""vmgate_lab: real processes for integration tests, always cleaned up.

A Lab is a temp dir holding a libvirt test-driver node.xml, per VM an agent
(vmgate-test-agent or wsman_agent.py) and a vmgate-guestd on a unix socket
(unix:DIR/NAME.sock stands in for the VM's vsock), and one vmgate-hostd with
ephemeral listeners. Every wait is bounded and keyed on a log line or a
socket, never a fixed sleep. Leaving the `with` block (or a failed start)
kills every process and removes the temp dir.

    with Lab([VM("vm1"), VM("vm2", running=False)]) as lab:
        r = lab.curl("/hello", "-H", "X-VM-Id: vm1")
        assert r.status == 200 and r.body == b"hello from vm1\n"

Binaries come from VMGATE_HOSTD, VMGATE_GUESTD and VMGATE_TEST_AGENT (ctest
sets them), else from build/dev under VMGATE_SOURCE_DIR or this checkout.
"""

import ctypes
import dataclasses
import http.client
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid as uuid_module

SOURCE_DIR = os.environ.get(
    "VMGATE_SOURCE_DIR",
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
_BUILD_DIR = os.path.join(SOURCE_DIR, "build", "dev")
HOSTD = os.environ.get("VMGATE_HOSTD", os.path.join(_BUILD_DIR, "hostd", "vmgate-hostd"))
GUESTD = os.environ.get("VMGATE_GUESTD", os.path.join(_BUILD_DIR, "guestd", "vmgate-guestd"))
TEST_AGENT = os.environ.get(
    "VMGATE_TEST_AGENT", os.path.join(_BUILD_DIR, "tests", "agents", "vmgate-test-agent"))
WSMAN_AGENT = os.path.join(SOURCE_DIR, "tests", "agents", "wsman_agent.py")
SYSTEM_PYTHON = "/usr/bin/python3"  # python3-winrm imports only here


def built_with_asan(path=HOSTD):
    """Whether the binary at `path` is an AddressSanitizer build."""
    with open(path, "rb") as f:
        return b"__asan_init" in f.read()

START_TIMEOUT = 15.0  # seconds for any process to say it is ready


class LabError(RuntimeError):
    pass


# -- log lines -------------------------------------------------------------

_KV = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_kv(line):
    """The key=value fields of one log line; quoted values are unquoted."""
    fields = {}
    for key, value in _KV.findall(line):
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        fields[key] = value
    return fields


def wait_until(predicate, timeout, what, interval=0.02):
    """Polls `predicate` until it returns a true value; LabError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise LabError("timed out after %.1f s waiting for %s" % (timeout, what))
        time.sleep(interval)


# -- processes ---------------------------------------------------------------

def complete_lines(text):
    """The lines of `text` that end in a newline. Each daemon writes a log line
    with one write(2), but a reader can still catch one half copied into the
    file (a write crossing a page is copied page by page): such a last line is
    left for the next read rather than parsed with fields missing."""
    return text[:text.rfind("\n") + 1].splitlines()


_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent():
    """In the child before exec: SIGKILL when the test process dies, so a
    test killed by ctest's timeout leaves no daemons behind."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Process:
    """A child process whose stdout and stderr go to files in the lab dir."""

    def __init__(self, name, argv, directory, env=None, **popen):
        self.name = name
        self.argv = argv
        self.stdout_path = os.path.join(directory, name + ".out")
        self.stderr_path = os.path.join(directory, name + ".err")
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                          env=env, preexec_fn=_die_with_parent, **popen)

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def stdout(self):
        with open(self.stdout_path, "r", errors="replace") as f:
            return f.read()

    def stderr(self):
        with open(self.stderr_path, "r", errors="replace") as f:
            return f.read()

    def lines(self):
        return complete_lines(self.stderr())

    def wait_for(self, pattern, timeout=START_TIMEOUT, stream="stderr", start=0):
        """The first match of `pattern` in the stream's lines from line `start` on."""
        regex = re.compile(pattern)

        def find():
            text = self.stderr() if stream == "stderr" else self.stdout()
            for line in complete_lines(text)[start:]:
                m = regex.search(line)
                if m:
                    return m
            if not self.alive():
                raise LabError("%s exited with %s while waiting for /%s/:\n%s" % (
                    self.name, self.popen.returncode, pattern, self.stderr()[-4000:]))
            return None

        return wait_until(find, timeout, "%s to log /%s/" % (self.name, pattern))

    def stop(self, grace=5.0):
        """SIGTERM, then SIGKILL after `grace` seconds. Safe to call twice."""
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self):
        if self.popen.poll() is None:
            try:
                self.popen.kill()
            except ProcessLookupError:
                pass
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def vm_rss_kib(self):
        """VmRSS from /proc/PID/status, in KiB (None once the process is gone)."""
        try:
            with open("/proc/%d/status" % self.pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            return None
        return None


# -- configuration -----------------------------------------------------------

def free_tcp_port():
    """A loopback port nobody uses now, for a listener that cannot take port
    0 and say which it got (etcd, a cluster's peer port, a tcp channel).

    Chosen below the kernel's ephemeral range: a port from that range (what
    bind to port 0 hands out) can become the source port of any connection
    or the port-0 listener of a test running beside this one before the
    server that was given it binds it."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral_low = int(f.read().split()[0])
    low = 10000 if ephemeral_low > 20000 else 1024
    rng = random.SystemRandom()
    for _ in range(1000):
        port = rng.randrange(low, ephemeral_low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise LabError("no free loopback port below %d" % ephemeral_low)


@dataclasses.dataclass
class VM:
    """One VM: a libvirt test-driver domain, plus its agent and guestd."""
    name: str
    uuid: str = dataclasses.field(default_factory=lambda: str(uuid_module.uuid4()))
    cid: int = 0  # 0: assigned by the Lab (3, 4, ...)
    running: bool = True
    agent: str = "native"  # "native", "wsman" or None (no agent, no guestd)
    guestd: bool = True
    agent_args: tuple = ()  # extra arguments for the agent
    # guestd's [agents] table instead of the lab's agent on both ports, e.g.
    # {"5986": "tcp:127.0.0.1:PORT"}; guestd then runs even with agent=None.
    guestd_agents: dict = None
    vsock: bool = True  # False: the domain has no <vsock> device (and no CID)
    # guestd's way out for the guest's apps ([outbound]): a loopback proxy on
    # an ephemeral port, to hostd's per-VM socket (Lab(inbound=True)).
    outbound: bool = False
    groups: tuple = ()  # <vmgate:groups> metadata of the domain


def toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table: [host_services] secrets = {address = ...}
        return "{" + ", ".join("%s = %s" % (k, toml_value(v)) for k, v in value.items()) + "}"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def toml_text(sections, arrays=()):
    """TOML from {section: {key: value}} (section None: top level) and
    [(array-of-tables name, {key: value})]."""
    out = []
    for key, value in sections.get(None, {}).items():
        out.append("%s = %s" % (key, toml_value(value)))
    for name, table in sections.items():
        if name is None:
            continue
        out.append("\n[%s]" % name)
        for key, value in table.items():
            out.append("%s = %s" % (toml_value(key) if not re.fullmatch(r"[A-Za-z_]\w*", key)
                                    else key, toml_value(value)))
    for name, table in arrays:
        out.append("\n[[%s]]" % name)
        for key, value in table.items():
            if not isinstance(value, dict):
                out.append("%s = %s" % (key, toml_value(value)))
        # A dict is a sub-table of this entry: [[listener]] then [listener.tls].
        for key, value in table.items():
            if isinstance(value, dict):
                out.append("[%s.%s]" % (name, key))
                for k, v in value.items():
                    out.append("%s = %s" % (k, toml_value(v)))
    return "\n".join(out) + "\n"


def domain_xml(vm):
    if vm.running:
        head, runstate = "<domain type='test'>", ""
    else:
        head = "<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>"
        runstate = "<test:runstate>5</test:runstate>"
    vsock = ("<vsock model='virtio'><cid auto='no' address='%d'/></vsock>" % vm.cid
             if vm.vsock else "")
    metadata = ("<metadata><vmgate:groups xmlns:vmgate='urn:vmgate:1'>%s</vmgate:groups>"
                "</metadata>" % "".join("<group>%s</group>" % g for g in vm.groups)
                if vm.groups else "")
    return (
        "%s<name>%s</name><uuid>%s</uuid><memory>65536</memory>"
        "<os><type>hvm</type></os><devices>%s</devices>%s%s</domain>"
        % (head, vm.name, vm.uuid, vsock, metadata, runstate))


def node_xml(vms):
    return "<node>\n%s\n</node>\n" % "\n".join(domain_xml(vm) for vm in vms)


def merge(base, override):
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, table in (override or {}).items():
        if isinstance(table, dict):
            out.setdefault(section, {}).update(table)
        else:
            out[section] = table
    return out


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket (hostd's admin listener in the labs)."""

    def __init__(self, path, timeout=30):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


# -- HTTP results ------------------------------------------------------------

@dataclasses.dataclass
class Response:
    status: int
    headers: dict  # lower-case name -> last value
    body: bytes
    stderr: str = ""
    returncode: int = 0
    raw_headers: str = ""  # every header block curl received (interim ones too)

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    @property
    def request_id(self):
        return self.headers.get("x-request-id")


def parse_curl_headers(raw):
    """The last header block curl wrote with -D (after 100 Continue or a
    CONNECT's 200, the final response's)."""
    blocks = [b for b in raw.replace("\r\n", "\n").split("\n\n") if b.strip()]
    headers = {}
    if blocks:
        for line in blocks[-1].split("\n")[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
    return headers


def parse_raw_response(raw):
    """A Response from the bytes of one HTTP/1.x response (body by Content-Length,
    else everything up to the close)."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        raise LabError("no complete response head in %r" % raw[:200])
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/\d\.\d (\d{3})", lines[0])
    if not m:
        raise LabError("not a status line: %r" % lines[0])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        rest = rest[:int(headers["content-length"])]
    return Response(int(m.group(1)), headers, rest, raw_headers=head.decode("latin-1"))


# -- the lab -----------------------------------------------------------------

class Lab:
    def __init__(self, vms, hostd=None, guestd=None, listeners=None, libvirt_uri=None,
                 start_hostd=True, files=None, acl=None, channel="unix", inbound=False,
                 host_services=()):
        """
        vms:        [VM]
        hostd:      {section: {key: value}} merged over the defaults
        guestd:     {section or None: {key: value}} merged over the defaults (all VMs)
        listeners:  [{key: value}] for [[listener]]; default one trusted tcp:127.0.0.1:0
                    with guest_port 5986
        libvirt_uri: use this instead of test:///DIR/node.xml (a libvirtd)
        files:      {name: bytes count} random files for the native agents' --files dir
        acl:        [{key: value}] for [[acl]] rules
        channel:    "unix" (guestd on unix:DIR/NAME.sock) or "tcp": guestd on
                    tcp:127.0.0.1:CID, each VM's CID a free port, for what only
                    TCP carries (a reset; unix and vsock streams have none)
        inbound:    hostd makes one socket per VM, DIR/in/NAME.sock, for the
                    traffic guests start ([inbound] per_vm)
        host_services: names of host-side services: each a test agent
                    ("hello from host-NAME") in hostd's [host_services]
        """
        self.vms = list(vms)
        self.channel = channel
        for i, vm in enumerate(self.vms):
            if not vm.cid:
                vm.cid = free_tcp_port() if channel == "tcp" else 3 + i
        self.hostd_overrides = hostd or {}
        self.guestd_overrides = guestd or {}
        self.listener_tables = listeners or [
            {"address": "tcp:127.0.0.1:0", "guest_port": 5986, "trusted": True}]
        self.libvirt_uri = libvirt_uri
        self.start_hostd_now = start_hostd
        self.files_spec = files or {}
        self.acl_rules = list(acl or [])
        self.inbound = inbound
        self.host_service_names = list(host_services)
        self.host_service_ports = {}
        self.processes = []
        self.dir = None
        self.hostd = None
        self.agents = {}
        self.agent_ports = {}
        self.guestds = {}
        self.ports = []  # bound hostd listener ports, in config order

    # context manager ------------------------------------------------------

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix="vmgate-lab-")
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self):
        for p in reversed(self.processes):
            p.stop(grace=3.0)
        self.processes.clear()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def spawn(self, name, argv, **kw):
        p = Process(name, argv, self.dir, **kw)
        self.processes.append(p)
        return p

    # start-up ---------------------------------------------------------------

    def start(self):
        self.files_dir = self.path("files")
        os.mkdir(self.files_dir)
        for name, size in self.files_spec.items():
            with open(os.path.join(self.files_dir, name), "wb") as out:
                subprocess.run(["head", "-c", str(size), "/dev/urandom"], stdout=out, check=True)
        with open(self.path("node.xml"), "w") as f:
            f.write(node_xml(self.vms))
        for name in self.host_service_names:
            p = self.spawn("service-" + name, [TEST_AGENT, "--listen", "127.0.0.1:0",
                                               "--name", "host-" + name])
            m = p.wait_for(r"^listening (\d+)$", stream="stdout")
            self.host_service_ports[name] = int(m.group(1))
        for vm in self.vms:
            if vm.agent:
                self.start_agent(vm)
            if vm.guestd and (vm.agent or vm.guestd_agents):
                self.start_guestd(vm)
        if self.start_hostd_now:
            self.start_hostd()

    def start_agent(self, vm):
        name = "agent-" + vm.name
        if vm.agent == "native":
            argv = [TEST_AGENT, "--listen", "127.0.0.1:0", "--name", vm.name,
                    "--files", self.files_dir, *vm.agent_args]
        elif vm.agent == "wsman":
            argv = [SYSTEM_PYTHON, WSMAN_AGENT, "--listen", "127.0.0.1:0", "--name", vm.name,
                    *vm.agent_args]
        else:
            raise LabError("unknown agent kind %r" % vm.agent)
        p = self.spawn(name, argv)
        m = p.wait_for(r"^listening (\d+)$", stream="stdout")
        self.agents[vm.name] = p
        self.agent_ports[vm.name] = int(m.group(1))
        return p

    def socket_path(self, vm_name):
        return self.path(vm_name + ".sock")

    def guestd_config(self, vm, port_map=None):
        agents = port_map or vm.guestd_agents
        if not agents:
            agent_port = self.agent_ports[vm.name]
            agents = {"5986": "tcp:127.0.0.1:%d" % agent_port,
                      "8114": "tcp:127.0.0.1:%d" % agent_port}
        listen = ("tcp:127.0.0.1:%d" % vm.cid if self.channel == "tcp"
                  else "unix:" + self.socket_path(vm.name))
        base = {
            None: {"listen": listen, "allowed_ports": [5986, 8114]},
            "agents": agents,
        }
        if vm.outbound:
            base["outbound"] = {"listen": "tcp:127.0.0.1:0",
                                "hostd": "unix:" + self.inbound_path(vm.name)}
        return merge(base, self.guestd_overrides)

    def inbound_path(self, vm_name):
        """hostd's socket for the traffic `vm_name` starts (Lab(inbound=True))."""
        return self.path("in", vm_name + ".sock")

    def outbound_port(self, vm_name):
        """The port of the VM's guestd outbound proxy (VM(outbound=True))."""
        m = self.guestds[vm_name].wait_for(r"event=outbound_listening listen=tcp:[\d.]+:(\d+)")
        return int(m.group(1))

    def guestd_command(self, vm_name, *args, input=None, timeout=30):
        """vmgate-guestd send|join|leave ... with the VM's guestd config, as a
        script inside that guest would run it."""
        return subprocess.run([GUESTD, *args, "--config", self.path("guestd-%s.toml" % vm_name)],
                              input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout)

    def start_guestd(self, vm):
        path = self.path("guestd-%s.toml" % vm.name)
        with open(path, "w") as f:
            f.write(toml_text(self.guestd_config(vm)))
        p = self.spawn("guestd-" + vm.name, [GUESTD, "--config", path])
        p.wait_for(r"event=listening")
        if self.channel == "unix":
            wait_until(lambda: os.path.exists(self.socket_path(vm.name)), START_TIMEOUT,
                       "guestd socket of " + vm.name)
        self.guestds[vm.name] = p
        return p

    def hostd_config_text(self):
        base = {
            # Two I/O threads on any machine: each thread accepts and serves its
            # own connections, and pooled channels move between threads.
            None: {"threads": 2},
            "libvirt": {"uri": self.libvirt_uri or "test://" + self.path("node.xml")},
            "channel": {"transport": ("tcp:127.0.0.1:{cid}" if self.channel == "tcp"
                                      else "unix:" + self.dir + "/{name}.sock"),
                        "connect_timeout_ms": 3000},
            "routing": {"vm_header": "X-VM-Id", "host_suffix": ".vms.example"},
            "limits": {"header_bytes": 32768, "idle_timeout_ms": 300000},
            # Never the default fixed port 9090: labs run side by side.
            "admin": {"address": "unix:" + self.path("admin.sock")},
            # Guests' group joins, kept across a restart of the lab's hostd.
            "directory": {"state_file": self.path("directory-state.json")},
        }
        if self.inbound:
            base["inbound"] = {"per_vm": "unix:" + self.path("in", "{name}.sock")}
        if self.host_service_ports:
            base["host_services"] = {name: "tcp:127.0.0.1:%d" % port
                                     for name, port in self.host_service_ports.items()}
        sections = merge(base, self.hostd_overrides)
        return toml_text(sections, [("listener", t) for t in self.listener_tables] +
                         [("acl", r) for r in self.acl_rules])

    def write_hostd_config(self, text=None, name="hostd.toml"):
        path = self.path(name)
        with open(path, "w") as f:
            f.write(text if text is not None else self.hostd_config_text())
        return path

    def start_hostd(self, expect_domains=None):
        """Starts hostd, reads its bound ports and waits for the first libvirt
        sync (of `expect_domains` domains; default: the lab's VMs, or any
        number with an external libvirt_uri)."""
        config = self.write_hostd_config()
        p = self.spawn("hostd", [HOSTD, "--config", config])
        self.hostd = p
        self.ports = []
        wait_until(lambda: len(self.listening_lines()) >= len(self.listener_tables) or
                   self._hostd_dead(), START_TIMEOUT, "hostd listeners")
        if not p.alive():
            raise LabError("hostd exited with %s:\n%s" % (p.popen.returncode, p.stderr()))
        for fields in self.listening_lines():
            addr = fields["addr"]
            self.ports.append(int(addr.rsplit(":", 1)[1]) if addr.startswith("tcp:") else addr)
        if expect_domains is None and self.libvirt_uri is None:
            expect_domains = len(self.vms)
        # With a libvirtd, its own domains count as well: any sync will do.
        count = r"\d+" if expect_domains is None else "%d\\b" % expect_domains
        p.wait_for(r"event=libvirt_sync .*domains=" + count)
        if self.inbound and self.libvirt_uri is None:
            for vm in self.vms:
                wait_until(lambda: os.path.exists(self.inbound_path(vm.name)), START_TIMEOUT,
                           "hostd's inbound socket of " + vm.name)
        return p

    def _hostd_dead(self):
        return not self.hostd.alive()

    def listening_lines(self):
        return [parse_kv(l) for l in self.hostd.lines() if "event=listening" in l]

    # helpers for tests --------------------------------------------------------

    # Where curl runs and which address it reaches hostd on: a lab whose
    # processes run in a network namespace (cluster_lab.NetnsLab) changes both.
    client_host = "127.0.0.1"
    client_prefix = ()

    @property
    def port(self):
        return self.ports[0]

    def url(self, path="/", host=None, port=None):
        return "http://%s:%d%s" % (host or self.client_host, port or self.port, path)

    def curl(self, path_or_url, *args, input=None, timeout=60, stdin=None):
        """curl -sS against hostd; a relative path goes to the first listener.
        Returns a Response with the final status, headers and body."""
        url = path_or_url if "://" in path_or_url else self.url(path_or_url)
        fd, headers_path = tempfile.mkstemp(dir=self.dir, prefix="curl-", suffix=".h")
        os.close(fd)
        try:
            argv = [*self.client_prefix, "curl", "-sS", "--max-time", str(timeout),
                    "-D", headers_path, "-o", "-", *args, url]
            r = subprocess.run(argv, input=input, stdin=stdin if input is None else None,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               timeout=timeout + 10)
            with open(headers_path, "r", errors="replace") as f:
                raw = f.read()
        finally:
            os.unlink(headers_path)
        status_lines = re.findall(r"^HTTP/[\d.]+ (\d{3})", raw, re.M)
        status = int(status_lines[-1]) if status_lines else 0
        return Response(status, parse_curl_headers(raw), r.stdout,
                        r.stderr.decode("utf-8", "replace"), r.returncode, raw)

    def connection(self, timeout=30):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, headers=None, body=None, timeout=30):
        """One request on its own http.client connection."""
        c = self.connection(timeout)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            c.close()

    def raw(self, data, timeout=30, port=None):
        """Sends raw bytes to hostd and returns everything it answers until it closes."""
        with socket.create_connection(("127.0.0.1", port or self.port), timeout=timeout) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            chunks = []
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks)

    def raw_response(self, data, timeout=30, port=None):
        """Sends raw bytes and parses the one response that comes back."""
        return parse_raw_response(self.raw(data, timeout, port))

    def hostd_requests(self):
        """hostd's event=request lines, parsed."""
        return [parse_kv(l) for l in self.hostd.lines() if "event=request " in l]

    def request_log(self, request_id, timeout=5.0):
        """hostd's log lines naming `req=request_id`, once its record is among them.

        A request's record (`event=request`) is written when the request has
        ended, which can be after its client has read the whole response: a
        fan-out's per-VM lines come before it. Waiting for the record means
        the request's log is whole."""
        def find():
            lines = [l for l in self.hostd.lines() if parse_kv(l).get("req") == request_id]
            return lines if any("event=request " in l for l in lines) else None
        return wait_until(find, timeout, "hostd record of request %s" % request_id)

    def last_request(self, timeout=5.0, **match):
        """The last hostd request record whose fields match `match` (waits for it)."""
        def find():
            found = [r for r in self.hostd_requests()
                     if all(r.get(k) == str(v) for k, v in match.items())]
            return found[-1] if found else None
        return wait_until(find, timeout, "hostd request record %r" % match)

    def kill_guestd(self, vm_name):
        p = self.guestds.pop(vm_name)
        p.kill()
        return p


class SilentAgent:
    """An agent that accepts connections and reads from them, never answering."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


# -- libvirtd in session mode, unprivileged -----------------------------------

# -- what hostd reports ---------------------------------------------------------

def metric(lab, name, **labels):
    """One sample of hostd's /metrics (0 when absent)."""
    c = UnixHTTPConnection(lab.path("admin.sock"))
    try:
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
    finally:
        c.close()
    want = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        series, _, value = line.rpartition(" ")
        sample, _, label_text = series.partition("{")
        if sample == name and ",".join(sorted(label_text.rstrip("}").split(","))) == want:
            return float(value)
    return 0.0


class SessionLibvirtd:
    """libvirtd run as nobody in session mode, sharing test:///default with
    every client of test+unix:///default?socket=... (needs root to drop to
    nobody). The temp dir goes with it."""

    def __init__(self):
        self.dir = None
        self.process = None

    def __enter__(self):
        if os.geteuid() != 0:
            raise LabError("SessionLibvirtd needs root (to run libvirtd as nobody)")
        self.dir = tempfile.mkdtemp(prefix="vmgate-libvirtd-")
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def start(self):
        import pwd
        nobody = pwd.getpwnam("nobody")
        os.chmod(self.dir, 0o755)
        for sub in ("home", "run", "cfg"):
            d = os.path.join(self.dir, sub)
            os.makedirs(d, 0o700, exist_ok=True)  # a restart reuses them
            os.chown(d, nobody.pw_uid, nobody.pw_gid)
        self.socket = os.path.join(self.dir, "run", "libvirt", "libvirt-sock")
        self.uri = "test+unix:///default?socket=" + self.socket
        argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                "env", "-i", "PATH=/usr/sbin:/usr/bin",
                "HOME=" + os.path.join(self.dir, "home"),
                "XDG_RUNTIME_DIR=" + os.path.join(self.dir, "run"),
                "XDG_CONFIG_HOME=" + os.path.join(self.dir, "cfg"),
                "libvirtd", "--timeout", "600"]
        self.process = Process("libvirtd", argv, self.dir)
        wait_until(lambda: self._ready(), START_TIMEOUT, "libvirtd socket " + self.socket)

    def _ready(self):
        if not self.process.alive():
            raise LabError("libvirtd exited with %s:\n%s" % (
                self.process.popen.returncode, self.process.stderr()[-4000:]))
        if not os.path.exists(self.socket):
            return False
        r = subprocess.run(["virsh", "-c", self.uri, "uri"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=10)
        return r.returncode == 0

    def kill(self):
        """SIGKILL, as a crash would: clients see their connection drop. The
        dir stays, so start() brings up a new daemon on the same socket, with
        the test driver's default state (every domain defined since is gone)."""
        if self.process:
            self.process.kill()
            self.process = None

    def virsh(self, *args, check=True):
        r = subprocess.run(["virsh", "-c", self.uri, *args], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=30)
        if check and r.returncode != 0:
            raise LabError("virsh %s failed (%d): %s" % (" ".join(args), r.returncode, r.stderr))
        return r

    def close(self):
        if self.process:
            self.process.stop(grace=3.0)
            self.process = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
