"""``inspect`` and ``list``: describe certificate files and the inventory."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Callable

from cryptography import x509

from kimpki import input_files
from kimpki.errors import OperationError, UsageError
from kimpki.ops.authority import read_ca_cert
from kimpki.pki import chain, parse, revocation
from kimpki.pki.renewal import lifecycle_state, renewal_time
from kimpki.store import Store


def _ca_certs(ca_ref: str, open_store: Callable[[], Store]) -> tuple[list, list, str]:
    """(roots, intermediates, label) for --ca: a file of certificates, or a CA in the store."""
    p = Path(ca_ref)
    if p.is_file():
        certs = parse.load_certificates(input_files.read_bytes(p, ca_ref), ca_ref)
        roots = [c for c in certs if c.issuer == c.subject] or certs
        return roots, [c for c in certs if c not in roots], ca_ref
    store = open_store()
    ca = store.get_ca(ca_ref)
    certs = []
    while ca is not None:
        certs.append(read_ca_cert(ca))
        ca = store.get_ca(ca.parent) if ca.parent else None
    return [certs[-1]], certs[:-1], f"CA {ca_ref}"


def _stored_certificate(name: str, existing_store: Callable[[], Store | None]) -> Path | None:
    """The current certificate file of ``name`` in the store (a name from 'kimpki list', or a host
    of a current server certificate), or None (also when there is no store yet)."""
    store = existing_store()
    if store is None:
        return None
    rec = store.find_cert(name) or store.current_for_host(name)
    return rec.cert_path if rec is not None else None


def inspect_file(path: str, ca_ref: str | None, open_store: Callable[[], Store], now: datetime,
                 existing_store: Callable[[], Store | None] = lambda: None) -> dict:
    """What the certificate file ``path`` holds; a ``path`` that is no file may name a
    certificate in the store (as 'kimpki list' shows it)."""
    source = Path(path)
    if not source.exists():
        source = _stored_certificate(path, existing_store) or source
    if not source.exists():
        raise UsageError(f"cannot read {path}: no such file, and no certificate of that name in the store "
                         f"(see 'kimpki list')")
    data = input_files.read_bytes(source, path)
    other = _revocation_data(data, str(source))
    if other is not None:
        return _inspect_revocation_data(source, other, ca_ref, open_store, now)
    certs = parse.load_certificates(data, str(source))
    out = {"file": str(source.resolve()), "kind": "certificates",
           "certificates": [parse.describe(c, now) for c in certs]}
    if ca_ref:
        roots, inter, label = _ca_certs(ca_ref, open_store)
        try:
            built = chain.build_path(certs[0], certs[1:] + inter, roots, now)
            out["chain"] = {"ok": True, "against": label,
                            "path": [c.subject.rfc4514_string() for c in built], "error": None}
        except OperationError as e:
            out["chain"] = {"ok": False, "against": label, "path": [], "error": str(e)}
    return out


def _revocation_data(data: bytes, source: str):
    """A CRL or an OCSP response in ``data`` (what a ``<CA>.crl`` file, a Secret's ``ca.crl`` or
    ``tls.ocsp-staple`` holds), or None: certificates, or nothing readable."""
    if b"-----BEGIN CERTIFICATE-----" in data:
        return None
    crl = revocation.load_crl(data, source)
    if crl is not None:
        return crl
    if b"-----BEGIN" not in data:
        return revocation.load_ocsp_response(data, source)
    return None


def _inspect_revocation_data(source: Path, obj, ca_ref: str | None, open_store: Callable[[], Store],
                             now: datetime) -> dict:
    """``inspect`` of a CRL or an OCSP response; with ``--ca``, whether that CA signed it."""
    if isinstance(obj, x509.CertificateRevocationList):
        out = {"file": str(source.resolve()), "kind": "crl", "certificates": [],
               "crl": revocation.describe_crl(obj, now)}
    else:
        out = {"file": str(source.resolve()), "kind": "ocsp_response", "certificates": [],
               "ocsp_response": revocation.describe_ocsp_response(obj, now)}
    if ca_ref:
        roots, inter, label = _ca_certs(ca_ref, open_store)
        signer = next((c for c in [*inter, *roots] if revocation.signed_by(obj, c)), None)
        what = "CRL" if out["kind"] == "crl" else "OCSP response"
        out["signature"] = {"ok": signer is not None, "against": label,
                            "signer": signer.subject.rfc4514_string() if signer is not None else None,
                            "error": None if signer is not None else f"the {what} is not signed by {label}"}
    return out


def inventory(store: Store, now: datetime, include_history: bool = False) -> list[dict]:
    from kimpki.store import revocations

    revoked = revocations.revoked_serials(store)
    rows = []
    for r in store.list_certs(include_history=include_history):
        rev = revoked.get((r.ca, r.serial))
        rows.append({
            "name": r.name,
            "kind": r.kind,
            "hosts": r.hosts,
            "serial": r.serial,
            "ca": r.ca,
            "not_after": parse.rfc3339(r.not_after),
            "days_left": int((r.not_after - now).total_seconds() // 86400),
            "renewal_due": parse.rfc3339(renewal_time(r.not_before, r.not_after)),
            "state": "revoked" if rev else lifecycle_state(r.not_before, r.not_after, now),
            "revoked": {"at": parse.rfc3339(rev.revoked_at), "reason": rev.reason} if rev else None,
            "version": r.state,
            "cert": str(r.cert_path),
            "key": str(r.key_path) if r.has_key else None,
            "deployed_to": r.deployed_to,
        })
    return rows
