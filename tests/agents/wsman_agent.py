#!/usr/bin/python3
"""A WS-Management stand-in for tests and the demo.

Debian ships WS-Management clients (python3-winrm, wsl) but no server, so
this plays the WinRM listener inside a "VM": just enough of DSP0226 (WS-Man),
WS-Transfer, WS-Enumeration and the Windows Remote Shell protocol (MS-WSMV)
for those clients to work unmodified.

    wsman_agent.py --listen 127.0.0.1:0 --name vm1 [--user U --password P] [--nagle]

Prints exactly one line, `listening PORT`, once it accepts connections, and
one line per request on stderr, with the X-VM-Id and Forwarded headers that
reached it (through vmgate, X-VM-Id must be gone and Forwarded present).

POST /wsman (application/soap+xml) understands:
  Identify (wsmid:Identify)          IdentifyResponse naming the VM
  Enumerate / Pull / Release         one instance of the requested class,
                                     CSName = Name = the VM name
  Get                                the same instance
  a custom method (Action RESOURCE/METHOD) METHOD_OUTPUT with ReturnValue 0
  Shell Create / Command / Receive / Signal / Delete (windows/shell/cmd)
    commands: `hostname` prints NAME, `echo ARGS` prints ARGS, `exit N`
    exits with N, anything else prints "hello from NAME" and the command.
Basic auth is required when --user is given (Identify with the header
`WSMANIDENTIFY: unauthenticated` is exempt, as on Windows).

Each response's head and body are two writes. --nagle leaves Nagle's
algorithm on (http.server's default), so the body waits until the peer ACKs
the head: the agent a relay must not stall behind (a peer that delays that
ACK adds ~40 ms to every response).

Standard library only; runs under /usr/bin/python3.
"""

import argparse
import base64
import binascii
import http.server
import socket
import sys
import threading
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "wsa": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "wsman": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "wsen": "http://schemas.xmlsoap.org/ws/2004/09/enumeration",
    "wxf": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "wsmid": "http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd",
    "f": "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault",
}
ENVELOPE_NS = " ".join(
    'xmlns:%s="%s"' % (p, NS[p]) for p in ("s", "wsa", "wsman", "wsen", "wxf", "rsp")
)

ACTION_IDENTIFY = "identify"  # Identify has no Action header (DSP0226 §11)
ACTION_ENUMERATE = NS["wsen"] + "/Enumerate"
ACTION_PULL = NS["wsen"] + "/Pull"
ACTION_RELEASE = NS["wsen"] + "/Release"
ACTION_GET = NS["wxf"] + "/Get"
ACTION_CREATE = NS["wxf"] + "/Create"
ACTION_DELETE = NS["wxf"] + "/Delete"
ACTION_COMMAND = NS["rsp"] + "/Command"
ACTION_RECEIVE = NS["rsp"] + "/Receive"
ACTION_SIGNAL = NS["rsp"] + "/Signal"
SHELL_RESOURCE = NS["rsp"] + "/cmd"
STATE_DONE = NS["rsp"] + "/CommandState/Done"
ANONYMOUS = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"
BASIC_PROFILE = "http://schemas.dmtf.org/wbem/wsman/1/wsman/secprofile/http/basic"
DEFAULT_RESOURCE = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/cimv2/Win32_OperatingSystem"
SOAP_TYPE = "application/soap+xml;charset=UTF-8"
MAX_BODY = 1 << 20  # WinRM's own MaxEnvelopeSize is 150 KiB; this is ample


class Fault(Exception):
    """A SOAP fault: HTTP status, SOAP code, subcode and reason."""

    def __init__(self, status, code, subcode, reason):
        super().__init__(reason)
        self.status, self.code, self.subcode, self.reason = status, code, subcode, reason


def envelope(action, relates_to, body):
    header = [
        "<wsa:To>%s</wsa:To>" % ANONYMOUS,
        "<wsa:MessageID>uuid:%s</wsa:MessageID>" % uuid.uuid4(),
    ]
    if action:
        header.insert(0, "<wsa:Action>%s</wsa:Action>" % escape(action))
    if relates_to:
        header.append("<wsa:RelatesTo>%s</wsa:RelatesTo>" % escape(relates_to))
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<s:Envelope %s><s:Header>%s</s:Header><s:Body>%s</s:Body></s:Envelope>\n"
        % (ENVELOPE_NS, "".join(header), body)
    )


def fault_envelope(fault, relates_to):
    body = (
        "<s:Fault><s:Code><s:Value>s:%s</s:Value><s:Subcode><s:Value>%s</s:Value>"
        "</s:Subcode></s:Code><s:Reason><s:Text xml:lang=\"en-US\">%s</s:Text></s:Reason>"
        "</s:Fault>" % (fault.code, escape(fault.subcode), escape(fault.reason))
    )
    return envelope(NS["wsa"] + "/fault", relates_to, body)


class Agent:
    """The state behind the endpoint: enumerations and shells in flight."""

    def __init__(self, name):
        self.name = name
        self.lock = threading.Lock()
        self.enumerations = {}  # context -> pending items (XML strings)
        self.shells = {}  # shell id -> {command id: (stdout, stderr, exit code)}

    # -- requests ---------------------------------------------------------

    def handle(self, root):
        """Returns the response envelope for a parsed request envelope."""
        header = root.find("s:Header", NS)
        body = root.find("s:Body", NS)
        if body is None:
            raise Fault(400, "Sender", "wsman:SchemaValidationError", "no SOAP Body")
        action = text(header, "wsa:Action")
        message_id = text(header, "wsa:MessageID")
        resource = text(header, "wsman:ResourceURI")
        if body.find("wsmid:Identify", NS) is not None:
            return self.identify()
        if action == ACTION_ENUMERATE:
            return self.enumerate(message_id, resource, body)
        if action == ACTION_PULL:
            return self.pull(message_id, body)
        if action == ACTION_RELEASE:
            return self.release(message_id, body)
        if action == ACTION_GET:
            return envelope(NS["wxf"] + "/GetResponse", message_id, self.instance(resource))
        if resource and action and action.startswith(resource.rstrip("/") + "/"):
            return self.invoke(message_id, resource, action.rsplit("/", 1)[-1])
        if resource == SHELL_RESOURCE:
            shell_id = selector(header, "ShellId")
            if action == ACTION_CREATE:
                return self.create_shell(message_id)
            if action == ACTION_COMMAND:
                return self.command(message_id, shell_id, body)
            if action == ACTION_RECEIVE:
                return self.receive(message_id, shell_id, body)
            if action == ACTION_SIGNAL:
                return self.signal(message_id, shell_id, body)
            if action == ACTION_DELETE:
                return self.delete_shell(message_id, shell_id)
        raise Fault(
            500, "Sender", "wsa:ActionNotSupported",
            "action %r on %r is not supported by this stand-in" % (action, resource),
        )

    def identify(self):
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<s:Envelope xmlns:s="%s" xmlns:wsmid="%s"><s:Header/><s:Body>'
            "<wsmid:IdentifyResponse>"
            "<wsmid:ProtocolVersion>%s</wsmid:ProtocolVersion>"
            "<wsmid:ProductVendor>vmgate test agent</wsmid:ProductVendor>"
            "<wsmid:ProductVersion>OS: 0.0.0 SP: 0.0 Stack: 3.0 VM: %s</wsmid:ProductVersion>"
            "<wsmid:SecurityProfiles>"
            "<wsmid:SecurityProfileName>%s</wsmid:SecurityProfileName>"
            "</wsmid:SecurityProfiles>"
            "</wsmid:IdentifyResponse></s:Body></s:Envelope>\n"
            % (NS["s"], NS["wsmid"], NS["wsman"], escape(self.name), BASIC_PROFILE)
        )

    def instance(self, resource):
        """One instance of whatever class was asked for, named after the VM."""
        resource = resource or DEFAULT_RESOURCE
        cls = resource.rstrip("/").rsplit("/", 1)[-1] or "Instance"
        if not cls.replace("_", "").isalnum():
            cls = "Instance"
        name = escape(self.name)
        return (
            '<p:{c} xmlns:p="{r}"><p:CSName>{n}</p:CSName><p:Name>{n}</p:Name>'
            "<p:Caption>vmgate test agent</p:Caption><p:Version>0.0.0</p:Version>"
            "<p:Status>OK</p:Status></p:{c}>".format(c=cls, r=attribute(resource), n=name)
        )

    def reference(self, resource):
        """The endpoint reference of the one instance."""
        return (
            "<wsa:EndpointReference><wsa:Address>%s</wsa:Address><wsa:ReferenceParameters>"
            "<wsman:ResourceURI>%s</wsman:ResourceURI><wsman:SelectorSet>"
            '<wsman:Selector Name="Name">%s</wsman:Selector></wsman:SelectorSet>'
            "</wsa:ReferenceParameters></wsa:EndpointReference>"
            % (ANONYMOUS, escape(resource or ""), escape(self.name))
        )

    def invoke(self, message_id, resource, method):
        """A custom method (DSP0226 §6.6): always succeeds, returns 0."""
        if not method.replace("_", "").isalnum():
            raise Fault(400, "Sender", "wsa:ActionNotSupported", "bad method name %r" % method)
        payload = (
            '<p:{m}_OUTPUT xmlns:p="{r}"><p:ReturnValue>0</p:ReturnValue></p:{m}_OUTPUT>'
        ).format(m=method, r=attribute(resource))
        return envelope(resource.rstrip("/") + "/" + method + "Response", message_id, payload)

    def enumerate(self, message_id, resource, body):
        request = body.find("wsen:Enumerate", NS)
        optimized = request is not None and (
            request.find("wsman:OptimizeEnumeration", NS) is not None)
        mode = text(request, "wsman:EnumerationMode")
        context = "uuid:%s" % uuid.uuid4()
        item = self.instance(resource)
        # DSP0226 §8.7: EPRs instead of, or beside, the objects.
        if mode == "EnumerateEPR":
            item = self.reference(resource)
        elif mode == "EnumerateObjectAndEPR":
            item = "<wsman:Item>%s%s</wsman:Item>" % (item, self.reference(resource))
        if optimized:
            # DSP0226 §8.2.3: everything fits in this response, so the
            # sequence ends here and the context is empty: nothing to Pull.
            # (wsl pulls whenever the context has a value, and `wsl invoke`
            # reads the EPR from the last response it got.)
            payload = (
                "<wsen:EnumerateResponse><wsen:EnumerationContext/><wsman:Items>%s"
                "</wsman:Items><wsman:EndOfSequence/></wsen:EnumerateResponse>" % item
            )
        else:
            with self.lock:
                self.enumerations[context] = [item]
            payload = (
                "<wsen:EnumerateResponse><wsen:EnumerationContext>%s</wsen:EnumerationContext>"
                "</wsen:EnumerateResponse>" % context
            )
        return envelope(NS["wsen"] + "/EnumerateResponse", message_id, payload)

    def pull(self, message_id, body):
        context = text(body, "wsen:Pull/wsen:EnumerationContext")
        with self.lock:
            items = self.enumerations.pop(context, None)
        if items is None:
            raise Fault(400, "Sender", "wsen:InvalidEnumerationContext",
                        "unknown enumeration context %r" % context)
        # The last PullResponse carries no context (WS-Enumeration §3.2).
        payload = (
            "<wsen:PullResponse><wsen:Items>%s</wsen:Items><wsen:EndOfSequence/>"
            "</wsen:PullResponse>" % "".join(items)
        )
        return envelope(NS["wsen"] + "/PullResponse", message_id, payload)

    def release(self, message_id, body):
        context = text(body, "wsen:Release/wsen:EnumerationContext")
        with self.lock:
            self.enumerations.pop(context, None)
        return envelope(NS["wsen"] + "/ReleaseResponse", message_id, "")

    def create_shell(self, message_id):
        shell_id = str(uuid.uuid4()).upper()
        with self.lock:
            self.shells[shell_id] = {}
        payload = (
            "<wxf:ResourceCreated><wsa:Address>%s</wsa:Address><wsa:ReferenceParameters>"
            "<wsman:ResourceURI>%s</wsman:ResourceURI><wsman:SelectorSet>"
            '<wsman:Selector Name="ShellId">%s</wsman:Selector></wsman:SelectorSet>'
            "</wsa:ReferenceParameters></wxf:ResourceCreated>"
            "<rsp:Shell><rsp:ShellId>%s</rsp:ShellId><rsp:ResourceUri>%s</rsp:ResourceUri>"
            "<rsp:Owner>vmgate</rsp:Owner><rsp:InputStreams>stdin</rsp:InputStreams>"
            "<rsp:OutputStreams>stdout stderr</rsp:OutputStreams></rsp:Shell>"
            % (ANONYMOUS, SHELL_RESOURCE, shell_id, shell_id, SHELL_RESOURCE)
        )
        return envelope(NS["wxf"] + "/CreateResponse", message_id, payload)

    def run(self, command, arguments):
        """What the "command" prints: (stdout, stderr, exit code)."""
        line = " ".join(p for p in (command.strip(), arguments.strip()) if p)
        verb, _, rest = line.partition(" ")
        verb = verb.lower()
        if verb == "hostname":
            return self.name + "\r\n", "", 0
        if verb == "echo":
            return rest + "\r\n", "", 0
        if verb == "exit":
            try:
                return "", "", int(rest.strip() or "0")
            except ValueError:
                return "", "exit: %r is not a number\r\n" % rest, 1
        return "hello from %s\r\n%s\r\n" % (self.name, line), "", 0

    def command(self, message_id, shell_id, body):
        line = body.find("rsp:CommandLine", NS)
        if line is None:
            raise Fault(400, "Sender", "wsman:SchemaValidationError", "no rsp:CommandLine")
        command_id = str(uuid.uuid4()).upper()
        result = self.run(text(line, "rsp:Command") or "", " ".join(
            a.text or "" for a in line.findall("rsp:Arguments", NS)))
        with self.lock:
            self.shell(shell_id)[command_id] = result
        payload = (
            "<rsp:CommandResponse><rsp:CommandId>%s</rsp:CommandId></rsp:CommandResponse>"
            % command_id
        )
        return envelope(NS["rsp"] + "/CommandResponse", message_id, payload)

    def receive(self, message_id, shell_id, body):
        desired = body.find("rsp:Receive/rsp:DesiredStream", NS)
        command_id = desired.get("CommandId") if desired is not None else None
        with self.lock:
            commands = self.shell(shell_id)
            if command_id not in commands:
                raise Fault(400, "Sender", "wsman:InvalidSelectors",
                            "unknown command %r" % command_id)
            stdout, stderr, code = commands[command_id]
        # Everything in one response: the data, then each stream's end, then
        # the state Done with the exit code (MS-WSMV §3.1.4.14).
        streams = []
        for name, data in (("stdout", stdout), ("stderr", stderr)):
            stream = '<rsp:Stream Name="%s" CommandId="%s"' % (name, command_id)
            if data:
                encoded = base64.b64encode(data.encode("utf-8")).decode("ascii")
                streams.append("%s>%s</rsp:Stream>" % (stream, encoded))
            streams.append('%s End="true"></rsp:Stream>' % stream)
        payload = (
            "<rsp:ReceiveResponse>%s"
            '<rsp:CommandState CommandId="%s" State="%s"><rsp:ExitCode>%d</rsp:ExitCode>'
            "</rsp:CommandState></rsp:ReceiveResponse>"
            % ("".join(streams), command_id, STATE_DONE, code)
        )
        return envelope(NS["rsp"] + "/ReceiveResponse", message_id, payload)

    def signal(self, message_id, shell_id, body):
        signal = body.find("rsp:Signal", NS)
        command_id = signal.get("CommandId") if signal is not None else None
        with self.lock:
            self.shell(shell_id).pop(command_id, None)
        return envelope(NS["rsp"] + "/SignalResponse", message_id, "<rsp:SignalResponse/>")

    def delete_shell(self, message_id, shell_id):
        with self.lock:
            self.shell(shell_id)
            del self.shells[shell_id]
        return envelope(NS["wxf"] + "/DeleteResponse", message_id, "")

    def shell(self, shell_id):
        """The commands of a shell; the caller holds the lock."""
        if shell_id not in self.shells:
            raise Fault(400, "Sender", "wsman:InvalidSelectors", "unknown shell %r" % shell_id)
        return self.shells[shell_id]


def text(node, path):
    if node is None:
        return None
    found = node.find(path, NS)
    return found.text.strip() if found is not None and found.text else None


def selector(header, name):
    if header is None:
        return None
    for s in header.findall("wsman:SelectorSet/wsman:Selector", NS):
        if s.get("Name") == name:
            return (s.text or "").strip()
    return None


class Handler(http.server.BaseHTTPRequestHandler):
    # Head and body are separate writes: without this, Nagle holds the body
    # back until the peer's delayed ACK (~40 ms per keep-alive request).
    # --nagle turns it off, for tests of what stands in front.
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"  # keep-alive; every response has a length
    server_version = "vmgate-wsman-agent"

    def route(self):
        """The request's path; absolute form (RFC 9112 §3.2.2) is tolerated."""
        self.action = None
        if not self.path.startswith("/"):
            return urllib.parse.urlsplit(self.path).path or "/"
        return self.path.split("?", 1)[0]

    def do_POST(self):
        if self.route() != "/wsman":
            return self.reply(404, "text/plain", "no endpoint %s\n" % self.path)
        body = self.read_body()
        if body is None:
            self.close_connection = True
            return self.reply(400, "text/plain", "unreadable request body\n")
        content_type = self.headers.get("Content-Type", "")
        if not content_type.lower().startswith("application/soap+xml"):
            return self.reply(415, "text/plain", "Content-Type must be application/soap+xml\n")
        try:
            root = ET.fromstring(body)
        except ET.ParseError as e:
            fault = Fault(400, "Sender", "wsman:SchemaValidationError", "bad XML: %s" % e)
            return self.fault(fault, None)
        header = root.find("s:Header", NS)
        is_identify = root.find("s:Body/wsmid:Identify", NS) is not None
        self.action = ACTION_IDENTIFY if is_identify else text(header, "wsa:Action")
        exempt = is_identify and self.headers.get("WSMANIDENTIFY", "").lower() == "unauthenticated"
        if not exempt and not self.authorized():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="WSMAN"')
            self.send_header("Content-Length", "0")
            return self.end_headers()
        try:
            response = self.server.agent.handle(root)
        except Fault as f:
            return self.fault(f, text(header, "wsa:MessageID"))
        self.reply(200, SOAP_TYPE, response)

    def do_GET(self):
        path = self.route()
        if path == "/hello":
            return self.reply(200, "text/plain", "hello from %s\n" % self.server.agent.name)
        if path == "/wsman":
            return self.reply(405, "text/plain", "POST only\n", [("Allow", "POST")])
        self.reply(404, "text/plain", "no endpoint %s\n" % self.path)

    def authorized(self):
        expected = self.server.credentials
        if expected is None:
            return True
        scheme, _, value = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            return base64.b64decode(value.strip(), validate=True).decode("utf-8") == expected
        except (binascii.Error, UnicodeDecodeError):
            return False

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks, total = [], 0
            while True:
                size_line = self.rfile.readline(1024)
                try:
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    return None
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    return None
                chunk = self.rfile.read(size)
                self.rfile.readline(16)
                if len(chunk) != size:
                    return None
                chunks.append(chunk)
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return None
        if length < 0 or length > MAX_BODY:
            return None
        body = self.rfile.read(length)
        return body if len(body) == length else None

    def fault(self, fault, relates_to):
        self.reply(fault.status, SOAP_TYPE, fault_envelope(fault, relates_to))

    def reply(self, status, content_type, text_body, extra_headers=()):
        data = text_body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra_headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_request(self, code="-", size="-"):
        """One key=value line per request; values a client controls are quoted."""
        headers = self.headers
        action = getattr(self, "action", None)
        client = self.client_address
        fields = [
            ("event", "request"),
            ("vm", self.server.agent.name),
            ("client", "%s:%s" % client[:2] if isinstance(client, tuple) else "unix"),
            ("method", self.command),
            ("path", self.path),
            ("status", getattr(code, "value", code)),
            ("action", action.rsplit("/", 1)[-1] if action else None),
            ("x_vm_id", headers.get("X-VM-Id") if headers else None),
            ("forwarded", headers.get("Forwarded") if headers else None),
        ]
        line = " ".join("%s=%s" % (k, log_value(v)) for k, v in fields)
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def log_message(self, format, *args):
        sys.stderr.write("event=http_error vm=%s detail=%s\n" % (
            log_value(self.server.agent.name), log_value(format % args)))

    def version_string(self):
        return self.server_version


def log_value(value):
    """A value for the log line: - when absent, quoted when it holds spaces,
    quotes or control characters, so a client cannot forge a field."""
    if value is None:
        return "-"
    value = str(value)
    if value and value.isprintable() and not any(c in value for c in ' "=\\'):
        return value
    escaped = value.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    return '"%s"' % escaped


def attribute(value):
    """Escapes a value for a double-quoted XML attribute."""
    return escape(value, {'"': "&quot;"})


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    parser = argparse.ArgumentParser(description="WS-Management stand-in for vmgate tests")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any free port)")
    parser.add_argument("--name", default="agent", help="the VM name this agent pretends to be")
    parser.add_argument("--user", help="require HTTP Basic auth with this user")
    parser.add_argument("--password", default="", help="password for --user")
    parser.add_argument("--nagle", action="store_true",
                        help="leave Nagle's algorithm on: each body waits for the ACK of its head")
    args = parser.parse_args()
    Handler.disable_nagle_algorithm = not args.nagle

    host, sep, port = args.listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        parser.error("--listen takes HOST:PORT, got %r" % args.listen)
    host = host.strip("[]") or "0.0.0.0"
    Server.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = Server((host, int(port)), Handler)
    server.agent = Agent(args.name)
    server.credentials = "%s:%s" % (args.user, args.password) if args.user is not None else None
    print("listening %d" % server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
