"""Peers and material for the security end-to-end tests (Tests/e2e/test_security.py).

Everything here is independent of StreamOtter's own code: keys and certificates come from
the `openssl` command line, JWTs are signed with the `cryptography` package (and, for the
forgeries, assembled by hand), the introspection endpoint is Python's `http.server`, TLS
clients are Python `ssl` and `openssl s_client`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from conftest import RE_BOOTSTRAP, STARTUP_TIMEOUT, Gateway, Proc, unique  # noqa: F401

OPENSSL = "openssl"

# `listening: ws://...` or `listening: wss://...` (conftest's own regex knows only ws://).
RE_LISTENING_ANY = re.compile(r"^listening: (wss?)://([^/\s]+):(\d+)/\s*$")


# =========================================================================== processes


def start_gateway(factory, args=(), topics=None, unique_topics=True) -> Gateway:
    """`factory.start` for plain and TLS gateways alike: the same process handling (the
    factory stops it at teardown and fails the test on a non-zero exit), with a listening
    line that may say wss://. `gw.url` is ws:// or wss://."""
    topics = dict({"t1": 1} if topics is None else topics)
    names = {k: (unique(k) if unique_topics else k) for k in topics}
    partitions = {names[k]: p for k, p in topics.items()}
    argv = [factory.binary, "serve", "--listen", "127.0.0.1:0"]
    for real, p in partitions.items():
        argv += ["--topic", f"{real}:{p}"]
    argv += list(args)
    proc = Proc(argv, "streamotter serve")
    gw = Gateway(proc, names, partitions)
    factory.started.append(gw)
    try:
        gw.bootstrap = proc.wait_line(RE_BOOTSTRAP, STARTUP_TIMEOUT).group(1)
        m = proc.wait_line(RE_LISTENING_ANY, STARTUP_TIMEOUT)
        gw.host, gw.port = m.group(2), int(m.group(3))
        gw.url = f"{m.group(1)}://{gw.host}:{gw.port}/"
    except BaseException:
        proc.kill()
        gw.stopped_rc = proc.proc.returncode
        raise
    return gw


def sets(kv: dict) -> list[str]:
    """--set KEY=VALUE arguments; a list value repeats the key."""
    out = []
    for k, v in kv.items():
        for one in (v if isinstance(v, list) else [v]):
            out += ["--set", f"{k}={one}"]
    return out


def run(cmd, *, input: bytes | None = None, timeout: float = 30, check: bool = True,
        cwd=None) -> subprocess.CompletedProcess:
    cp = subprocess.run([str(c) for c in cmd], input=input, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, timeout=timeout, cwd=cwd)
    if check and cp.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed rc={cp.returncode}\n"
                             f"stdout: {cp.stdout[-2000:]!r}\nstderr: {cp.stderr[-2000:]!r}")
    return cp


# =========================================================================== keys


def b64u(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def b64u_json(obj) -> str:
    return b64u(json.dumps(obj, separators=(",", ":")).encode())


def _uint(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8 or 1, "big")


@dataclass
class KeyMaterial:
    """Keys made with `openssl genpkey`, and the files the gateway reads."""

    dir: Path
    rsa_key: object = None
    rsa_pub_pem: bytes = b""
    ec_key: object = None
    ed_key: object = None
    ed_pub_file: Path | None = None
    other_rsa_key: object = None  # never configured: "unknown key" forgeries
    hmac_secret: bytes = b""
    hmac_file: Path | None = None
    jwks_file: Path | None = None

    def gateway_args(self, extra: dict | None = None) -> list[str]:
        """auth.mode=jwt with every key: JWKS (RSA kid rsa1, P-256 kid ec1), a PEM file
        (Ed25519 kid ed1) and an HMAC secret (kid hs1); `extra` adds or overrides keys."""
        kv = {
            "auth.mode": "jwt",
            "auth.jwt.jwks_file": self.jwks_file,
            "auth.jwt.pem_file": f"{self.ed_pub_file}#ed1",
            "auth.jwt.hmac_secret_file": self.hmac_file,
            "auth.jwt.hmac_kid": "hs1",
        }
        kv.update(extra or {})
        return sets(kv)


def make_keys(d: Path) -> KeyMaterial:
    d.mkdir(parents=True, exist_ok=True)
    km = KeyMaterial(dir=d)

    def genpkey(name, *alg):
        path = d / name
        run([OPENSSL, "genpkey", *alg, "-out", path])
        return serialization.load_pem_private_key(path.read_bytes(), None)

    km.rsa_key = genpkey("rsa.pem", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048")
    km.ec_key = genpkey("ec.pem", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")
    km.ed_key = genpkey("ed25519.pem", "-algorithm", "ED25519")
    km.other_rsa_key = genpkey("other-rsa.pem", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048")
    km.rsa_pub_pem = km.rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    km.ed_pub_file = d / "ed25519.pub.pem"
    run([OPENSSL, "pkey", "-in", d / "ed25519.pem", "-pubout", "-out", km.ed_pub_file])

    km.hmac_secret = os.urandom(48)
    km.hmac_file = d / "hmac.secret"
    km.hmac_file.write_bytes(km.hmac_secret)

    rn = km.rsa_key.public_key().public_numbers()
    en = km.ec_key.public_key().public_numbers()
    jwks = {"keys": [
        {"kty": "RSA", "kid": "rsa1", "use": "sig", "n": b64u(_uint(rn.n)), "e": b64u(_uint(rn.e))},
        {"kty": "EC", "kid": "ec1", "use": "sig", "crv": "P-256",
         "x": b64u(en.x.to_bytes(32, "big")), "y": b64u(en.y.to_bytes(32, "big"))},
    ]}
    km.jwks_file = d / "jwks.json"
    km.jwks_file.write_text(json.dumps(jwks, indent=1))
    return km


# =========================================================================== JWT


def sign(alg: str, key, signing_input: bytes) -> bytes:
    """A JWS signature (RFC 7515/7518/8037) made with `cryptography` (or hmac)."""
    if alg.startswith("HS"):
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
        return hmac.new(key, signing_input, digest).digest()
    if alg.startswith("RS"):
        h = {"RS256": hashes.SHA256(), "RS384": hashes.SHA384(), "RS512": hashes.SHA512()}[alg]
        return key.sign(signing_input, padding.PKCS1v15(), h)
    if alg == "PS256":
        return key.sign(signing_input, padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                                   salt_length=32), hashes.SHA256())
    if alg == "ES256":
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    if alg == "EdDSA":
        return key.sign(signing_input)
    raise ValueError(alg)


def make_jwt(alg: str, key, claims: dict, *, kid: str | None = None, header: dict | None = None) -> str:
    h = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        h["kid"] = kid
    if header:
        h.update(header)
    si = (b64u_json(h) + "." + b64u_json(claims)).encode()
    return si.decode() + "." + b64u(sign(alg, key, si))


def claims(sub="alice", ttl: float = 300, **extra) -> dict:
    now = int(time.time())
    c = {"sub": sub, "iat": now, "exp": now + int(ttl)}
    c.update(extra)
    return c


# =========================================================================== HTTP / upgrade


@dataclass
class Response:
    status: int | None
    headers: dict
    body: bytes
    raw: bytes


def _read_head(sock, timeout: float) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no complete HTTP response head within {timeout}s: {buf[:300]!r}")
        sock.settimeout(left)
        try:
            c = sock.recv(65536)
        except (ConnectionResetError, socket.timeout):
            c = b""
            if time.monotonic() < deadline:
                continue
        if not c:
            break
        buf += c
    return buf


def parse_head(raw: bytes) -> Response:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1."):
        return Response(None, {}, b"", raw)
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower().decode()] = v.strip().decode("latin-1")
    return Response(status, headers, body, raw)


def upgrade_request(host: str, port: int, *, path: str = "/", headers=(), protocols="streamotter.v1") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if protocols:
        lines.append(f"Sec-WebSocket-Protocol: {protocols}")
    for k, v in (headers.items() if isinstance(headers, dict) else headers):
        lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def upgrade(host: str, port: int, *, path: str = "/", headers=(), protocols="streamotter.v1",
            timeout: float = 10, tls: ssl.SSLContext | None = None, raw_request: bytes | None = None) -> Response:
    """Sends one upgrade request and returns the response head. After a 101 the socket is
    closed right away; after a refusal the body is read to EOF (the gateway closes)."""
    s = socket.create_connection((host, port), timeout=timeout)
    try:
        if tls is not None:
            s = tls.wrap_socket(s, server_hostname="localhost")
        s.sendall(raw_request or upgrade_request(host, port, path=path, headers=headers, protocols=protocols))
        raw = _read_head(s, timeout)
        r = parse_head(raw)
        if r.status is not None and r.status != 101:
            # the body, up to EOF
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                s.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    c = s.recv(65536)
                except (ConnectionResetError, socket.timeout, ssl.SSLError):
                    break
                if not c:
                    break
                raw += c
            r = parse_head(raw)
        return r
    finally:
        s.close()


def auth_header(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


# =========================================================================== introspection


@dataclass
class IntrospectionServer:
    """An RFC 7662 endpoint: POST /introspect, HTTP Basic client authentication, answers
    from `tokens` (token -> claims, active) or {"active":false}."""

    client_id: str = "gateway"
    client_secret: str = "s3cr3t-introspection-client-secret"
    tokens: dict = field(default_factory=dict)
    requests: list = field(default_factory=list)
    bad_auth: int = 0
    #: seconds to wait before answering a token it does not know (a slow endpoint)
    delay_unknown: float = 0.0

    def start(self):
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n).decode()
                form = urllib.parse.parse_qs(body)
                want = "Basic " + base64.b64encode(f"{srv.client_id}:{srv.client_secret}".encode()).decode()
                if self.path != "/introspect" or self.headers.get("Authorization") != want:
                    srv.bad_auth += 1
                    self._send(401, {"error": "invalid_client"})
                    return
                token = form.get("token", [""])[0]
                srv.requests.append({"token": token, "hint": form.get("token_type_hint", [None])[0],
                                     "content_type": self.headers.get("Content-Type")})
                answer = srv.tokens.get(token)
                if answer is None and srv.delay_unknown:
                    time.sleep(srv.delay_unknown)
                self._send(200, answer if answer is not None else {"active": False})

            def _send(self, status, obj):
                b = json.dumps(obj).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(b)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(b)
                except OSError:
                    pass  # the gateway gave up waiting (its timeout) and closed

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/introspect"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def count(self, token: str) -> int:
        return sum(1 for r in self.requests if r["token"] == token)

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# =========================================================================== certificates


@dataclass
class Cert:
    cert: Path
    key: Path

    def load(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert.read_bytes())


def self_signed(d: Path, name: str, cn: str, san: str = "DNS:localhost,IP:127.0.0.1", days: int = 2) -> Cert:
    """`openssl req -x509` with a subjectAltName (an EC P-256 key: quick to make)."""
    c = Cert(d / f"{name}.crt", d / f"{name}.key")
    run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", c.key, "-out", c.cert, "-days", str(days), "-subj", f"/CN={cn}",
         "-addext", f"subjectAltName={san}", "-addext", "basicConstraints=critical,CA:TRUE"])
    return c


def signed_by(d: Path, ca: Cert, name: str, cn: str, *, san: str | None = None, client: bool = False) -> Cert:
    """A key and CSR made with openssl, signed by `ca` (`openssl x509 -req`)."""
    c = Cert(d / f"{name}.crt", d / f"{name}.key")
    csr = d / f"{name}.csr"
    run([OPENSSL, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", c.key, "-out", csr, "-subj", f"/CN={cn}"])
    ext = d / f"{name}.ext"
    lines = ["basicConstraints=CA:FALSE",
             f"extendedKeyUsage={'clientAuth' if client else 'serverAuth'}"]
    if san:
        lines.append(f"subjectAltName={san}")
    ext.write_text("\n".join(lines) + "\n")
    run([OPENSSL, "x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-CAcreateserial",
         "-out", c.cert, "-days", "2", "-extfile", ext, "-sha256"])
    return c


def client_ctx(cafile: Path | None = None, *, cert: Cert | None = None, verify: bool = True,
               minimum=None, maximum=None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        ctx.load_verify_locations(cafile=str(cafile))
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    if minimum is not None:
        ctx.minimum_version = minimum
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


def peer_certificate(host: str, port: int, server_hostname: str = "localhost") -> x509.Certificate:
    """The certificate a fresh TLS connection is served (no verification)."""
    ctx = client_ctx(verify=False)
    with socket.create_connection((host, port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname=server_hostname) as t:
            der = t.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der)


def common_name(c: x509.Certificate) -> str:
    return c.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value


# =========================================================================== kcat with headers


@dataclass(frozen=True)
class HRecord:
    partition: int
    offset: int
    headers: dict
    value: bytes | None
    header_pairs: tuple = ()


def kcat_consume_headers(kcat: str, bootstrap: str, topic: str, *, expect: int = 1,
                         timeout: float = 20) -> list[HRecord]:
    """Every record of `topic` with its headers (`kcat -C -e -f '%p %o %S %h|%s\\n'`);
    re-reads until `expect` records are visible or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        cp = run([kcat, "-b", bootstrap, "-C", "-t", topic, "-e", "-q", "-o", "beginning",
                  "-f", "%p %o %S %h|%s\n"], timeout=max(5.0, deadline - time.monotonic()))
        out, recs, i = cp.stdout, [], 0
        while i < len(out):
            fields = []
            for _ in range(3):
                j = out.index(b" ", i)
                fields.append(int(out[i:j]))
                i = j + 1
            p, o, vl = fields
            j = out.index(b"|", i)
            htext = out[i:j].decode("utf-8", "replace")
            i = j + 1
            pairs = tuple(tuple(kv.partition("=")[::2]) for kv in filter(None, htext.split(",")))
            headers = dict(pairs)
            val = None if vl < 0 else out[i:i + vl]
            i += max(vl, 0)
            assert out[i:i + 1] == b"\n", f"kcat output misparsed: {out[max(0, i - 40):i + 40]!r}"
            i += 1
            recs.append(HRecord(p, o, headers, val, pairs))
        if len(recs) >= expect or time.monotonic() >= deadline:
            return recs
        time.sleep(0.1)


def wait_file_lines(path: Path, predicate, timeout: float = 10, what: str = "audit lines"):
    """Polls a JSON-lines file until predicate(list of objects) is truthy; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        lines = []
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    lines.append(json.loads(line))
        v = predicate(lines)
        if v:
            return lines
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; file has:\n"
                                 + "\n".join(json.dumps(x) for x in lines[-30:]))
        time.sleep(0.05)
