"""Reading certificates (PEM with several blocks, or DER) and describing them as plain values."""

from __future__ import annotations

import re
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization

from kimpki.errors import UsageError
from kimpki.pki.keys import describe_public_key

# What cryptography raises for input it cannot read, when loading it or when reading a part of it
# for the first time (most parts are parsed lazily).
UNREADABLE = (ValueError, UnsupportedAlgorithm, x509.DuplicateExtension, x509.InvalidVersion)

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def load_certificates(data: bytes, source: str = "input", *, check_parts: bool = True) -> list[x509.Certificate]:
    """Every certificate in ``data``: one or more PEM blocks, or a single DER certificate.

    ``check_parts=False`` skips :func:`unreadable_part` (about 65 µs a certificate): only for a
    sweep over thousands that reads what loading parses anyway (serial, validity)."""
    blocks = _PEM_CERT.findall(data)
    try:
        if blocks:
            certs = [x509.load_pem_x509_certificate(b) for b in blocks]
        elif b"-----BEGIN" in data:
            raise UsageError(f"{source}: no CERTIFICATE block in this PEM file")
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except UNREADABLE as e:
        raise UsageError(f"{source}: not a readable certificate ({why_unreadable(data, e)})") from None
    for cert in certs if check_parts else ():
        part = unreadable_part(cert)
        if part is not None:
            raise UsageError(f"{source}: not a readable certificate ({part})")
    return certs


# The parts of a certificate that cryptography parses only when first read, as a user names them.
_LAZY_PARTS = (("subject", lambda c: c.subject), ("issuer", lambda c: c.issuer),
               ("public key", lambda c: c.public_key()), ("extensions", lambda c: c.extensions),
               ("signature algorithm", lambda c: c.signature_hash_algorithm))


def unreadable_part(cert: x509.Certificate) -> str | None:
    """Why ``cert`` cannot be read after all (``its public key cannot be read: ...``), or None.

    Loading checks only the outer structure: a corrupt key, name or extension would otherwise
    surface later, wherever it is first read, as an error no caller expects. Each part is read
    once here (cryptography keeps what it parsed, so callers pay nothing twice)."""
    return first_unreadable(cert, _LAZY_PARTS)


def first_unreadable(obj, parts) -> str | None:
    """``its PART cannot be read: why`` for the first of ``parts`` (``(name, reader)`` pairs) that cannot be
    read from ``obj``, or None."""
    for part, read in parts:
        try:
            read(obj)
        except UNREADABLE as e:
            return f"its {part} cannot be read: {plain_reason(e)}"
    return None


def plain_reason(error: Exception) -> str:
    """cryptography's words, without its Rust debug strings (``ParseError { kind: ... }``)."""
    text = " ".join(str(error).split())
    return "malformed DER" if "ParseError" in text or not text else text


def why_unreadable(data: bytes, error: Exception) -> str:
    """cryptography's reason in the user's words: its DER errors are Rust debug strings
    (``ParseError { kind: ShortData { needed: 86 } }``) that tell a user nothing."""
    text = str(error)
    if not data:
        return "empty"
    if b"-----BEGIN" in data:
        return text if "ParseError" not in text else "a PEM block whose contents are not valid DER"
    if not data.startswith(b"\x30"):  # every DER certificate or CSR is an ASN.1 SEQUENCE
        return "neither PEM (no -----BEGIN line) nor DER"
    return "DER that is malformed or cut short" if "ParseError" in text else text


def certs_to_pem(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def serial_hex(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def fingerprint_sha256(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def sans_of(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    """(dns_names, ip_addresses) from the subjectAltName; empty lists when there is none."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return san.get_values_for_type(x509.DNSName), [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        # A v1 self-signed certificate is treated as a CA by OpenSSL (legacy roots).
        return cert.version is x509.Version.v1 and cert.issuer == cert.subject


def path_length(cert: x509.Certificate) -> int | None:
    """basicConstraints pathLenConstraint: how many CA certificates may follow this one on a
    path (None: no limit, or not a CA)."""
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
    except x509.ExtensionNotFound:
        return None


def may_sign_certificates(cert: x509.Certificate) -> bool:
    """False when a keyUsage extension is present without keyCertSign (no keyUsage: any use)."""
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        return True


def extended_key_usages(cert: x509.Certificate) -> list[str]:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return []
    names = {"serverAuth": "server_auth", "clientAuth": "client_auth"}
    return [names.get(o._name, o.dotted_string) for o in eku]


def rfc3339(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def describe(cert: x509.Certificate, now: datetime) -> dict:
    """The facts ``kimpki inspect`` shows, with stable snake_case keys."""
    dns, ips = sans_of(cert)
    na = cert.not_valid_after_utc
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": serial_hex(cert),
        "version": cert.version.name,
        "dns_names": dns,
        "ip_addresses": ips,
        "not_before": rfc3339(cert.not_valid_before_utc),
        "not_after": rfc3339(na),
        "days_left": int((na - now).total_seconds() // 86400),
        "expired": now > na,
        "key": describe_public_key(cert.public_key()),
        "is_ca": is_ca(cert),
        "self_signed": cert.issuer == cert.subject,
        "extended_key_usage": extended_key_usages(cert),
        "signature_hash": cert.signature_hash_algorithm.name if cert.signature_hash_algorithm else None,
        "sha256_fingerprint": fingerprint_sha256(cert),
    }


def profile_warnings(cert: x509.Certificate) -> list[str]:
    """What modern clients object to in a CA certificate (used by ``ca import``)."""
    out = []
    if cert.version is not x509.Version.v3:
        out.append("it is an X.509 v1 certificate (no extensions); strict clients reject v1 CAs")
    exts = {type(e.value) for e in cert.extensions}
    if x509.BasicConstraints not in exts:
        out.append("it has no basicConstraints extension")
    if x509.KeyUsage not in exts:
        out.append("it has no keyUsage extension (pkilint: pkix.ca_certificate_no_ku_extension; "
                   "Python 3.13+ strict verification rejects it)")
    if cert.serial_number <= 0:
        out.append("its serial number is not a positive integer")
    return out
