"""CA name constraints kept in the store, and their enforcement at issuance.

Constraints live in the inventory's settings table under ``constraints:<CA name>`` as JSON
(no schema change). ``kimpki apply`` writes them from a policy's CertificateAuthority; every
issuance (``kimpki issue``, ``kimpki sign``, policy-driven issuance, rotation) goes through
:func:`enforce`, which also applies the constraints of every CA above an intermediate, so
an unconstrained intermediate cannot be used to step around its root's rules.
"""

from __future__ import annotations

from datetime import datetime

from kimpki.errors import OperationError
from kimpki.pki.constraints import NameConstraints, violations
from kimpki.pki.names import HostName
from kimpki.store import CaRecord, Store

SETTING_PREFIX = "constraints:"


def load(store: Store, ca_name: str) -> NameConstraints | None:
    """CA ``ca_name``'s name constraints (None: none); read once per store batch."""
    return store.memo(("constraints", ca_name), lambda: _load(store, ca_name))


def _load(store: Store, ca_name: str) -> NameConstraints | None:
    raw = store.get_setting(SETTING_PREFIX + ca_name)
    if not raw or raw == "null":
        return None
    try:
        return NameConstraints.from_json(raw)
    except (ValueError, TypeError, AttributeError) as e:
        raise OperationError(f"the stored constraints of CA {ca_name!r} are unreadable ({e})") from None


def save(store: Store, ca_name: str, constraints: NameConstraints | None) -> None:
    """Set (or, with None, clear) a CA's constraints. Call inside ``store.locked()``."""
    store.set_setting(SETTING_PREFIX + ca_name, constraints.to_json() if constraints else "null")


def enforce(store: Store, ca: CaRecord, hosts: list[HostName], not_after: datetime, now: datetime) -> None:
    """Refuse (one-line OperationError naming the rule) an issuance outside the constraints of
    ``ca`` or of any CA above it."""
    lifetime = not_after - now
    record: CaRecord | None = ca
    while record is not None:
        c = load(store, record.name)
        if c is not None:
            problems = violations(c, hosts, lifetime)
            if problems:
                via = "" if record.name == ca.name else f" (above CA {ca.name!r})"
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                raise OperationError(f"CA {record.name!r}{via} refuses this certificate: {problems[0]}{more}")
        record = store.find_ca(record.parent) if record.parent else None
