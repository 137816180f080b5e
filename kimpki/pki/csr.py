"""External certificate signing requests: read, check, and turn into host names."""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID

from kimpki.errors import UsageError
from kimpki.pki.names import HostName, parse_host


def load_csr(data: bytes, source: str = "CSR") -> x509.CertificateSigningRequest:
    try:
        if b"-----BEGIN" in data:
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
    except ValueError as e:
        raise UsageError(f"{source}: not a readable certificate signing request ({e})") from None
    if not csr.is_signature_valid:
        raise UsageError(f"{source}: the CSR's signature does not verify (tampered or corrupt)")
    return csr


def csr_hosts(csr: x509.CertificateSigningRequest, extra: list[str]) -> list[HostName]:
    """The CSR's subject CN and subjectAltName entries, plus ``extra``; CN first."""
    raws: list[str] = []
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if cns:
        raws.append(str(cns[0].value))
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        raws += san.get_values_for_type(x509.DNSName)
        raws += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    raws += list(extra)
    if not raws:
        raise UsageError("the CSR names no host (no CN, no subjectAltName): add --san HOST")
    out: list[HostName] = []
    for raw in raws:
        h = parse_host(raw)
        if h not in out:
            out.append(h)
    return out


def csr_org(csr: x509.CertificateSigningRequest) -> str | None:
    orgs = csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(orgs[0].value) if orgs else None
