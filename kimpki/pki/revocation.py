"""Revocation data a gateway can use: X.509 v2 CRLs (RFC 5280 §5) and OCSP responses for
stapling (RFC 6960). Pure: certificates, keys and times in; signed objects out.

Envoy rejects every client of a CA whose CRL is past nextUpdate, so the validity chosen here
is also a deadline for the refresh (``crl_refresh_due``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from kimpki.errors import UsageError
from kimpki.pki.keys import PrivateKey, signature_hash_for
from kimpki.pki.parse import UNREADABLE, first_unreadable, rfc3339
from kimpki.pki.profiles import authority_key_identifier

DEFAULT_CRL_VALIDITY = timedelta(days=7)
DEFAULT_OCSP_VALIDITY = timedelta(days=4)

# RFC 5280 §5.3.1 names (as users and openssl spell them) → cryptography's flags. "unspecified"
# is recorded, but its reasonCode is left out of the CRL entry, as §5.3.1 asks. certificateHold
# (reversible) and removeFromCRL (delta CRLs only) are not offered.
REASONS = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "cACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
}


def check_crl_validity(validity: timedelta) -> timedelta:
    """A CRL's validity (thisUpdate to nextUpdate): 1h to 366d. It is also the deadline for the
    refresh: Envoy refuses every client of a CA whose CRL is past nextUpdate."""
    if not timedelta(hours=1) <= validity <= timedelta(days=366):
        raise UsageError("a CRL's validity must be between 1h and 366d (Envoy refuses every client of a CA "
                         "whose CRL is past nextUpdate, so it is also the refresh deadline)")
    return validity


def reason_name(text: str) -> str:
    """The canonical RFC 5280 name for ``text`` (case-insensitive; ``key-compromise`` too)."""
    wanted = text.replace("-", "").replace("_", "").lower()
    for name in REASONS:
        if name.lower() == wanted:
            return name
    raise UsageError(f"unknown revocation reason {text!r}: use one of {', '.join(REASONS)}")


@dataclass(frozen=True)
class RevokedEntry:
    serial: int
    revoked_at: datetime
    reason: str  # a REASONS key
    not_after: datetime  # of the revoked certificate: once past, it leaves the CRL


def build_crl(issuer_cert: x509.Certificate, issuer_key: PrivateKey, entries: list[RevokedEntry], *,
              number: int, this_update: datetime, next_update: datetime) -> x509.CertificateRevocationList:
    """A complete CRL signed by ``issuer_key``: CRL Number, AKI, every entry whose certificate has
    not expired by ``this_update`` (RFC 5280 lets expired ones go), with its reason code."""
    if number < 0 or number >= 1 << 159:
        raise UsageError(f"CRL number {number} is out of range (RFC 5280: at most 20 octets)")
    if next_update <= this_update:
        raise UsageError("a CRL's nextUpdate must be after its thisUpdate")
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(issuer_cert.subject)
               .last_update(this_update)
               .next_update(next_update)
               .add_extension(x509.CRLNumber(number), critical=False)
               .add_extension(authority_key_identifier(issuer_cert), critical=False))
    for e in sorted(entries, key=lambda e: e.serial):
        if e.not_after <= this_update:
            continue
        revoked = x509.RevokedCertificateBuilder().serial_number(e.serial).revocation_date(e.revoked_at)
        if e.reason != "unspecified":
            revoked = revoked.add_extension(x509.CRLReason(REASONS[e.reason]), critical=False)
        builder = builder.add_revoked_certificate(revoked.build())
    return builder.sign(issuer_key, signature_hash_for(issuer_key))


def crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def crl_refresh_due(this_update: datetime, next_update: datetime) -> datetime:
    """Re-sign inside the last third of a CRL's validity, so a gateway never holds an expired one."""
    return next_update - (next_update - this_update) / 3


def build_ocsp_response(cert: x509.Certificate, issuer_cert: x509.Certificate, issuer_key: PrivateKey, *,
                        revoked: RevokedEntry | None, this_update: datetime, next_update: datetime) -> bytes:
    """A DER OCSP response for ``cert``, signed by its issuing CA itself (RFC 6960 §4.2.2.2: no
    delegated responder): status good, or revoked with time and reason. SHA-1 CertID, as
    RFC 5019 asks and every client (openssl, Envoy) expects."""
    if next_update <= this_update:
        raise UsageError("an OCSP response's nextUpdate must be after its thisUpdate")
    builder = ocsp.OCSPResponseBuilder()
    if revoked is None:
        builder = builder.add_response(cert=cert, issuer=issuer_cert, algorithm=hashes.SHA1(),
                                       cert_status=ocsp.OCSPCertStatus.GOOD, this_update=this_update,
                                       next_update=next_update, revocation_time=None, revocation_reason=None)
    else:
        reason = None if revoked.reason == "unspecified" else REASONS[revoked.reason]
        builder = builder.add_response(cert=cert, issuer=issuer_cert, algorithm=hashes.SHA1(),
                                       cert_status=ocsp.OCSPCertStatus.REVOKED, this_update=this_update,
                                       next_update=next_update, revocation_time=revoked.revoked_at,
                                       revocation_reason=reason)
    builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, issuer_cert)  # producedAt: now
    return builder.sign(issuer_key, signature_hash_for(issuer_key)).public_bytes(Encoding.DER)


def ocsp_refresh_due(this_update: datetime, next_update: datetime) -> datetime:
    """Re-sign a staple inside the last half of its validity."""
    return next_update - (next_update - this_update) / 2


@dataclass(frozen=True)
class StapleInfo:
    """What one OCSP response (a staple) says, for deciding whether it still serves."""

    serial: int
    status: str  # good | revoked | unknown
    this_update: datetime
    next_update: datetime | None
    revocation_reason: str | None = None  # a REASONS key, for a revoked status

    @property
    def refresh_due(self) -> datetime | None:
        return ocsp_refresh_due(self.this_update, self.next_update) if self.next_update is not None else None

    def serves(self, serial: int, revoked: bool, now: datetime) -> bool:
        """True while this staple is the right answer for certificate ``serial`` with that
        revocation state, and before the last half of its validity: no need to re-sign it."""
        return (self.serial == serial and self.status == ("revoked" if revoked else "good")
                and self.refresh_due is not None and now < self.refresh_due)

    def to_dict(self) -> dict:
        return {"serial": format(self.serial, "x"), "status": self.status,
                "this_update": rfc3339(self.this_update),
                "next_update": rfc3339(self.next_update) if self.next_update else None,
                "refresh_after": rfc3339(self.refresh_due) if self.refresh_due else None,
                "revocation_reason": self.revocation_reason}


def read_ocsp_staple(der: bytes) -> StapleInfo | None:
    """The single response of a successful DER OCSP response; None when it is anything else
    (unreadable, unsuccessful, or answering for other than exactly one certificate: a gateway
    cannot staple it)."""
    try:
        resp = ocsp.load_der_ocsp_response(der)
        if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            return None
        singles = list(resp.responses)
        return _staple_info(singles[0]) if len(singles) == 1 else None
    except UNREADABLE:
        return None


def _reason_of(flag: x509.ReasonFlags | None) -> str | None:
    """A reason flag as RFC 5280 spells it (a REASONS key); None for one kimpki does not offer."""
    return next((n for n, f in REASONS.items() if f == flag), None)


def _staple_info(one) -> StapleInfo:
    """One single response of an OCSP response, as :class:`StapleInfo`."""
    status = {ocsp.OCSPCertStatus.GOOD: "good", ocsp.OCSPCertStatus.REVOKED: "revoked"}.get(one.certificate_status,
                                                                                           "unknown")
    reason = (_reason_of(one.revocation_reason) or "unspecified") if status == "revoked" else None
    return StapleInfo(one.serial_number, status, one.this_update_utc, one.next_update_utc, reason)


def staple_refusal(der: bytes, serial: int) -> str | None:
    """Why Envoy refuses ``der`` as the OCSP staple of the certificate with ``serial`` (and with it
    the whole secret: "OCSP response has no body", "... does not match its TLS certificate"), or
    None when it takes it. An expired staple is taken: the lenient policy serves the certificate
    without it."""
    info = read_ocsp_staple(der)
    if info is None:
        return "is not a successful OCSP response for one certificate"
    if info.serial != serial:
        return f"answers for serial {info.serial:x}, not the certificate's {serial:x}"
    return None


# ------------------------------------------------------------------ reading CRLs and responses
_PEM_CRL = b"-----BEGIN X509 CRL-----"


def _read_entries(crl: x509.CertificateRevocationList) -> None:
    for entry in crl:  # each entry is parsed when reached
        entry.serial_number, entry.revocation_date_utc, entry.extensions  # noqa: B018


def _read_singles(resp: ocsp.OCSPResponse) -> None:
    for one in resp.responses:
        one.serial_number, one.certificate_status, one.this_update_utc, one.next_update_utc  # noqa: B018
        if one.certificate_status == ocsp.OCSPCertStatus.REVOKED:
            one.revocation_time_utc, one.revocation_reason  # noqa: B018


# The parts cryptography parses only when first read (as for certificates: parse.unreadable_part).
_CRL_PARTS = (("issuer", lambda c: c.issuer), ("extensions", lambda c: c.extensions),
              ("signature algorithm", lambda c: c.signature_hash_algorithm), ("entry", _read_entries))
_OCSP_PARTS = (("responder", lambda r: r.responder_name), ("time", lambda r: r.produced_at_utc),
               ("signature algorithm", lambda r: r.signature_hash_algorithm), ("response", _read_singles))


def load_crl(data: bytes, source: str = "input") -> x509.CertificateRevocationList | None:
    """The CRL in ``data`` (PEM ``X509 CRL`` block or DER), or None when it holds none."""
    try:
        if _PEM_CRL in data:
            crl = x509.load_pem_x509_crl(data[data.index(_PEM_CRL):])
        else:
            crl = x509.load_der_x509_crl(data)
    except UNREADABLE:
        return None
    part = first_unreadable(crl, _CRL_PARTS)
    if part is not None:
        raise UsageError(f"{source}: not a readable CRL ({part})")
    return crl


def load_ocsp_response(data: bytes, source: str = "input") -> ocsp.OCSPResponse | None:
    """The DER OCSP response in ``data`` (a staple as ``tls.ocsp-staple`` holds it), or None."""
    try:
        resp = ocsp.load_der_ocsp_response(data)
        status = resp.response_status  # parsed lazily: touch it so a bad body fails here
    except UNREADABLE:
        return None
    part = first_unreadable(resp, _OCSP_PARTS) if status == ocsp.OCSPResponseStatus.SUCCESSFUL else None
    if part is not None:
        raise UsageError(f"{source}: not a readable OCSP response ({part})")
    return resp


def describe_crl(crl: x509.CertificateRevocationList, now: datetime) -> dict:
    """What ``kimpki inspect`` shows of a CRL: issuer, number, validity and every entry."""
    try:
        number: int | None = crl_number(crl)
    except x509.ExtensionNotFound:
        number = None
    entries = []
    for r in crl:
        try:
            flag = r.extensions.get_extension_for_class(x509.CRLReason).value.reason
            reason = _reason_of(flag) or flag.name
        except x509.ExtensionNotFound:
            reason = "unspecified"
        entries.append({"serial": format(r.serial_number, "x"), "revoked_at": rfc3339(r.revocation_date_utc),
                        "reason": reason})
    nxt = crl.next_update_utc
    return {"issuer": crl.issuer.rfc4514_string(), "number": number, "this_update": rfc3339(crl.last_update_utc),
            "next_update": rfc3339(nxt) if nxt else None, "expired": nxt is not None and nxt < now,
            "signature_hash": crl.signature_hash_algorithm.name if crl.signature_hash_algorithm else None,
            "entries": entries}


def describe_ocsp_response(resp: ocsp.OCSPResponse, now: datetime) -> dict:
    """What ``kimpki inspect`` shows of an OCSP response (a staple)."""
    status = resp.response_status.name.lower()
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return {"response_status": status, "responses": []}
    responses = []
    for one in resp.responses:
        info = _staple_info(one)
        d = info.to_dict()
        if info.status == "revoked":
            d["revoked_at"] = rfc3339(one.revocation_time_utc)
        d["expired"] = info.next_update is not None and info.next_update < now
        responses.append(d)
    return {"response_status": status, "produced_at": rfc3339(resp.produced_at_utc),
            "responder": (resp.responder_name.rfc4514_string() if resp.responder_name is not None
                          else "key hash " + resp.responder_key_hash.hex()),
            "signature_hash": resp.signature_hash_algorithm.name if resp.signature_hash_algorithm else None,
            "responses": responses}


def signed_by(obj: x509.CertificateRevocationList | ocsp.OCSPResponse, ca: x509.Certificate) -> bool:
    """True when ``ca``'s key signed this CRL or OCSP response (names and signature)."""
    if isinstance(obj, x509.CertificateRevocationList):
        return obj.issuer == ca.subject and obj.is_signature_valid(ca.public_key())
    pub = ca.public_key()
    try:
        if isinstance(pub, rsa.RSAPublicKey):
            pub.verify(obj.signature, obj.tbs_response_bytes, padding.PKCS1v15(), obj.signature_hash_algorithm)
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            pub.verify(obj.signature, obj.tbs_response_bytes, ec.ECDSA(obj.signature_hash_algorithm))
        else:
            pub.verify(obj.signature, obj.tbs_response_bytes)
    except (InvalidSignature, TypeError, ValueError):
        return False
    return True
