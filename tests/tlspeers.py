"""Real TLS peers on loopback for tests: certificates made with the ``openssl`` CLI, a threaded
Python ``ssl`` server (SIMPLE or MUTUAL, TLS 1.2 or 1.3, SNI, tiny HTTP/1.1), ``openssl s_server``,
a blackhole that accepts TCP but never speaks, and a port nobody listens on.

Nothing here imports kimpki: these are independent peers to test kimpki against.

    ca = OpenSSLCA(tmp / "ca", "example.com")
    server = ca.issue("kim.example.com")                  # Issued(cert, key)
    client = ca.issue("kim-client.example.com", client=True)
    with TLSServer(server, client_ca=ca.cert) as srv:     # MUTUAL, TLS 1.3
        ... connect to srv.address, srv.port ...
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

HEALTH = {"/health": (200, b'{"status":"UP"}')}


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, both PEM files."""

    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path | None = None) -> None:
    res = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {res.stderr.strip()}")


def _random_serial() -> str:
    """A positive random 127-bit serial (thread-safe, unlike ``-CAcreateserial``'s shared file)."""
    return "0x" + format(int.from_bytes(os.urandom(16), "big") >> 1 or 1, "x")


_CA_CNF = """\
[ca]
default_ca = kim
[kim]
database = {db}/index.txt
new_certs_dir = {db}
serial = {db}/serial
default_md = sha256
policy = any
copy_extensions = none
unique_subject = no
[any]
commonName = supplied
"""


class OpenSSLCA:
    """A root CA made by ``openssl req -x509`` (EC P-256, v3 CA extensions) that issues leaves.

    ``issue`` uses the classic two steps (``openssl req -new`` + ``openssl x509 -req``) the
    operators' notes used; ``issue_dated`` uses ``openssl ca`` for explicit validity dates
    (``openssl x509`` in OpenSSL 3.0 has no ``-not_before``/``-not_after``).
    """

    def __init__(self, directory: Path, name: str = "example.com", org: str = "example Inc.", days: int = 30):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.cert = self.dir / f"{name}.crt"
        self.key = self.dir / f"{name}.key"
        _openssl("req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", str(self.key), "-out", str(self.cert), "-subj", f"/O={org}/CN={name}",
                 "-days", str(days),
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        self._shared_key: Path | None = None

    def _csr(self, stem: str, subject: str, key: Path | None) -> tuple[Path, Path]:
        csr = self.dir / f"{stem}.csr"
        if key is None:
            key = self.dir / f"{stem}.key"
            _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                     "-keyout", str(key), "-out", str(csr), "-subj", subject)
        else:
            _openssl("req", "-new", "-key", str(key), "-out", str(csr), "-subj", subject)
        return csr, key

    def _extfile(self, stem: str, sans: Iterable[str], client: bool) -> Path:
        ext = self.dir / f"{stem}.ext"
        lines = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature",
                 f"extendedKeyUsage={'clientAuth' if client else 'serverAuth'}"]
        sans = list(sans)
        if sans:
            lines.append("subjectAltName=" + ",".join(s if ":" in s else f"DNS:{s}" for s in sans))
        ext.write_text("\n".join(lines) + "\n")
        return ext

    def shared_key(self) -> Path:
        """One EC key reused by many leaves (fast bulk issuance for SNI tests)."""
        if self._shared_key is None:
            self._shared_key = self.dir / "shared.key"
            _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                     "-out", str(self._shared_key))
        return self._shared_key

    def issue(self, cn: str, sans: Iterable[str] | None = None, *, client: bool = False, days: int = 30,
              stem: str | None = None, key: Path | None = None) -> Issued:
        """Issue a leaf. ``sans`` defaults to ``[cn]``; pass ``[]`` for a CN-only certificate.
        SAN entries without a ``TYPE:`` prefix are DNS names (``IP:127.0.0.1`` works too)."""
        stem = stem or (cn.replace("*", "_wildcard") + (".client" if client else ""))
        csr, key = self._csr(stem, f"/CN={cn}", key)
        ext = self._extfile(stem, [cn] if sans is None else sans, client)
        cert = self.dir / f"{stem}.crt"
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
                 "-set_serial", _random_serial(), "-days", str(days),
                 "-extfile", str(ext), "-out", str(cert))
        return Issued(cert, key)

    def issue_many(self, names: Iterable[str], workers: int = 8) -> dict[str, Issued]:
        """Server certificates for many names at once (SNI tests): ``{name: Issued}``.

        They share one key and one CSR (subject ``O=tlspeers SNI``); each gets its own SAN, so
        one ``openssl x509 -req`` per name is all it costs.
        """
        from concurrent.futures import ThreadPoolExecutor

        key = self.shared_key()
        csr = self.dir / "shared.csr"
        if not csr.exists():
            _openssl("req", "-new", "-key", str(key), "-out", str(csr), "-subj", "/O=tlspeers SNI")

        def one(name: str) -> Issued:
            ext = self._extfile(name, [name], client=False)
            cert = self.dir / f"{name}.crt"
            _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
                     "-set_serial", _random_serial(), "-days", "30", "-extfile", str(ext), "-out", str(cert))
            return Issued(cert, key)

        names = list(names)
        with ThreadPoolExecutor(workers) as pool:
            return dict(zip(names, pool.map(one, names)))

    def issue_dated(self, cn: str, start: str, end: str, sans: Iterable[str] | None = None, *,
                    client: bool = False, stem: str | None = None) -> Issued:
        """Issue a leaf valid from ``start`` to ``end`` (``YYYYMMDDHHMMSSZ``), e.g. an expired one."""
        stem = stem or f"{cn}.{start}-{end}"
        csr, key = self._csr(stem, f"/CN={cn}", None)
        ext = self._extfile(stem, [cn] if sans is None else sans, client)
        db = self.dir / "cadb"
        db.mkdir(exist_ok=True)
        (db / "index.txt").touch()
        if not (db / "serial").exists():
            (db / "serial").write_text(os.urandom(16).hex() + "\n")
        cnf = self.dir / "ca.cnf"
        cnf.write_text(_CA_CNF.format(db=db))
        cert = self.dir / f"{stem}.crt"
        _openssl("ca", "-batch", "-config", str(cnf), "-cert", str(self.cert), "-keyfile", str(self.key),
                 "-in", str(csr), "-out", str(cert), "-startdate", start, "-enddate", end,
                 "-extfile", str(ext), "-notext")
        return Issued(cert, key)


# --------------------------------------------------------------------------- plain sockets


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (closed port for 'connection refused')."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Blackhole:
    """Accepts TCP connections (kernel backlog) and never sends a byte: a TLS client times out."""

    def __init__(self, host: str = "127.0.0.1"):
        self.address = host
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(fam, socket.SOCK_STREAM)
        self._sock.bind((host, 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "Blackhole":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- Python ssl server


@dataclass
class Handshake:
    """What the server saw for one connection."""

    sni: str | None
    ok: bool
    error: str | None = None
    client_cert: bool = False
    client_serial: str | None = None  # hex, of the client certificate the server accepted
    version: str | None = None
    alpn: str | None = None
    request: str | None = None


@dataclass
class TLSServer:
    """A threaded TLS server on loopback answering minimal HTTP/1.1.

    - ``credential``: the default certificate/key (``Issued``).
    - ``sni``: ``{server_name: Issued}``; picked by ``sni_callback``. Unknown names get the
      default credential, or an ``unrecognized_name`` alert when ``strict_sni``.
    - ``client_ca``: a CA file. With it the server is MUTUAL: ``client_auth`` is ``"required"``
      (default, like Istio MUTUAL) or ``"optional"`` (like OPTIONAL_MUTUAL).
    - ``max_version``: e.g. ``ssl.TLSVersion.TLSv1_2`` to force TLS 1.2 (refusal in-handshake).
    - ``routes``: ``{path: (status, body)}``; other paths get 404.
    - ``alpn``: protocols the server accepts; with ``"h2"`` first it negotiates h2 and then,
      not speaking HTTP/2, idles until the client closes (a client must re-connect offering
      only http/1.1 to get an HTTP/1.1 answer).
    - ``tickets=False``: send no session tickets (a TLS 1.3 client then cannot tell acceptance
      from a slow refusal except by waiting).
    """

    credential: Issued
    sni: dict[str, Issued] = field(default_factory=dict)
    strict_sni: bool = False
    client_ca: Path | None = None
    client_auth: str = "required"
    max_version: ssl.TLSVersion | None = None
    routes: dict[str, tuple[int, bytes]] = field(default_factory=lambda: dict(HEALTH))
    alpn: tuple[str, ...] = ("http/1.1",)
    tickets: bool = True
    host: str = "127.0.0.1"
    handshakes: list[Handshake] = field(default_factory=list)

    def _context(self, cred: Issued) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cred.cert, cred.key)
        if self.max_version is not None:
            ctx.maximum_version = self.max_version
        if self.client_ca is not None:
            ctx.load_verify_locations(self.client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED if self.client_auth == "required" else ssl.CERT_OPTIONAL
        if self.alpn:
            ctx.set_alpn_protocols(list(self.alpn))
        if not self.tickets:
            ctx.num_tickets = 0
            ctx.options |= ssl.OP_NO_TICKET
        return ctx

    def start(self) -> "TLSServer":
        self._default_ctx = self._context(self.credential)
        self._sni_ctx = {name: self._context(c) for name, c in self.sni.items()}
        self._default_ctx.sni_callback = self._pick
        for ctx in self._sni_ctx.values():
            ctx.sni_callback = self._pick
        fam = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._sock = socket.socket(fam, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((self.host, 0))
        self._sock.listen(256)
        self.address = self.host
        self.port = self._sock.getsockname()[1]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()
        return self

    def _pick(self, sslobj, server_name, _ctx):
        sslobj._kimpki_sni = server_name
        if server_name in self._sni_ctx:
            sslobj.context = self._sni_ctx[server_name]
        elif self.strict_sni and self._sni_ctx:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        return None

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            r, _, _ = select.select([self._sock], [], [], 0.1)
            if not r:
                continue
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        hs = Handshake(sni=None, ok=False)
        try:
            tls = self._default_ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        except OSError as e:
            conn.close()
            hs.error = str(e)
            self._record(hs)
            return
        try:
            try:
                tls.do_handshake()
            except (ssl.SSLError, OSError) as e:
                hs.sni = getattr(tls, "_kimpki_sni", None)
                hs.error = getattr(e, "reason", None) or str(e)
                return
            hs.sni = getattr(tls, "_kimpki_sni", None)
            hs.ok = True
            hs.client_cert = tls.getpeercert() not in (None, {})
            if hs.client_cert:
                from cryptography import x509
                hs.client_serial = format(
                    x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number, "x")
            hs.version = tls.version()
            hs.alpn = tls.selected_alpn_protocol()
            if hs.alpn == "h2":
                self._idle(tls)  # like a server waiting for an HTTP/2 preface it never gets
                return
            self._http(tls, hs)
        finally:
            self._record(hs)
            try:
                tls.close()
            except OSError:
                pass

    def _idle(self, tls: ssl.SSLSocket) -> None:
        try:
            while tls.recv(4096):
                pass
        except (ssl.SSLError, OSError):
            pass

    def _http(self, tls: ssl.SSLSocket, hs: Handshake) -> None:
        buf = b""
        try:
            while b"\r\n\r\n" not in buf and len(buf) < 65536:
                chunk = tls.recv(4096)
                if not chunk:
                    return
                buf += chunk
        except (ssl.SSLError, OSError):
            return
        line = buf.split(b"\r\n", 1)[0].decode("latin-1")
        hs.request = line
        parts = line.split()
        path = parts[1] if len(parts) >= 2 else "/"
        status, body = self.routes.get(path, (404, b"not found\n"))
        head = (f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        try:
            tls.sendall(head + body)
        except OSError:
            pass

    def _record(self, hs: Handshake) -> None:
        with self._lock:
            self.handshakes.append(hs)

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(2)

    def __enter__(self) -> "TLSServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------- openssl s_server


class OpenSSLServer:
    """``openssl s_server -www`` on loopback: an independent second TLS implementation's CLI.

    With ``client_ca`` it runs ``-Verify 1`` (client certificate required). ``tls1_2`` forces
    TLS 1.2. ``-www`` answers any GET with a 200 status page.
    """

    def __init__(self, credential: Issued, client_ca: Path | None = None, tls1_2: bool = False,
                 extra: Iterable[str] = ()):
        self.address = "127.0.0.1"
        self.port = free_port()
        args = ["openssl", "s_server", "-accept", f"{self.address}:{self.port}", "-cert", str(credential.cert),
                "-key", str(credential.key), "-www", "-naccept", "1000"]
        if client_ca is not None:
            args += ["-Verify", "1", "-CAfile", str(client_ca)]
        if tls1_2:
            args += ["-tls1_2"]
        args += list(extra)
        self._args = args

    def start(self) -> "OpenSSLServer":
        self._proc = subprocess.Popen(self._args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"openssl s_server exited: {' '.join(self._args)}")
            try:
                socket.create_connection((self.address, self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("openssl s_server did not start listening")

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> "OpenSSLServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


CURL_REFUSED_CODES = (16, 55, 56)


def curl_refused(r: subprocess.CompletedProcess, alert: str) -> bool:
    """curl got no response from a TLS server that refused its client certificate (or its lack of
    one) after a TLS 1.3 handshake: either it read the server's alert (exit 56, the alert named on
    stderr) or, racing it, it found the connection closed while sending its first request bytes
    (exit 16 with HTTP/2, exit 55 "Send failure: Broken pipe" before HTTP/2 was agreed)."""
    out = r.stdout.decode() if isinstance(r.stdout, bytes) else r.stdout
    err = r.stderr.decode() if isinstance(r.stderr, bytes) else r.stderr
    return out == "" and r.returncode in CURL_REFUSED_CODES and (r.returncode != 56 or alert in err)


def assert_curl_refused(r: subprocess.CompletedProcess, alert: str) -> None:
    assert curl_refused(r, alert), (r.returncode, r.stdout, r.stderr)
