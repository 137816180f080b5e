"""OCSP staples in credential Secrets (``tls.ocsp-staple``, which Istio hands to Envoy as
``TlsCertificate.ocsp_staple``): signing them, keeping them fresh, and rewriting them when the
certificate is revoked.

A staple is an OCSP response (RFC 6960) for the served certificate, signed by the CA that issued
it (no delegated responder), valid 4 days. Envoy's default (lenient) policy serves a certificate
whose staple is missing or past nextUpdate without one, so a stale staple is not an outage, but
it is a lie about revocation for as long as it lasts: the staple follows the store's revocation
record, and is re-signed inside the last half of its validity (``kimpki renew``), whenever the
certificate is re-issued (a new staple with the new Secret), and at once by ``kimpki revoke``
with a place.

The state lives in the Secret itself (its staple says which serial, which status, until when);
the store keeps no copy.
"""

from __future__ import annotations

import base64
import copy
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from kimpki.errors import KimpkiError, OperationError
from kimpki.istio import contract as c
from kimpki.istio.credential import ROLE_CREDENTIAL, read_provenance, served_certificate_pem
from kimpki.ops.authority import PassphraseSource, load_issuer, no_passphrase, read_ca_cert
from kimpki.ops.places import SecretPlace
from kimpki.pki import parse
from kimpki.pki import revocation as rv
from kimpki.pki.profiles import BACKDATE
from kimpki.store import CaRecord, CertRecord, Store
from kimpki.store import revocations as db


@dataclass(frozen=True)
class Subject:
    """What a staple answers for: a certificate and the store CA that issued it."""

    leaf: x509.Certificate
    ca: str

    @property
    def serial(self) -> str:
        return parse.serial_hex(self.leaf)

    @classmethod
    def of_record(cls, rec: CertRecord) -> "Subject":
        try:
            leaf = parse.load_certificates(rec.cert_path.read_bytes(), str(rec.cert_path))[0]
        except (OSError, KimpkiError) as e:
            raise OperationError(f"{rec.name}: cannot read the certificate to staple ({e})") from None
        return cls(leaf, rec.ca)


def issuing_ca(store: Store, leaf: x509.Certificate) -> CaRecord | None:
    """The store CA whose key signed ``leaf`` (a home that holds the CA but not the certificate,
    like the CronJob's, which imports the CAs only)."""
    for ca in store.list_cas():
        cert = read_ca_cert(ca)
        if cert.subject != leaf.issuer:
            continue
        try:
            leaf.verify_directly_issued_by(cert)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return ca
    return None


def revoked_entry(store: Store, subject: Subject) -> rv.RevokedEntry | None:
    """The store's revocation of ``subject``, as the OCSP builder takes it (None: not revoked)."""
    r = db.find(store, subject.ca, subject.serial)
    return rv.RevokedEntry(int(r.serial, 16), r.revoked_at, r.reason, r.not_after) if r is not None else None


def sign_staple(store: Store, subject: Subject, *, now: datetime, passphrase: PassphraseSource | None) -> bytes:
    """A new DER OCSP response for ``subject``, signed by its issuing CA: good, or revoked with the
    recorded time and reason. thisUpdate is backdated like a notBefore."""
    issuer = load_issuer(store, store.get_ca(subject.ca), passphrase or no_passphrase)
    this_update = now.replace(microsecond=0) - BACKDATE
    return rv.build_ocsp_response(subject.leaf, issuer.cert, issuer.key, revoked=revoked_entry(store, subject),
                                  this_update=this_update, next_update=this_update + rv.DEFAULT_OCSP_VALIDITY)


def _still_serves(store: Store, subject: Subject, staple: bytes | None, now: datetime, where: str) -> bool:
    info = rv.read_ocsp_staple(staple) if staple else None
    if info is None:
        return False
    revoked = revoked_entry(store, subject) is not None
    if info.serial == subject.leaf.serial_number and info.status == "revoked" and not revoked:
        # As with CRLs: a home without the revocation (another machine's, the CronJob's) must not
        # undo it by signing "good" again.
        raise OperationError(f"{where}: its OCSP staple says serial {subject.serial} is revoked, but this kimpki "
                             f"home has no such revocation: re-signing would say good again; run this from the "
                             f"home that revoked it")
    return info.serves(subject.leaf.serial_number, revoked, now)


def staple_for(store: Store, rec: CertRecord, *, now: datetime, passphrase: PassphraseSource | None,
               current: bytes | None = None) -> bytes:
    """``current`` (the staple a Secret holds now) while it still serves certificate version
    ``rec`` (same serial, same revocation status, before the last half of its validity), else a
    newly signed one: a Secret rebuilt for an unchanged certificate stays unchanged."""
    subject = Subject.of_record(rec)
    if _still_serves(store, subject, current, now, rec.name):
        return current
    return sign_staple(store, subject, now=now, passphrase=passphrase)


def only_staple_differs(before: dict, after: dict) -> bool:
    """True when Secret ``after`` differs from ``before`` in its OCSP staple alone (a refresh,
    not a change of the credential)."""
    from kimpki.kube import objects  # pure dict helpers; no kubernetes import

    def without_staple(secret: dict) -> dict:
        return {**secret, "data": {k: v for k, v in (secret.get("data") or {}).items() if k != c.OCSP_STAPLE}}

    return (not objects.secret_unchanged(before, after)
            and objects.secret_unchanged(without_staple(before), without_staple(after)))


def secret_staple(secret: dict | None) -> bytes | None:
    """The DER staple a Secret holds (None when it holds none, or an undecodable value)."""
    value = ((secret or {}).get("data") or {}).get(c.OCSP_STAPLE)
    if not value:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        return None


def is_stapled(secret: dict) -> bool:
    """A credential Secret kimpki staples (its annotation, or a staple key it carries)."""
    prov = read_provenance(secret)
    return prov.get("role", ROLE_CREDENTIAL) == ROLE_CREDENTIAL and (
        prov.get("ocsp_staple") == "true" or bool((secret.get("data") or {}).get(c.OCSP_STAPLE)))


def refresh_staple(store: Store, place: SecretPlace, secret: dict, *, now: datetime,
                   passphrase: PassphraseSource | None, dry_run: bool = False) -> dict | None:
    """Give stapled credential Secret ``secret`` (as just read from ``place``) a new staple when
    its staple no longer serves (:func:`staple_for`); only that key changes, guarded by what was
    read (no blind retry: a concurrent rotation is never undone). Returns
    ``{namespace, secret, serial, status, next_update, action}``, or None when nothing changed."""
    from kimpki.ops.credentials import managed_credential

    meta = secret.get("metadata") or {}
    ns, name = meta.get("namespace") or c.DEFAULT_NAMESPACE, meta.get("name")
    cred = managed_credential(secret, default_namespace=ns)
    if cred.served is None:
        raise OperationError(f"Secret {ns}/{name} serves no readable certificate: cannot staple it")
    rec = store.find_version(cred.store_name, cred.served_serial)
    ca = store.find_ca(rec.ca) if rec is not None else issuing_ca(store, cred.served)
    if ca is None:
        raise OperationError(f"Secret {ns}/{name} serves serial {cred.served_serial}, issued by a CA this kimpki home "
                             f"does not hold: cannot sign its OCSP staple")
    subject = Subject(cred.served, ca.name)
    current = secret_staple(secret)
    if _still_serves(store, subject, current, now, f"Secret {ns}/{name}"):
        return None
    if dry_run:
        return {"namespace": ns, "secret": name, "serial": subject.serial, "status": None, "next_update": None,
                "action": "would refresh"}
    new = sign_staple(store, subject, now=now, passphrase=passphrase)
    desired = copy.deepcopy(secret)
    desired["data"] = {**(secret.get("data") or {}), c.OCSP_STAPLE: base64.b64encode(new).decode("ascii")}
    try:
        res = place.write(desired, current=secret, retries=0)
    except KimpkiError as e:
        raise type(e)(f"{e} (the OCSP staple of secret/{name} was not rewritten: run the command again)") from None
    info = rv.read_ocsp_staple(new)
    return {"namespace": ns, "secret": name, "serial": subject.serial, "status": info.status,
            "next_update": parse.rfc3339(info.next_update), "action": res.action}


def republish_staples(store: Store, place: SecretPlace, ca: str, serial: str, *, now: datetime,
                      passphrase: PassphraseSource | None, namespace: str | None = None) -> list[dict]:
    """``kimpki revoke`` with a place: every stapled credential there that serves certificate
    ``serial`` of CA ``ca`` gets a staple saying so, at once (see :func:`refresh_staple`)."""
    done = []
    for secret in list(place.managed(namespace)):
        if not is_stapled(secret):
            continue
        pem = served_certificate_pem(secret)
        try:
            served = parse.load_certificates(pem, "Secret")[0] if pem else None
        except KimpkiError:
            continue
        if served is None or parse.serial_hex(served) != serial:
            continue
        rec = store.find_version(str(read_provenance(secret).get("store_name")), serial)
        issuer = store.find_ca(rec.ca) if rec is not None else issuing_ca(store, served)
        if issuer is None or issuer.name != ca:
            continue
        item = refresh_staple(store, place, secret, now=now, passphrase=passphrase)
        if item is not None:
            done.append(item)
    return done
