"""Revocation state in the store: which serials each CA revoked (when, why, by which command)
and the number and validity of each CA's last CRL, whose PEM is ``cas/<name>/crl.pem``.

The CRL number only ever grows: ``next_crl_number`` is read and ``save_crl`` written inside one
``Store.locked()`` transaction, so two runs never sign two CRLs with one number.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kimpki.store.fs import PUBLIC_FILE, write_atomic
from kimpki.store.store import Store, _dt, _ts


@dataclass(frozen=True)
class Revocation:
    ca: str
    serial: str
    name: str | None
    kind: str  # server | client | ca
    not_after: datetime
    revoked_at: datetime
    reason: str
    command: str

    def to_dict(self) -> dict:
        return {"ca": self.ca, "serial": self.serial, "name": self.name, "kind": self.kind,
                "not_after": _ts(self.not_after), "revoked_at": _ts(self.revoked_at), "reason": self.reason,
                "command": self.command}


@dataclass(frozen=True)
class CrlState:
    ca: str
    number: int
    this_update: datetime
    next_update: datetime


def _revocation(row) -> Revocation:
    return Revocation(row["ca"], row["serial"], row["name"], row["kind"], _dt(row["not_after"]),
                      _dt(row["revoked_at"]), row["reason"], row["command"])


def find(store: Store, ca: str, serial: str) -> Revocation | None:
    row = store.db.execute("SELECT * FROM revocations WHERE ca=? AND serial=?", (ca, serial)).fetchone()
    return _revocation(row) if row else None


def revoked_serials(store: Store) -> dict[tuple[str, str], Revocation]:
    """Every revocation, by (CA, serial): what list/inspect/status mark as revoked."""
    return {(r.ca, r.serial): r for r in map(_revocation, store.db.execute("SELECT * FROM revocations"))}


def of_ca(store: Store, ca: str) -> list[Revocation]:
    rows = store.db.execute("SELECT * FROM revocations WHERE ca=? ORDER BY revoked_at, serial", (ca,))
    return [_revocation(r) for r in rows]


def record(store: Store, rev: Revocation) -> None:
    """Record a revocation. Call inside ``Store.locked()``; ``find`` first (it is idempotent)."""
    store.db.execute("INSERT INTO revocations(ca, serial, name, kind, not_after, revoked_at, reason, command) "
                     "VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
                     (rev.ca, rev.serial, rev.name, rev.kind, _ts(rev.not_after), _ts(rev.revoked_at), rev.reason,
                      rev.command))


def crl_state(store: Store, ca: str) -> CrlState | None:
    row = store.db.execute("SELECT * FROM crls WHERE ca=?", (ca,)).fetchone()
    return CrlState(ca, row["number"], _dt(row["this_update"]), _dt(row["next_update"])) if row else None


def next_crl_number(store: Store, ca: str, at_least: int = 1) -> int:
    """One more than the last CRL's number (never below ``at_least``: a number seen elsewhere,
    e.g. in a CRL a cluster holds, is never reused)."""
    state = crl_state(store, ca)
    return max(at_least, state.number + 1 if state else 1)


def crl_path(store: Store, ca: str):
    return store.ca_dir(ca) / "crl.pem"


def save_crl(store: Store, ca: str, number: int, this_update: datetime, next_update: datetime, pem: bytes) -> None:
    """Record and write a CRL just signed. Call inside ``Store.locked()``."""
    store.db.execute("INSERT INTO crls(ca, number, this_update, next_update) VALUES(?, ?, ?, ?) "
                     "ON CONFLICT(ca) DO UPDATE SET number=excluded.number, this_update=excluded.this_update, "
                     "next_update=excluded.next_update", (ca, number, _ts(this_update), _ts(next_update)))
    write_atomic(crl_path(store, ca), pem, PUBLIC_FILE)
