"""Certificate profiles: root CA, intermediate CA, server leaf, client leaf.

Every certificate is X.509 v3 with a random 159-bit serial, a notBefore backdated a few minutes
for clock skew, and a SHA-256 signature (SHA-384 under a P-384 issuer). Leaves always carry a
subjectAltName, basicConstraints CA:FALSE, keyUsage and extendedKeyUsage, and key identifiers.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum
from functools import cached_property

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kimpki.errors import UsageError
from kimpki.pki.durations import lifetime_days
from kimpki.pki.keys import PrivateKey, signature_hash_for
from kimpki.pki.names import HostName, check_org
from kimpki.pki.parse import certs_to_pem

BACKDATE = timedelta(minutes=5)
MAX_CN_LENGTH = 64  # ub-common-name in RFC 5280


class LeafKind(str, Enum):
    SERVER = "server"
    CLIENT = "client"


@dataclass(frozen=True)
class Issuer:
    """A CA able to sign: its certificate and key, plus the chain up to (not including) the root."""

    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...] = field(default=())  # intermediates above ``cert``
    root: x509.Certificate | None = None  # the trust anchor; ``cert`` itself for a root
    # A root that succeeds another: its own key certified by the predecessor (see
    # make_cross_certificate). Sent after the leaf, it lets clients that trust only the
    # predecessor still build a path; clients that trust this root stop at it.
    cross: tuple[x509.Certificate, ...] = field(default=())

    @property
    def trust_anchor(self) -> x509.Certificate:
        return self.root if self.root is not None else self.cert

    @property
    def chain_below_root(self) -> list[x509.Certificate]:
        """Certificates a leaf's chain file carries after the leaf: intermediates (or a root's
        cross certificate), never the root."""
        if self.root is None or self.cert == self.root:
            return list(self.cross)
        return [self.cert, *self.chain]

    # Worked out once per Issuer rather than once per leaf: a store batch (apply, renew) loads
    # its Issuer once and signs hundreds of leaves with it. (cached_property writes the
    # instance's __dict__ directly, which a frozen dataclass allows.)
    @cached_property
    def chain_below_root_pem(self) -> bytes:
        return certs_to_pem(self.chain_below_root)

    @cached_property
    def trust_anchor_pem(self) -> bytes:
        return certs_to_pem([self.trust_anchor])

    @cached_property
    def authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        """The AKI of every certificate this issuer signs."""
        return authority_key_identifier(self.cert)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def random_serial() -> int:
    # 159 random bits: positive, at most 20 octets, far above the 64 bits of entropy required.
    return x509.random_serial_number()


def validity(now: datetime, days: float) -> tuple[datetime, datetime]:
    return now - BACKDATE, now + lifetime_days(days)


def build_name(common_name: str | None, org: str | None) -> x509.Name:
    attrs = []
    if org:
        check_org(org)  # here, where every subject is built: --org, a policy's org, a CSR's O
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    if common_name:
        if len(common_name) > MAX_CN_LENGTH:
            raise UsageError(f"common name {common_name[:20]!r}... is longer than {MAX_CN_LENGTH} characters")
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _ski(pub) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(pub)


def authority_key_identifier(issuer_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The AKI pointing at ``issuer_cert``: its own SKI when it has one (RFC 5280 4.2.1.1)."""
    try:
        ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key())


# What every leaf of a kind carries, built once: cryptography's extension values are immutable.
_LEAF_BASIC_CONSTRAINTS = x509.BasicConstraints(ca=False, path_length=None)
_LEAF_KEY_USAGE = {  # by "is the key RSA": keyEncipherment only for RSA key transport
    is_rsa: x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=is_rsa,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False,
                          crl_sign=False, encipher_only=False, decipher_only=False)
    for is_rsa in (False, True)}
_LEAF_EXTENDED_KEY_USAGE = {LeafKind.SERVER: x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                            LeafKind.CLIENT: x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])}


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                         crl_sign=True, encipher_only=False, decipher_only=False)


def _check_within_issuer(issuer: Issuer | None, not_after: datetime) -> None:
    if issuer is not None and not_after > issuer.cert.not_valid_after_utc:
        raise UsageError(
            f"the requested validity ends {not_after:%Y-%m-%d}, after the issuing CA expires "
            f"({issuer.cert.not_valid_after_utc:%Y-%m-%d}); ask for fewer --days")


def make_root(key: PrivateKey, common_name: str, org: str | None,
              not_before: datetime, not_after: datetime, serial: int | None = None) -> x509.Certificate:
    """A self-signed root CA: CA:TRUE critical, keyCertSign + cRLSign critical, SKI."""
    name = build_name(common_name, org)
    builder = (x509.CertificateBuilder()
               .subject_name(name).issuer_name(name)
               .public_key(key.public_key())
               .serial_number(serial or random_serial())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(_ca_key_usage(), critical=True)
               .add_extension(_ski(key.public_key()), critical=False))
    return builder.sign(key, signature_hash_for(key))


def make_intermediate(public_key, common_name: str, org: str | None, issuer: Issuer,
                      not_before: datetime, not_after: datetime,
                      serial: int | None = None) -> x509.Certificate:
    """An intermediate CA (pathLen 0) so the root can stay offline."""
    _check_within_issuer(issuer, not_after)
    builder = (x509.CertificateBuilder()
               .subject_name(build_name(common_name, org))
               .issuer_name(issuer.cert.subject)
               .public_key(public_key)
               .serial_number(serial or random_serial())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(_ca_key_usage(), critical=True)
               .add_extension(_ski(public_key), critical=False)
               .add_extension(authority_key_identifier(issuer.cert), critical=False))
    return builder.sign(issuer.key, signature_hash_for(issuer.key))


def make_cross_certificate(subject: x509.Certificate, issuer: Issuer, not_before: datetime,
                           not_after: datetime, serial: int | None = None) -> x509.Certificate:
    """``subject`` (a CA) re-certified by ``issuer``: same subject, key, basicConstraints, keyUsage
    and SKI, issued and signed by ``issuer`` (RFC 4210 section 4.4's newWithOld when a root
    certifies its successor). A path through it ends at ``issuer``; one through ``subject``
    itself ends at ``subject``. Never outlives ``issuer``."""
    not_after = min(not_after, issuer.cert.not_valid_after_utc)
    ext = subject.extensions
    builder = (x509.CertificateBuilder()
               .subject_name(subject.subject)
               .issuer_name(issuer.cert.subject)
               .public_key(subject.public_key())
               .serial_number(serial or random_serial())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(ext.get_extension_for_class(x509.BasicConstraints).value, critical=True)
               .add_extension(ext.get_extension_for_class(x509.KeyUsage).value, critical=True)
               .add_extension(_ski(subject.public_key()), critical=False)
               .add_extension(authority_key_identifier(issuer.cert), critical=False))
    return builder.sign(issuer.key, signature_hash_for(issuer.key))


def issue_leaf(public_key, hosts: list[HostName], kind: LeafKind, issuer: Issuer,
               not_before: datetime, not_after: datetime, org: str | None = None,
               serial: int | None = None, check_issuer_validity: bool = True) -> x509.Certificate:
    """A server or client certificate for ``hosts``; the first host is the subject CN."""
    if not hosts:
        raise UsageError("a certificate needs at least one host name")
    if check_issuer_validity:
        _check_within_issuer(issuer, not_after)
    first = hosts[0].value
    subject = build_name(first if len(first) <= MAX_CN_LENGTH else None, org)
    sans = [x509.IPAddress(ipaddress.ip_address(h.value)) if h.is_ip
            else x509.DNSName(h.value) for h in hosts]
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(issuer.cert.subject)
               .public_key(public_key)
               .serial_number(serial or random_serial())
               .not_valid_before(not_before).not_valid_after(not_after)
               # An empty subject makes the SAN the only identity: RFC 5280 then wants it critical.
               .add_extension(x509.SubjectAlternativeName(sans), critical=len(subject) == 0)
               .add_extension(_LEAF_BASIC_CONSTRAINTS, critical=True)
               .add_extension(_LEAF_KEY_USAGE[isinstance(public_key, rsa.RSAPublicKey)], critical=True)
               .add_extension(_LEAF_EXTENDED_KEY_USAGE[kind], critical=False)
               .add_extension(_ski(public_key), critical=False)
               .add_extension(issuer.authority_key_identifier, critical=False))
    return builder.sign(issuer.key, signature_hash_for(issuer.key))
