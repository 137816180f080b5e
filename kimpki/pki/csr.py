"""External certificate signing requests: read, check, and turn into host names."""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from kimpki.errors import UsageError
from kimpki.pki.names import HostName, parse_hosts
from kimpki.pki.parse import UNREADABLE, first_unreadable, why_unreadable


_WEAK_DIGESTS = (hashes.SHA1, hashes.MD5)


def load_csr(data: bytes, source: str = "CSR") -> x509.CertificateSigningRequest:
    try:
        if b"-----BEGIN" in data:
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
    except UNREADABLE as e:
        raise UsageError(f"{source}: not a readable certificate signing request ({why_unreadable(data, e)})") from None
    try:
        digest = csr.signature_hash_algorithm
    except UnsupportedAlgorithm:
        digest = None
    if isinstance(digest, _WEAK_DIGESTS):
        # OpenSSL 3 no longer verifies these signatures: without this check such a CSR reads as tampered.
        raise UsageError(f"{source}: the CSR is signed with {digest.name.upper().replace('SHA1', 'SHA-1')}, "
                         f"which kimpki does not accept: make it again with SHA-256 (openssl req -sha256)")
    part = first_unreadable(csr, _LAZY_PARTS)
    if part is not None:
        raise UsageError(f"{source}: not a readable certificate signing request ({part})")
    if not csr.is_signature_valid:
        raise UsageError(f"{source}: the CSR's signature does not verify (tampered or corrupt)")
    return csr


# The parts of a CSR that cryptography parses only when first read (see parse.unreadable_part).
_LAZY_PARTS = (("subject", lambda c: c.subject), ("public key", lambda c: c.public_key()),
               ("extensions", lambda c: c.extensions), ("signature", lambda c: c.is_signature_valid))


# What the CSR may ask for; kimpki issues DNS names and IP addresses only (the certificate
# profile has nothing else, and a silently dropped name would surprise whoever asked for it).
_SAN_WORDS = {x509.RFC822Name: "email", x509.UniformResourceIdentifier: "URI", x509.OtherName: "otherName",
              x509.DirectoryName: "dirName", x509.RegisteredID: "RID"}


def csr_hosts(csr: x509.CertificateSigningRequest, extra: list[str]) -> list[HostName]:
    """The CSR's subject CN and subjectAltName entries, plus ``extra``; CN first."""
    raws: list[str] = []
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if cns:
        raws.append(str(cns[0].value))
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = []
    for name in san:
        if isinstance(name, x509.DNSName):
            raws.append(name.value)
        elif isinstance(name, x509.IPAddress):
            raws.append(str(name.value))
        else:
            word = _SAN_WORDS.get(type(name), type(name).__name__)
            shown = f"{word}:{name.value}" if isinstance(name.value, str) else word
            raise UsageError(f"the CSR asks for subjectAltName {shown}: kimpki issues DNS names and IP "
                             f"addresses only; make the CSR without it")
    raws += list(extra)
    if not raws:
        raise UsageError("the CSR names no host (no CN, no subjectAltName): add --san HOST")
    return parse_hosts(raws)  # linear, and at most MAX_SANS names


def csr_org(csr: x509.CertificateSigningRequest) -> str | None:
    orgs = csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(orgs[0].value) if orgs else None
