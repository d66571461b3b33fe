"""pki: certificates for tests, made at run time with the openssl CLI.

Nothing here is committed key material: every key is generated into the
test's temp dir and dies with it.

    pki = Pki(lab.path("pki"))
    ca = pki.ca("clients")
    alice = pki.client(ca, "alice", dns=["alice.ops.example"])
    expired = pki.client(ca, "old", expired=True)
    server = pki.server(pki.ca("hosts"), "kvm1", ips=["127.0.0.1"])
    # each is a Cert(cert=PATH, key=PATH); fingerprint(cert) gives the pin
    listener = {"address": "tcp:127.0.0.1:0", "tls": server.tls_table()}
"""

import dataclasses
import os
import subprocess


@dataclasses.dataclass
class Cert:
    name: str
    cert: str
    key: str

    def tls_table(self, **more):
        """hostd's [listener.tls] serving this certificate; `more` adds keys
        (client_ca=..., pinned_sha256=[...])."""
        return {"certificate": self.cert, "key": self.key, **more}


def openssl(*args, cwd=None):
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError("openssl %s: %s" % (" ".join(args), r.stderr.strip()))
    return r.stdout


def fingerprint(cert_path):
    """SHA-256 of the certificate as lowercase hex, the form hostd's pins use."""
    out = openssl("x509", "-in", cert_path, "-noout", "-fingerprint", "-sha256")
    return out.strip().split("=", 1)[1].replace(":", "").lower()


class Pki:
    def __init__(self, directory):
        self.dir = directory
        os.makedirs(self.dir, exist_ok=True)

    def _path(self, name):
        return os.path.join(self.dir, name)

    def _key(self, name):
        key = self._path(name + ".key")
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-out", key)
        os.chmod(key, 0o600)
        return key

    def ca(self, name):
        key = self._key(name + "-ca")
        cert = self._path(name + "-ca.pem")
        openssl("req", "-x509", "-new", "-key", key, "-out", cert, "-days", "2",
                "-subj", "/CN=%s test CA" % name,
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        return Cert(name, cert, key)

    def _issue(self, ca, name, usage, dns=(), uris=(), ips=(), expired=False, cn=True):
        key = self._key(name)
        csr = self._path(name + ".csr")
        cert = self._path(name + ".pem")
        subject = "/CN=%s" % name if cn else "/O=vmgate tests"
        openssl("req", "-new", "-key", key, "-out", csr, "-subj", subject)
        sans = ["DNS:" + d for d in dns] + ["URI:" + u for u in uris] + ["IP:" + i for i in ips]
        ext = self._path(name + ".ext")
        with open(ext, "w") as f:
            f.write("basicConstraints=CA:FALSE\nextendedKeyUsage=%s\n" % usage)
            if sans:
                f.write("subjectAltName=%s\n" % ",".join(sans))
        if not expired:
            openssl("x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key,
                    "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext)
        else:
            # `openssl ca` is the CLI that can set the validity period to the past.
            db = self._path(ca.name + "-db")
            os.makedirs(db, exist_ok=True)
            index = os.path.join(db, "index.txt")
            open(index, "a").close()
            conf = os.path.join(db, "ca.cnf")
            with open(conf, "w") as f:
                f.write("[ca]\ndefault_ca=test\n[test]\ndatabase=%s\nnew_certs_dir=%s\n"
                        "serial=%s\ndefault_md=sha256\npolicy=any\nunique_subject=no\n"
                        "[any]\ncommonName=optional\norganizationName=optional\n"
                        % (index, db, os.path.join(db, "serial")))
            with open(os.path.join(db, "serial"), "w") as f:
                f.write("%02X\n" % (len(open(index).readlines()) + 1))
            openssl("ca", "-batch", "-config", conf, "-cert", ca.cert, "-keyfile", ca.key,
                    "-in", csr, "-out", cert, "-extfile", ext, "-notext",
                    "-startdate", "20200101000000Z", "-enddate", "20200102000000Z")
        return Cert(name, cert, key)

    def client(self, ca, name, dns=(), uris=(), expired=False, cn=True):
        return self._issue(ca, name, "clientAuth", dns=dns, uris=uris, expired=expired, cn=cn)

    def server(self, ca, name, dns=("localhost",), ips=("127.0.0.1",)):
        return self._issue(ca, name, "serverAuth", dns=dns, ips=ips)

    def peer(self, ca, name):
        """A cluster host's certificate: it serves the peer listener and
        connects to other hosts', and names the host (DNS SAN and CN)."""
        return self._issue(ca, name, "serverAuth,clientAuth", dns=[name])
