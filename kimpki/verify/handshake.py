"""Check a gateway's SIMPLE or MUTUAL TLS with Python's ``ssl``, the way an operator would with
``curl -v --resolve host:443:addr --cacert ca.crt [--cert c.crt --key c.key] https://host/path``,
but saying plainly what passed and what failed.

``check_endpoint(target) -> Report`` makes up to three connections:

1. The main one (with the client certificate when one is given). Its handshake verifies the
   served chain against the CA (trust), the name against subjectAltName only (hostname; the CN
   is never consulted) and validity dates (expiry). Then it reads from the connection: with
   ``http_path`` it sends ``GET`` and reads the response; otherwise it waits for the server's
   verdict on the client (see "TLS 1.3 refusals" below).
2. MUTUAL only: one WITHOUT a client certificate, which the server must refuse. A server that
   lets it through fails with ``client_certificate_not_demanded``.
   OPTIONAL_MUTUAL: one without a certificate (the main one when none was given), which the
   server must ask for a certificate (else ``client_certificate_not_requested``) and admit.
   ``--min-tls V``: one offering only the version below V, which the server must refuse (else
   ``tls_floor_not_enforced``). ``--tls-version`` makes every connection offer that version only.
3. Only when ``http_path`` is given and the main connection negotiated ALPN ``h2`` (Envoy/Istio
   gateways do): a re-connection offering only ``http/1.1`` for the HTTP check. Speaking minimal
   HTTP/2 would save that handshake but needs HPACK (with Huffman decoding for non-indexed
   statuses); a second handshake is simpler and cannot be misread. The report's ``alpn`` is the
   one the gateway chose for a normal client (``h2``, ``http/1.1``).

TLS 1.3 refusals: the client's handshake completes *before* the server has looked at the
client's certificate, so a refusal (``certificate required`` alert 116, ``unknown ca``, ...)
arrives on the first read after the handshake. The read therefore waits until the server shows
its verdict: a refusal alert or a close means refused; a NewSessionTicket (OpenSSL, BoringSSL
and Envoy send tickets right after accepting the client's Finished) or any data means accepted.
Only if neither comes does the wait end after ``alert_wait`` (default 0.3 s, stretched to three
handshake round trips on slow links, never past the timeout) — then the connection counts as
accepted "with no refusal within 0.3 s". A server that sent no CertificateRequest cannot refuse
for a missing certificate, so that wait is shortened to 50 ms. With TLS 1.2 the client
certificate is judged inside the handshake, so no wait is needed. Which handshake messages
arrived is seen with ``SSLContext._msg_callback`` (a CPython debugging hook since 3.8); without
it the waits stay at their full length and a ``handshake failure`` alert counts as a refusal.

Served chain: Python 3.11 has no public API for the peer's chain; ``get_unverified_chain`` (public
in 3.13, private on ``_sslobj`` since 3.10) is used when present, even after a failed verification.
Otherwise only the leaf is reported (``getpeercert(binary_form=True)``), fetched by an extra,
non-verifying connection when verification failed.

``check_many(targets)`` checks in a thread pool and shares one ``SSLContext`` per distinct
(CA, client certificate, ALPN) combination.
"""

from __future__ import annotations

import hashlib
import re
import select
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable

from kimpki import __version__
from kimpki.verify.report import Reason, Report, ServedCert, rfc3339
from kimpki.verify.target import Mode, Target
from kimpki.verify.tcp import ResolveTimeout, open_tcp

ALPN = ("h2", "http/1.1")
ALPN_HTTP1 = ("http/1.1",)
ALERT_WAIT = 0.3    # seconds to wait for a TLS 1.3 verdict when the server gives no ticket
QUIET_WAIT = 0.05   # ... when it did not even ask for a client certificate
MAX_HTTP_HEAD = 65536

# TLS record/handshake numbers seen by the message callback (RFC 8446 §4 / §5.1).
_HANDSHAKE, _NEW_SESSION_TICKET, _CERTIFICATE, _CERTIFICATE_REQUEST = 22, 4, 11, 13
TRACE_AVAILABLE = hasattr(ssl.SSLContext, "_msg_callback")

# Alerts with which a server refuses a client (certificate): OpenSSL's reason names.
_REFUSAL_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_REVOKED",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "TLSV1_ALERT_UNKNOWN_CA",
    "TLSV1_ALERT_ACCESS_DENIED",
}
_HANDSHAKE_FAILURE = "SSLV3_ALERT_HANDSHAKE_FAILURE"
# Envoy's alert for a client certificate from a trusted CA whose identity is not allowed (a
# subjectAltNames pin it misses); a foreign CA gets "unknown ca".
_IDENTITY_ALERT = "certificate unknown"
_VERSION_REFUSALS = ("TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE")
_VERIFY_EXPIRY = {9: "not yet valid", 10: "expired"}
_VERIFY_HOSTNAME = {62, 64}  # hostname mismatch, IP address mismatch


class BadInput(Exception):
    """A CA, certificate or key file cannot be used. ``str()`` is one line."""


# --------------------------------------------------------------------------- contexts


def _no_password() -> bytes:
    # Never let OpenSSL prompt on the terminal for an encrypted key's passphrase.
    raise BadInput("encrypted")


def _on_message(conn, direction, _version, content_type, msg_type, _data) -> None:
    trace = getattr(conn, "_kimpki_trace", None)
    if trace is None or content_type != _HANDSHAKE:
        return
    if direction == "read":
        if msg_type == _CERTIFICATE_REQUEST:
            trace.cert_requested = True
        elif msg_type == _CERTIFICATE:
            trace.server_certificate = True
        elif msg_type == _NEW_SESSION_TICKET:
            trace.ticket = True
    elif msg_type == _CERTIFICATE:
        trace.sent_certificate = True


def _readable(path: str, what: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise BadInput(f"cannot read {what} {path}: {e.strerror or e}") from None


def _tls_version(text: str) -> ssl.TLSVersion:
    import warnings

    with warnings.catch_warnings():  # TLSv1_1 is deprecated: used only to prove a gateway refuses it
        warnings.simplefilter("ignore", DeprecationWarning)
        return {"1.1": ssl.TLSVersion.TLSv1_1, "1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[text]


# OpenSSL cipher strings of a client that can check only one kind of server key: TLS 1.2 suites
# name the server's authentication (TLS 1.3 ones do not, so such a client is held to TLS 1.2).
KEY_ALGORITHM_CIPHERS = {"ecdsa": "ECDHE+aECDSA", "rsa": "ECDHE+aRSA"}


def make_context(ca_file: str | None = None, client_cert: str | None = None, client_key: str | None = None,
                 alpn: tuple[str, ...] = ALPN, verify: bool = True, version: str | None = None,
                 key_algorithm: str | None = None) -> ssl.SSLContext:
    """A client context: TLS >= 1.2 (only ``version``, "1.1" to "1.3", when given), SAN-only
    hostname check, ALPN. ``key_algorithm`` (rsa, ecdsa): a client that accepts only that server
    key algorithm (TLS 1.2, its cipher suites only), which makes a dual-algorithm server show the
    certificate it keeps for such clients. Raises ``BadInput``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if version is not None:
        if version == "1.1":
            # OpenSSL 3 offers TLS 1.1 only at security level 0; this client exists to be refused.
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = ctx.maximum_version = _tls_version(version)
    if key_algorithm:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(KEY_ALGORITHM_CIPHERS[key_algorithm])
    if verify:
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.hostname_checks_common_name = False
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if ca_file:
        _readable(ca_file, "CA file")
        try:
            ctx.load_verify_locations(cafile=ca_file)
        except (ssl.SSLError, ValueError) as e:
            raise BadInput(f"CA file {ca_file} holds no usable PEM certificate ({_ssl_words(e)})") from None
    else:
        ctx.load_default_certs()
    if client_cert:
        _readable(client_cert, "client certificate")
        _readable(client_key, "client key")
        try:
            ctx.load_cert_chain(client_cert, client_key, password=_no_password)
        except BadInput:
            raise BadInput(f"client key {client_key} is encrypted; give an unencrypted key") from None
        except (ssl.SSLError, ValueError) as e:
            words = _ssl_words(e)
            if "KEY_VALUES_MISMATCH" in str(e):
                words = "the key does not belong to the certificate"
            raise BadInput(f"cannot use client certificate {client_cert} with key {client_key}: {words}") from None
    ctx.set_alpn_protocols(list(alpn))
    if TRACE_AVAILABLE:
        ctx._msg_callback = _on_message
    return ctx


class ContextCache:
    """One ``SSLContext`` per (CA, client cert, key, ALPN, verify); thread-safe.

    CA files are told apart by their content, not their path: the store keeps a copy of the
    issuing root beside every certificate, and ``verify --all`` over 100 certificates from one
    CA then builds one context instead of 100 (each costs about a millisecond of CPU).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._contexts: dict[tuple, ssl.SSLContext] = {}

    @staticmethod
    def _ca_identity(ca_file: str | None) -> object:
        if ca_file is None:
            return None
        try:
            with open(ca_file, "rb") as f:
                return hashlib.sha256(f.read()).digest()
        except OSError:
            return ca_file  # make_context says why it cannot be read

    def get(self, ca_file: str | None, client_cert: str | None = None, client_key: str | None = None,
            alpn: tuple[str, ...] = ALPN, verify: bool = True, version: str | None = None,
            key_algorithm: str | None = None) -> ssl.SSLContext:
        key = (self._ca_identity(ca_file), client_cert, client_key, alpn, verify, version, key_algorithm)
        with self._lock:
            ctx = self._contexts.get(key)
            if ctx is None:
                ctx = self._contexts[key] = make_context(ca_file, client_cert, client_key, alpn, verify, version,
                                                         key_algorithm)
            return ctx


# --------------------------------------------------------------------------- one connection


@dataclass
class _Trace:
    cert_requested: bool = False
    server_certificate: bool = False
    ticket: bool = False  # a TLS 1.3 NewSessionTicket arrived (the server accepted our Finished)
    sent_certificate: bool = False


class _NotHTTP(Exception):
    pass


@dataclass
class _Attempt:
    """How far one connection got and what it saw."""

    stage: str = "connect"  # connect -> handshake -> verdict | http -> done
    error: BaseException | None = None
    version: str | None = None
    cipher: str | None = None
    alpn: str | None = None
    chain: list[bytes] = field(default_factory=list)
    trace: _Trace = field(default_factory=_Trace)
    handshake_s: float = 0.0
    verdict: str | None = None  # accepted | closed | quiet
    evidence: str = ""
    http_status: int | None = None
    http_body_bytes: int | None = None


def _served_chain(tls: ssl.SSLSocket) -> list[bytes]:
    """DER certificates as served (leaf first); works after a failed verification when possible."""
    for getter in (getattr(tls, "get_unverified_chain", None),  # Python 3.13+
                   getattr(getattr(tls, "_sslobj", None), "get_unverified_chain", None)):  # 3.10-3.12
        if getter is None:
            continue
        try:
            certs = getter() or []
            return [c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER) for c in certs]
        except Exception:  # noqa: BLE001 - a private API; fall back to the leaf
            break
    try:
        leaf = tls.getpeercert(binary_form=True)
    except (ValueError, OSError):
        return []
    return [leaf] if leaf else []


def _has_ticket(tls: ssl.SSLSocket) -> bool:
    # The message trace says it for free; ``tls.session`` copies the whole session (about
    # 0.5 ms of CPU a call, a third of a check's CPU time in ``verify --all``).
    trace = getattr(tls, "_kimpki_trace", None)
    if TRACE_AVAILABLE and trace is not None:
        return trace.ticket
    try:
        session = tls.session
        return bool(session is not None and session.has_ticket)
    except (ValueError, AttributeError, OSError):
        return False


def _await_verdict(tls: ssl.SSLSocket, cap: float) -> tuple[str, str]:
    """Read until the server shows whether it accepted us. Refusal alerts raise ``SSLError``."""
    end = time.monotonic() + max(0.0, cap)
    tls.setblocking(False)
    while True:
        if _has_ticket(tls):
            return "accepted", "session ticket received"
        try:
            data = tls.recv(4096)
            if not data:
                return "closed", "the server closed the connection"
            return "accepted", "the server sent data"
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            return "closed", "the server closed the connection"
        except (ConnectionResetError, BrokenPipeError):
            return "closed", "the server reset the connection"
        if _has_ticket(tls):
            return "accepted", "session ticket received"
        left = end - time.monotonic()
        if left <= 0:
            return "quiet", (f"no refusal within {cap:.2f} s" if cap > 0 else
                             "TLS 1.2 handshake completed (client certificates are judged inside it)")
        select.select([tls], [], [], left)


class _Reader:
    def __init__(self, tls: ssl.SSLSocket, deadline: float):
        self.tls, self.deadline, self.buf, self.eof = tls, deadline, b"", False

    def _fill(self) -> bool:
        if self.eof:
            return False
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline")
        self.tls.settimeout(left)
        chunk = self.tls.recv(65536)
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def until(self, sep: bytes, limit: int) -> bytes | None:
        while sep not in self.buf:
            if len(self.buf) > limit or not self._fill():
                return None
        line, self.buf = self.buf.split(sep, 1)
        return line

    def skip(self, n: int) -> int:
        """Consume up to ``n`` bytes; return how many there were."""
        got = 0
        while got < n:
            if not self.buf and not self._fill():
                break
            take = min(n - got, len(self.buf))
            self.buf, got = self.buf[take:], got + take
        return got

    def drain(self) -> int:
        got = len(self.buf)
        self.buf = b""
        while self._fill():
            got += len(self.buf)
            self.buf = b""
        return got


def _http_get(tls: ssl.SSLSocket, target: Target, path: str, deadline: float) -> tuple[int, int]:
    """GET over HTTP/1.1; returns (status, body bytes). Raises ``_NotHTTP``/``TimeoutError``/``SSLError``."""
    host = f"[{target.host}]" if ":" in target.host else target.host
    if target.port != 443:
        host = f"{host}:{target.port}"
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: kimpki/{__version__}\r\n"
               f"Accept: */*\r\nConnection: close\r\n\r\n").encode("ascii")
    tls.settimeout(max(0.001, deadline - time.monotonic()))
    tls.sendall(request)
    reader = _Reader(tls, deadline)
    while True:
        head = reader.until(b"\r\n\r\n", MAX_HTTP_HEAD)
        if head is None:
            raise _NotHTTP("the server closed the connection without an HTTP response" if reader.eof
                           else "the response head is too long")
        lines = head.split(b"\r\n")
        m = re.match(rb"HTTP/\d(?:\.\d)? (\d{3})", lines[0])
        if not m:
            raise _NotHTTP(f"not an HTTP/1.1 response: {lines[0][:60]!r}")
        status = int(m.group(1))
        if not (100 <= status < 200) or status == 101:
            break  # skip interim 1xx responses
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if status in (101, 204, 304):
        return status, 0
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        total = 0
        while True:
            size_line = reader.until(b"\r\n", 1024)
            if size_line is None:
                return status, total
            try:
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
            except ValueError:
                raise _NotHTTP("malformed chunked body") from None
            if size == 0:
                return status, total
            total += reader.skip(size)
            reader.skip(2)
    length = headers.get(b"content-length")
    if length is not None and length.isdigit():
        return status, reader.skip(int(length))
    return status, reader.drain()


def _connect(target: Target, ctx: ssl.SSLContext, deadline: float, *, http_path: str | None = None,
             alert_wait: float = ALERT_WAIT) -> _Attempt:
    att = _Attempt()
    left = deadline - time.monotonic()
    if left <= 0:
        att.error = TimeoutError("deadline")
        return att
    try:
        raw = open_tcp(target.connect_address, target.port, deadline)
    except OSError as e:
        att.error = e
        return att
    att.stage = "handshake"
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = ctx.wrap_socket(raw, server_hostname=target.host, do_handshake_on_connect=False)
    except (OSError, ValueError) as e:
        raw.close()
        att.error = e
        return att
    try:
        tls._kimpki_trace = att.trace
        tls.settimeout(max(0.001, deadline - time.monotonic()))
        t0 = time.monotonic()
        try:
            tls.do_handshake()
        finally:
            att.chain = _served_chain(tls)
        att.handshake_s = time.monotonic() - t0
        att.version = tls.version()
        att.cipher = (tls.cipher() or (None,))[0]
        att.alpn = tls.selected_alpn_protocol()
        # With TLS 1.3 the server judges our certificate after our handshake completed. Hear
        # its verdict before sending a request: if it refused, our request would meet a closed
        # socket and the RST would discard the alert that says why.
        if att.version != "TLSv1.3":
            cap = 0.0
        elif att.trace.cert_requested or not TRACE_AVAILABLE:
            cap = max(alert_wait, 3 * att.handshake_s)
        else:
            cap = QUIET_WAIT
        speak_http = bool(http_path) and att.alpn != "h2"
        if speak_http and cap in (0.0, QUIET_WAIT):
            verdict = None  # no client verdict pending: the HTTP response is the read
        else:
            att.stage = "verdict"
            verdict = _await_verdict(tls, min(cap, max(0.0, deadline - time.monotonic())))
            att.verdict, att.evidence = verdict
        if speak_http and att.verdict != "closed":
            att.stage = "http"
            att.http_status, att.http_body_bytes = _http_get(tls, target, http_path, deadline)
            if verdict is None or verdict[0] == "quiet":
                att.verdict, att.evidence = "accepted", "HTTP response received"
        att.stage = "done"
    except (OSError, ValueError, _NotHTTP) as e:  # ssl.SSLError and TimeoutError are OSErrors
        att.error = e
    finally:
        try:
            tls.close()
        except OSError:
            pass
    return att


def _probe_leaf(target: Target, contexts: ContextCache, deadline: float) -> list[bytes]:
    """Fetch the served chain without verifying it (only when the verifying handshake gave none)."""
    try:
        ctx = contexts.get(target.ca_file, target.client_cert, target.client_key, ALPN, verify=False,
                           version=target.tls_version, key_algorithm=target.key_algorithm)
    except BadInput:
        return []
    att = _connect(target, ctx, deadline, alert_wait=0.0)
    return att.chain


# --------------------------------------------------------------------------- classification


def _ssl_words(err: BaseException) -> str:
    reason = getattr(err, "reason", None)
    if reason:
        return reason.lower().replace("_", " ")
    return str(err).split("] ", 1)[-1].split(" (_ssl.c")[0] or type(err).__name__


def _alert_words(reason: str) -> str:
    """``TLSV13_ALERT_CERTIFICATE_REQUIRED`` -> ``certificate required``."""
    return reason.split("ALERT_", 1)[-1].lower().replace("_", " ")


def _is_timeout(err: BaseException | None) -> bool:
    return isinstance(err, (TimeoutError, socket.timeout))


def _is_closed(err: BaseException | None) -> bool:
    return isinstance(err, (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError, ssl.SSLZeroReturnError)) or (
        getattr(err, "reason", None) == "UNEXPECTED_EOF_WHILE_READING")


def _refusal(err: BaseException | None, trace: _Trace) -> str | None:
    """The alert with which the server refused the client (certificate), else None."""
    reason = getattr(err, "reason", None) or ""
    if reason in _REFUSAL_ALERTS:
        return _alert_words(reason) + " alert"
    if reason == _HANDSHAKE_FAILURE and (trace.cert_requested or not TRACE_AVAILABLE):
        return "handshake failure alert"
    return None


def _tls_detail(err: BaseException, target: Target) -> str:
    reason = getattr(err, "reason", None) or ""
    if _is_closed(err):
        return f"{target.endpoint} closed the connection during the TLS handshake"
    if reason in ("TLSV1_UNRECOGNIZED_NAME", "TLSV1_ALERT_UNRECOGNIZED_NAME"):
        return f"the server has no certificate for SNI {target.host} (unrecognized name alert)"
    if reason == _HANDSHAKE_FAILURE:
        return "the server sent a handshake failure alert (no TLS version, cipher or key type in common)"
    if reason in _VERSION_REFUSALS:
        offered = f"TLS {target.tls_version} only" if target.tls_version else "TLS 1.2 and 1.3"
        return f"no TLS version in common (kimpki offered {offered}; protocol version alert)"
    if reason in ("WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE"):
        return f"{target.endpoint} did not answer with TLS (plain HTTP on this port?)"
    if "ALERT_" in reason:
        return f"the server sent a {_alert_words(reason)} alert"
    return _ssl_words(err)


def _connect_failure(report: Report, target: Target, err: BaseException | None) -> Report:
    ep = target.endpoint
    if isinstance(err, ResolveTimeout):
        hint = "" if target.address else "; give the gateway's address with --connect ADDR[:PORT]"
        return report.failed("connect", Reason.NAME_RESOLUTION,
                             f"cannot resolve {target.connect_address}: no answer within {target.timeout:g} s{hint}")
    if _is_timeout(err):
        return report.failed("connect", Reason.TIMEOUT, f"no TCP connection to {ep} within {target.timeout:g} s")
    if isinstance(err, ConnectionRefusedError):
        return report.failed("connect", Reason.CONNECTION_REFUSED,
                             f"{ep} refused the connection (nothing listens on port {target.port}?)")
    if isinstance(err, socket.gaierror):
        hint = "" if target.address else "; give the gateway's address with --connect ADDR[:PORT]"
        return report.failed("connect", Reason.NAME_RESOLUTION,
                             f"cannot resolve {target.connect_address} ({err.strerror}){hint}")
    words = getattr(err, "strerror", None) or str(err)
    return report.failed("connect", Reason.CONNECTION_REFUSED, f"cannot connect to {ep}: {words}")


def _verification_failure(report: Report, target: Target, err: ssl.SSLCertVerificationError) -> Report:
    code, words = err.verify_code, err.verify_message
    leaf, now = report.leaf, report.checked_at
    if code in _VERIFY_EXPIRY:
        if leaf and code == 10 and leaf.not_after < now:
            days_ago = int((now - leaf.not_after).total_seconds() // 86400)  # whole days, like days_left
            detail = (f"the served certificate {leaf.subject} expired on {rfc3339(leaf.not_after)} "
                      f"({days_ago} days ago)")
        elif leaf and code == 9 and leaf.not_before > now:
            detail = f"the served certificate {leaf.subject} is not valid before {rfc3339(leaf.not_before)}"
        else:
            detail = f"a certificate in the served chain is {_VERIFY_EXPIRY[code]} ({words})"
        return report.failed("expiry", Reason.EXPIRY, detail)
    if code in _VERIFY_HOSTNAME:
        if leaf is None:
            detail = f"{target.host} is not in the served certificate's SANs"
        elif not leaf.dns_names and not leaf.ip_addresses:
            detail = (f"{target.host} is not in the served certificate's SANs (none; its subject "
                      f"{leaf.subject} is not checked, only subjectAltName counts)")
        else:
            detail = f"{target.host} is not in the served certificate's SANs ({leaf.sans_text()})"
        return report.failed("hostname", Reason.HOSTNAME, detail)
    served = f"; served {leaf.subject} issued by {leaf.issuer}" if leaf else ""
    return report.failed("trust", Reason.TRUST,
                         f"the served chain does not verify against {target.trust_name}: {words}{served}")


def _server_verified(report: Report, target: Target) -> None:
    leaf, now = report.leaf, report.checked_at
    report.passed("trust", f"chain verifies against {target.trust_name}")
    if leaf is None:
        report.passed("hostname", f"{target.host} matches the served certificate")
        report.passed("expiry", "the served chain is within its validity dates")
        return
    report.passed("hostname", f"{target.host} is in the served certificate's SANs ({leaf.sans_text()})")
    report.passed("expiry", f"valid until {rfc3339(leaf.not_after)} ({leaf.days_left(now)} days left)")


def _refused(report: Report, target: Target, alert: str) -> Report:
    if target.client_cert:
        if "certificate revoked" in alert:
            return report.failed("client_certificate_accepted", Reason.CLIENT_CERTIFICATE_REVOKED,
                                 f"the server refused client certificate {target.client_name} as revoked ({alert}): "
                                 f"its CA's CRL lists it")
        if _IDENTITY_ALERT in alert:
            return report.failed("client_certificate_accepted", Reason.CLIENT_IDENTITY_NOT_ALLOWED,
                                 f"the server refused client certificate {target.client_name} ({alert}): its CA "
                                 f"is trusted (else: unknown ca), its identity is not allowed: the gateway pins "
                                 f"subjectAltNames (or certificate hashes) and the client has "
                                 f"{_client_sans(target.client_cert)}")
        hint = ""
        if "unknown ca" in alert or "bad certificate" in alert:
            hint = "; is it issued by a CA in the gateway credential's ca.crt?"
        return report.failed("client_certificate_accepted", Reason.CLIENT_CERTIFICATE_REFUSED,
                             f"the server refused client certificate {target.client_name} ({alert}){hint}")
    return report.failed("accepted", Reason.CLIENT_CERTIFICATE_REFUSED,
                         f"the server refused a client without a certificate ({alert}); it looks MUTUAL: "
                         f"check with a client certificate, --client NAME (from the store) or --cert FILE --key FILE")


def _client_sans(path: str) -> str:
    """``SANs DNS:a, IP:b`` of a client certificate file, for a message."""
    try:
        from cryptography import x509

        from kimpki.pki import parse

        with open(path, "rb") as f:
            dns, ips = parse.sans_of(x509.load_pem_x509_certificate(f.read()))
    except (OSError, ValueError):
        return "SANs it could not read"
    items = [f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips]
    return "SANs " + ", ".join(items) if items else "no SANs"


def _after_handshake_failure(report: Report, target: Target, att: _Attempt, what: str) -> Report:
    """The main connection failed after its handshake (while waiting for the verdict or in HTTP)."""
    err = att.error
    alert = _refusal(err, att.trace)
    if alert:
        return _refused(report, target, alert)
    if _is_timeout(err):
        return report.failed(what, Reason.TIMEOUT, f"no answer from {target.endpoint} within {target.timeout:g} s")
    if isinstance(err, _NotHTTP):
        return report.failed("http", Reason.HTTP_STATUS, f"GET {target.http_path}: {err}")
    if _is_closed(err):
        return _closed(report, target, att, "the server closed the connection")
    return report.failed(what, Reason.TLS_ERROR, _tls_detail(err, target))


def _closed(report: Report, target: Target, att: _Attempt, evidence: str) -> Report:
    if att.trace.cert_requested or not TRACE_AVAILABLE:
        return _refused(report, target, f"{evidence} after asking for a client certificate")
    return report.failed("accepted", Reason.TLS_ERROR, f"{evidence} right after the handshake")


# --------------------------------------------------------------------------- the checks


def check_endpoint(target: Target, *, contexts: ContextCache | None = None,
                   alert_wait: float = ALERT_WAIT) -> Report:
    """Check one endpoint; never raises for network or TLS trouble (see ``Report.reason``)."""
    started = time.perf_counter()
    report = Report(host=target.host, address=target.connect_address, port=target.port, mode=target.mode.value,
                    ca=target.trust_name, client_certificate=target.client_name, http_path=target.http_path,
                    checked_at=datetime.now(timezone.utc), timeout_s=target.timeout)
    try:
        _check(target, report, contexts or ContextCache(), alert_wait)
    except BadInput as e:
        report.failed("input", Reason.BAD_INPUT, str(e))
    finally:
        report.duration_ms = (time.perf_counter() - started) * 1000
    return report


def _check(target: Target, report: Report, contexts: ContextCache, alert_wait: float) -> Report:
    version = target.tls_version
    alg = target.key_algorithm
    report.client_key_algorithm = alg
    main_ctx = contexts.get(target.ca_file, target.client_cert, target.client_key,  # BadInput: no connection
                            version=version, key_algorithm=alg)
    anon_ctx = (contexts.get(target.ca_file, version=version, key_algorithm=alg)
                if target.mode is Mode.MUTUAL or (target.mode is Mode.OPTIONAL_MUTUAL and target.client_cert)
                else None)
    deadline = time.monotonic() + target.timeout

    # 1. The main connection: server verification, the server's verdict on us, maybe HTTP.
    att = _connect(target, main_ctx, deadline, http_path=target.http_path, alert_wait=alert_wait)
    report.tls_version, report.cipher, report.alpn = att.version, att.cipher, att.alpn
    if att.stage == "connect":
        return _connect_failure(report, target, att.error)
    report.passed("connect", f"{target.endpoint} accepted the TCP connection")
    if att.stage == "handshake" and isinstance(att.error, ssl.SSLCertVerificationError) and not att.chain:
        att.chain = _probe_leaf(target, contexts, deadline)
    report.served_chain = _parse_chain(att.chain)
    if att.stage == "handshake":
        err = att.error
        if isinstance(err, ssl.SSLCertVerificationError):
            return _verification_failure(report, target, err)
        if _is_timeout(err):
            return report.failed("handshake", Reason.TIMEOUT,
                                 f"no TLS handshake with {target.endpoint} within {target.timeout:g} s")
        if getattr(err, "reason", None) in _VERSION_REFUSALS:
            return report.failed("handshake", Reason.TLS_VERSION_REFUSED, _tls_detail(err, target))
        alert = _refusal(err, att.trace)
        if alert:  # TLS 1.2: refused inside the handshake, after we had verified the server
            if att.trace.sent_certificate or att.trace.cert_requested:
                _server_verified(report, target)
            return _refused(report, target, alert)
        if _is_closed(err) and TRACE_AVAILABLE and not att.trace.server_certificate:
            # Envoy (and so Istio's gateway) closes without an alert when no filter chain
            # matches the SNI: say what that most likely means.
            return report.failed("handshake", Reason.TLS_ERROR,
                                 f"{target.endpoint} closed the connection during the TLS handshake, before "
                                 f"presenting a certificate (does it serve SNI {target.host}?)")
        return report.failed("handshake", Reason.TLS_ERROR, _tls_detail(err, target))
    _server_verified(report, target)
    if alg and _served_key_algorithm(report, alg) is not None:
        return report
    if att.error is not None:
        return _after_handshake_failure(report, target, att, "http" if att.stage == "http" else "accepted")
    if att.verdict == "closed":
        return _closed(report, target, att, att.evidence)
    if target.client_cert:
        report.passed("client_certificate_accepted",
                      f"the server accepted client certificate {target.client_name} ({att.evidence})")
    else:
        report.passed("accepted", f"the server accepted a client without a certificate ({att.evidence})")

    # 2. MUTUAL: a client without a certificate must be refused; OPTIONAL_MUTUAL: admitted, after
    #    being asked for one.
    if target.mode is Mode.MUTUAL:
        if _check_demanded(report, target, anon_ctx, deadline, alert_wait) is not None:
            return report
    if target.mode is Mode.OPTIONAL_MUTUAL:
        if _check_optional(report, target, anon_ctx, att, deadline, alert_wait) is not None:
            return report
    # 2b. --min-tls: a client offering only the version below the floor must be refused.
    if target.min_tls:
        if _check_floor(report, target, contexts, deadline, alert_wait) is not None:
            return report

    # 3. HTTP (re-connecting with ALPN http/1.1 when the gateway chose h2).
    if target.http_path:
        how = ""
        if att.http_status is None:
            h1 = _connect(target, contexts.get(target.ca_file, target.client_cert, target.client_key, ALPN_HTTP1,
                                               version=version, key_algorithm=alg),
                          deadline, http_path=target.http_path, alert_wait=alert_wait)
            if h1.error is not None or h1.stage != "done":
                if h1.stage == "connect":
                    return _connect_failure(report, target, h1.error)
                return _after_handshake_failure(report, target, h1, "http")
            att = h1
            how = f"; re-connected with ALPN http/1.1 as the gateway chose {report.alpn}"
        report.http_status, report.http_body_bytes = att.http_status, att.http_body_bytes
        summary = f"GET {target.http_path} -> {att.http_status} ({att.http_body_bytes} bytes{how})"
        if 200 <= att.http_status < 300:
            report.passed("http", summary)
        else:
            report.failed("http", Reason.HTTP_STATUS, summary + ", expected 2xx")
    return report


def _served_key_algorithm(report: Report, alg: str) -> Report | None:
    """``--key-algorithm``: the certificate sent to a client that offered only ``alg`` must be of
    ``alg`` (it verified already). Returns the report if it failed."""
    served = report.leaf.key_algorithm if report.leaf else "?"
    if served.lower().startswith(alg):
        report.passed("key_algorithm", f"a client offering only {alg.upper()} cipher suites (TLS 1.2) was sent "
                                       f"the {served} certificate, serial {report.leaf.serial}")
        return None
    return report.failed("key_algorithm", Reason.KEY_ALGORITHM,
                         f"a client offering only {alg.upper()} cipher suites was sent a {served} certificate")


def _check_demanded(report: Report, target: Target, ctx: ssl.SSLContext, deadline: float,
                    alert_wait: float) -> Report | None:
    """Connect without a client certificate; pass if refused. Returns the report if it failed."""
    name = "client_certificate_demanded"
    att = _connect(target, ctx, deadline, alert_wait=alert_wait)
    err = att.error
    if att.stage == "connect":
        return _connect_failure(report, target, err)
    alert = _refusal(err, att.trace)
    where = " during the handshake" if att.stage == "handshake" else ""
    if alert:
        report.passed(name, f"the server refused a client without a certificate ({alert}{where})")
        return None
    if (_is_closed(err) or att.verdict == "closed") and (att.trace.cert_requested or not TRACE_AVAILABLE):
        report.passed(name, f"the server closed the connection of a client without a certificate{where}")
        return None
    if err is not None:
        if isinstance(err, ssl.SSLCertVerificationError):
            return _verification_failure(report, target, err)
        if _is_timeout(err):
            return report.failed(name, Reason.TIMEOUT,
                                 f"no verdict on a client without a certificate within {target.timeout:g} s")
        return report.failed(name, Reason.TLS_ERROR, _tls_detail(err, target))
    if TRACE_AVAILABLE and not att.trace.cert_requested:
        detail = "the server never asked for a client certificate (it serves SIMPLE TLS)"
    elif att.verdict == "accepted":
        detail = (f"the server asked for a client certificate but accepted a client without one "
                  f"({att.evidence}; optional client authentication?)")
    else:
        detail = f"the server accepted a client without a certificate ({att.evidence})"
    return report.failed(name, Reason.CLIENT_CERTIFICATE_NOT_DEMANDED, detail)


def _check_optional(report: Report, target: Target, ctx: ssl.SSLContext | None, main: _Attempt, deadline: float,
                    alert_wait: float) -> Report | None:
    """OPTIONAL_MUTUAL: the server asks for a client certificate and admits a client without one
    (the main connection is that client when no certificate was given). Returns the report if it failed."""
    name = "client_certificate_optional"
    att = main
    if ctx is not None:
        att = _connect(target, ctx, deadline, alert_wait=alert_wait)
        if att.stage == "connect":
            return _connect_failure(report, target, att.error)
        alert = _refusal(att.error, att.trace)
        if alert or ((_is_closed(att.error) or att.verdict == "closed") and att.trace.cert_requested):
            return report.failed(name, Reason.CLIENT_CERTIFICATE_REFUSED,
                                 f"the server refused a client without a certificate ({alert or 'closed'}): it "
                                 f"demands one (MUTUAL), not OPTIONAL_MUTUAL")
        if att.error is not None:
            if _is_timeout(att.error):
                return report.failed(name, Reason.TIMEOUT, f"no verdict on a client without a certificate within "
                                                           f"{target.timeout:g} s")
            return report.failed(name, Reason.TLS_ERROR, _tls_detail(att.error, target))
    if TRACE_AVAILABLE and not att.trace.cert_requested:
        return report.failed(name, Reason.CLIENT_CERTIFICATE_NOT_REQUESTED,
                             "the server never asked for a client certificate (it serves SIMPLE TLS, "
                             "not OPTIONAL_MUTUAL)")
    report.passed(name, f"the server asked for a client certificate and admitted a client without one "
                        f"({att.evidence or 'handshake completed'})")
    return None


def _check_floor(report: Report, target: Target, contexts: ContextCache, deadline: float,
                 alert_wait: float) -> Report | None:
    """--min-tls V: a client offering only the version below V (with the same certificate) is refused."""
    from kimpki.verify.target import VERSION_BELOW

    name, below = "tls_floor", VERSION_BELOW[target.min_tls]
    ctx = contexts.get(target.ca_file, target.client_cert, target.client_key, version=below)
    att = _connect(target, ctx, deadline, alert_wait=alert_wait)
    if att.stage == "connect":
        return _connect_failure(report, target, att.error)
    if att.stage == "handshake" and att.error is not None and not _is_timeout(att.error):
        reason = getattr(att.error, "reason", None)
        how = "protocol version alert" if reason in _VERSION_REFUSALS else _tls_detail(att.error, target)
        report.passed(name, f"a client offering only TLS {below} was refused ({how}); "
                            f"this gateway negotiated {report.tls_version} with kimpki")
        return None
    if att.stage == "handshake":
        return report.failed(name, Reason.TIMEOUT, f"no TLS handshake offering TLS {below} within {target.timeout:g} s")
    return report.failed(name, Reason.TLS_FLOOR_NOT_ENFORCED,
                         f"the server accepted a client offering only TLS {below} (negotiated {att.version}): "
                         f"its floor is below TLS {target.min_tls}")


def _parse_chain(chain: list[bytes]) -> list[ServedCert]:
    out = []
    for der in chain:
        try:
            out.append(ServedCert.from_der(der))
        except ValueError:
            break
    return out


def check_many(targets: Iterable[Target], max_workers: int = 16, *, alert_wait: float = ALERT_WAIT) -> list[Report]:
    """Check targets concurrently; reports come back in the targets' order."""
    targets = list(targets)
    if not targets:
        return []
    contexts = ContextCache()
    workers = max(1, min(max_workers, len(targets)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kimpki-verify") as pool:
        return list(pool.map(lambda t: check_endpoint(t, contexts=contexts, alert_wait=alert_wait), targets))
