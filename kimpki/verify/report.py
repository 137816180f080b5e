"""What a check found: the fixed failure vocabulary, the checks made, the served certificate.

``Report.to_dict()`` is the ``--json`` contract: snake_case, stable keys, RFC 3339 UTC times,
lower-case hex serials (as ``kimpki list`` shows them).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum

from cryptography import x509

from kimpki.pki import parse


class Reason(str, Enum):
    """Why a check failed. Scripts may rely on these values; they are never renamed."""

    TRUST = "trust"                    # unknown CA, self-signed, broken chain
    HOSTNAME = "hostname"              # the name is not in the served certificate's SANs
    EXPIRY = "expiry"                  # a served certificate is expired or not yet valid
    CLIENT_CERTIFICATE_NOT_DEMANDED = "client_certificate_not_demanded"  # MUTUAL: anonymous client accepted
    CLIENT_CERTIFICATE_REFUSED = "client_certificate_refused"  # server refused our (or no) client cert
    CLIENT_CERTIFICATE_REVOKED = "client_certificate_revoked"  # refused with a certificate_revoked alert (CRL)
    HTTP_STATUS = "http_status"        # --http-path answered non-2xx (or not HTTP at all)
    CONNECTION_REFUSED = "connection_refused"  # no TCP connection (refused, unreachable)
    NAME_RESOLUTION = "name_resolution"  # the address to connect to does not resolve (DNS)
    TIMEOUT = "timeout"                # the check did not finish within the timeout
    TLS_ERROR = "tls_error"            # any other TLS failure (no shared cipher, unknown SNI, not TLS)
    BAD_INPUT = "bad_input"            # unreadable CA, certificate or key file (a usage error)
    NOT_CURRENT = "not_current"        # served certificate is not the one the store says is current
    # OPTIONAL_MUTUAL: the server never asked for a client certificate (it serves SIMPLE)
    CLIENT_CERTIFICATE_NOT_REQUESTED = "client_certificate_not_requested"
    # refused with a certificate_unknown alert: the CA is trusted, the identity is not allowed
    # (Envoy's answer to a subjectAltNames pin, or a certificate hash/SPKI pin, that the client misses)
    CLIENT_IDENTITY_NOT_ALLOWED = "client_identity_not_allowed"
    TLS_VERSION_REFUSED = "tls_version_refused"  # a protocol_version alert: no TLS version in common
    TLS_FLOOR_NOT_ENFORCED = "tls_floor_not_enforced"  # --min-tls: a client below the floor was accepted
    KEY_ALGORITHM = "key_algorithm"    # --key-algorithm: the server sent a certificate of another algorithm

    def __str__(self) -> str:
        return self.value


def rfc3339(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Check:
    """One named check: ``ok`` and a one-line ``detail`` a person can act on."""

    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True)
class ServedCert:
    """A certificate as the server sent it (not necessarily trusted)."""

    subject: str
    issuer: str
    serial: str
    dns_names: list[str]
    ip_addresses: list[str]
    not_before: datetime
    not_after: datetime
    sha256: str
    key_algorithm: str = ""  # "ECDSA P-256", "RSA 2048": what a dual-algorithm server chose for this client

    @classmethod
    def from_der(cls, der: bytes) -> "ServedCert":
        cert = x509.load_der_x509_certificate(der)
        try:
            dns, ips = parse.sans_of(cert)
        except ValueError:  # a malformed extension: still show the rest
            dns, ips = [], []
        return cls(subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(),
                   serial=parse.serial_hex(cert), dns_names=list(dns), ip_addresses=list(ips),
                   not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
                   sha256=hashlib.sha256(der).hexdigest(), key_algorithm=key_algorithm_of(cert.public_key()))

    def days_left(self, now: datetime) -> int:
        return int((self.not_after - now).total_seconds() // 86400)

    def sans_text(self) -> str:
        """``DNS:a, IP:1.2.3.4`` as openssl prints them, or ``none``."""
        items = [f"DNS:{d}" for d in self.dns_names] + [f"IP:{i}" for i in self.ip_addresses]
        return ", ".join(items) if items else "none"

    def to_dict(self, now: datetime) -> dict:
        return {"subject": self.subject, "issuer": self.issuer, "serial": self.serial,
                "dns_names": list(self.dns_names), "ip_addresses": list(self.ip_addresses),
                "not_before": rfc3339(self.not_before), "not_after": rfc3339(self.not_after),
                "days_left": self.days_left(now), "sha256": self.sha256, "key_algorithm": self.key_algorithm}


def key_algorithm_of(pub) -> str:
    """``ECDSA P-256``, ``RSA 2048``, ``Ed25519``: a public key's algorithm as a person names it."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(pub, rsa.RSAPublicKey):
        return f"RSA {pub.key_size}"
    if isinstance(pub, ec.EllipticCurvePublicKey):
        return {"secp256r1": "ECDSA P-256", "secp384r1": "ECDSA P-384", "secp521r1": "ECDSA P-521"}.get(
            pub.curve.name, f"ECDSA {pub.curve.name}")
    return type(pub).__name__.replace("PublicKey", "").lstrip("_")


@dataclass
class Report:
    """The outcome of checking one target. ``ok`` is true only if every check passed."""

    host: str
    address: str
    port: int
    mode: str
    ca: str
    client_certificate: str | None = None
    http_path: str | None = None
    client_key_algorithm: str | None = None  # --key-algorithm: the only algorithm the client offered (TLS 1.2)
    checks: list[Check] = field(default_factory=list)
    reason: Reason | None = None
    message: str | None = None
    tls_version: str | None = None
    cipher: str | None = None
    alpn: str | None = None
    served_chain: list[ServedCert] = field(default_factory=list)
    http_status: int | None = None
    http_body_bytes: int | None = None
    checked_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    duration_ms: float = 0.0
    timeout_s: float | None = None  # this check's timeout (with --wait, a last attempt gets what is left)
    attempts: int = 1  # checks made with --wait; this report is the last one's

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def leaf(self) -> ServedCert | None:
        return self.served_chain[0] if self.served_chain else None

    def passed(self, name: str, detail: str) -> None:
        self.checks.append(Check(name, True, detail))

    def failed(self, name: str, reason: Reason, detail: str) -> "Report":
        """Record the failing check; the message starts with the reason, the one word scripts and
        the README use: ``client_certificate_refused: the server refused ...``."""
        self.checks.append(Check(name, False, detail))
        self.reason = reason
        self.message = f"{reason.value}: {detail}"
        return self

    def to_dict(self) -> dict:
        return {
            "host": self.host,
            "address": self.address,
            "port": self.port,
            "mode": self.mode,
            "ok": self.ok,
            "reason": self.reason.value if self.reason else None,
            "message": self.message,
            "checks": [c.to_dict() for c in self.checks],
            "tls_version": self.tls_version,
            "cipher": self.cipher,
            "alpn": self.alpn,
            "served_chain": [c.to_dict(self.checked_at) for c in self.served_chain],
            "http_path": self.http_path,
            "http_status": self.http_status,
            "http_body_bytes": self.http_body_bytes,
            "ca": self.ca,
            "client_certificate": self.client_certificate,
            "checked_at": rfc3339(self.checked_at),
            "duration_ms": round(self.duration_ms, 1),
            "timeout_s": self.timeout_s,
            "attempts": self.attempts,
            "key_algorithm": self.leaf.key_algorithm if self.leaf else None,  # of the served leaf
            "client_key_algorithm": self.client_key_algorithm,
        }
