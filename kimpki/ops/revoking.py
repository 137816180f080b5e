"""Revoking certificates and publishing each CA's CRL (``kimpki revoke``, ``kimpki crl``).

A revocation is recorded and the CA's CRL re-signed in one store transaction: the CA key is
loaded first, so a wrong passphrase changes nothing, and a CRL number is never used twice (the
number in ``crl.pem`` counts as used even if the database lost the transaction that wrote it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.serialization import Encoding

from kimpki.errors import NotFoundError, UsageError
from kimpki.ops.authority import PassphraseSource, load_issuer
from kimpki.pki import parse
from kimpki.pki import revocation as rv
from kimpki.store import Store
from kimpki.store import revocations as db

CRL_VALIDITY_KEY = "crl-validity:"  # settings: a CA's CRL validity in seconds (kimpki crl --next-update)


@dataclass
class CrlResult:
    ca: str
    number: int
    this_update: datetime
    next_update: datetime
    entries: int
    path: str
    signed: bool  # False: the stored CRL was still fresh and is returned as it is
    pem: bytes

    def to_dict(self) -> dict:
        return {"ca": self.ca, "crl_number": self.number, "this_update": parse.rfc3339(self.this_update),
                "next_update": parse.rfc3339(self.next_update),
                "refresh_after": parse.rfc3339(rv.crl_refresh_due(self.this_update, self.next_update)),
                "revoked_entries": self.entries, "path": self.path, "signed": self.signed}


@dataclass
class RevokeResult:
    revocation: db.Revocation
    already: bool
    crl: CrlResult | None

    def to_dict(self) -> dict:
        return {**self.revocation.to_dict(), "already_revoked": self.already,
                "crl": self.crl.to_dict() if self.crl else None}


def normalise_serial(text: str) -> str:
    """A serial as kimpki prints it (lower-case hex, no colons or leading zeros)."""
    raw = text.strip().lower().replace(":", "")
    if raw.startswith("0x"):
        raw = raw[2:]
    if not raw or len(raw) > 40 or any(c not in "0123456789abcdef" for c in raw):
        raise UsageError(f"--serial {text!r}: expected the certificate's serial in hex (as 'kimpki list' shows it)")
    return format(int(raw, 16), "x")


def find_target(store: Store, *, name: str | None, serial: str | None, ca: str | None) -> db.Revocation:
    """What to revoke, as an unrecorded Revocation (times filled in by ``revoke``)."""
    if (name is None) == (serial is None):
        raise UsageError("give the certificate's NAME or --serial HEX (one of them)")
    if ca is not None:
        store.get_ca(ca)  # an unknown CA is NotFoundError (exit 1), as in every command
    if name is not None:
        rec = store.find_cert(name)
        if rec is None:
            raise NotFoundError(f"no certificate named {name!r} in the store (see 'kimpki list'; an older "
                                f"version: --serial HEX from 'kimpki list --all')")
        if ca is not None and rec.ca != ca:
            raise UsageError(f"{name} was issued by CA {rec.ca!r}, not {ca!r}")
        return db.Revocation(rec.ca, rec.serial, rec.name, rec.kind, rec.not_after, rec.not_after, "", "")
    hexa = normalise_serial(serial)
    rows = store.db.execute("SELECT * FROM certificates WHERE serial=?" + (" AND ca=?" if ca else "") +
                            " ORDER BY id DESC", (hexa, ca) if ca else (hexa,)).fetchall()
    if rows:
        rec = store._cert_from_row(rows[0])
        return db.Revocation(rec.ca, rec.serial, rec.name, rec.kind, rec.not_after, rec.not_after, "", "")
    for cand in store.list_cas():  # an intermediate CA's own certificate, revoked by its parent
        if cand.serial == hexa and cand.parent is not None and ca in (None, cand.parent):
            return db.Revocation(cand.parent, cand.serial, cand.name, "ca", cand.not_after, cand.not_after, "", "")
    where = f" issued by CA {ca!r}" if ca else ""
    raise NotFoundError(f"no certificate with serial {hexa}{where} in the store: kimpki revokes only what "
                        f"it issued (see 'kimpki list --all')")


def revoke(store: Store, *, name: str | None, serial: str | None, ca: str | None, reason: str, now: datetime,
           passphrase: PassphraseSource, command: str) -> RevokeResult:
    target = find_target(store, name=name, serial=serial, ca=ca)
    reason = rv.reason_name(reason)
    existing = db.find(store, target.ca, target.serial)
    if existing is not None:
        return RevokeResult(existing, True, None)
    issuer_ca = store.get_ca(target.ca)
    issuer = load_issuer(store, issuer_ca, passphrase)  # before anything is written: a wrong passphrase changes nothing
    rev = db.Revocation(target.ca, target.serial, target.name, target.kind, target.not_after,
                        now.replace(microsecond=0), reason, command)
    with store.locked():
        if db.find(store, rev.ca, rev.serial) is None:  # another process may have been faster
            db.record(store, rev)
        crl = _sign_crl(store, issuer_ca.name, issuer, now)
    return RevokeResult(rev, False, crl)


def crl_validity(store: Store, ca: str) -> timedelta:
    value = store.get_setting(CRL_VALIDITY_KEY + ca)
    return timedelta(seconds=int(value)) if value else rv.DEFAULT_CRL_VALIDITY


def set_crl_validity(store: Store, ca: str, validity: timedelta) -> None:
    if not timedelta(hours=1) <= validity <= timedelta(days=366):
        raise UsageError("a CRL's validity must be between 1h and 366d (Envoy refuses every client of a CA "
                         "whose CRL is past nextUpdate, so it is also the refresh deadline)")
    with store.locked():
        store.set_setting(CRL_VALIDITY_KEY + ca, str(int(validity.total_seconds())))


def current_crl(store: Store, ca_name: str, *, now: datetime, passphrase: PassphraseSource,
                refresh: bool = False) -> CrlResult:
    """The CA's CRL: the stored one while it is fresh (before the last third of its validity),
    else (or with ``refresh``) a newly signed one."""
    ca = store.get_ca(ca_name)
    state = db.crl_state(store, ca.name)
    path = db.crl_path(store, ca.name)
    if state is not None and not refresh and path.exists() and now < rv.crl_refresh_due(state.this_update,
                                                                                         state.next_update):
        pem = path.read_bytes()
        entries = len(parse_crl(pem, str(path)))
        return CrlResult(ca.name, state.number, state.this_update, state.next_update, entries, str(path), False, pem)
    issuer = load_issuer(store, ca, passphrase)
    with store.locked():
        return _sign_crl(store, ca.name, issuer, now)


def _sign_crl(store: Store, ca_name: str, issuer, now: datetime) -> CrlResult:
    """Sign and save the CA's next CRL. Call inside ``store.locked()``."""
    path = db.crl_path(store, ca_name)
    seen = 0
    if path.exists():  # a CRL the database may not know of (killed between file and commit)
        try:
            seen = rv.crl_number(parse_crl(path.read_bytes(), str(path))) + 1
        except Exception:  # noqa: BLE001 - a damaged file: the database's number still counts
            seen = 0
    number = db.next_crl_number(store, ca_name, at_least=max(seen, 1))
    this_update = now.replace(microsecond=0)
    next_update = this_update + crl_validity(store, ca_name)
    entries = [rv.RevokedEntry(int(r.serial, 16), r.revoked_at, r.reason, r.not_after) for r in db.of_ca(store, ca_name)]
    crl = rv.build_crl(issuer.cert, issuer.key, entries, number=number, this_update=this_update,
                       next_update=next_update)
    pem = crl.public_bytes(Encoding.PEM)
    db.save_crl(store, ca_name, number, this_update, next_update, pem)
    return CrlResult(ca_name, number, this_update, next_update, len(crl), str(path), True, pem)


def parse_crl(pem: bytes, source: str):
    from cryptography import x509

    try:
        return x509.load_pem_x509_crl(pem)
    except ValueError as e:
        raise UsageError(f"{source}: not a readable CRL ({e})") from None
