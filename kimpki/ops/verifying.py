"""Verify use cases that need the store: is the served certificate the current one, and --all."""

from __future__ import annotations

from kimpki.store import CertRecord, Store
from kimpki.verify import Reason, Report, Target, check_many, make_target


def compare_with_store(report: Report, current: CertRecord | None) -> None:
    """Add a ``current`` check: catches "Secret updated, gateway still serving the old certificate"."""
    if current is None or report.leaf is None or not report.ok:
        return
    if report.leaf.serial == current.serial:
        report.passed("current", f"serving {current.name} serial {current.serial}, the store's current version")
    else:
        report.failed("current", Reason.NOT_CURRENT,
                      f"serving serial {report.leaf.serial}, but the store's current {current.name} is "
                      f"serial {current.serial} (not deployed yet, or the gateway has not reloaded)")


def current_for(store: Store | None, host: str) -> CertRecord | None:
    return store.current_for_host(host) if store is not None else None


def inventory_targets(store: Store, *, connect: str | None, http_path: str | None,
                      timeout: float) -> list[tuple[Target, CertRecord]]:
    """One SIMPLE check per current server certificate, named by its first non-wildcard DNS name."""
    out = []
    for rec in store.list_certs():
        if rec.kind != "server":
            continue
        host = next((h for h in rec.dns_names if not h.startswith("*.")), None) or \
            (rec.ip_addresses[0] if rec.ip_addresses else None)
        if host is None:
            continue
        target = make_target(host, connect=connect, ca_file=str(rec.ca_path), client_cert=None, client_key=None,
                             mode="simple", http_path=http_path, timeout=timeout, ca_label=f"CA {rec.ca}",
                             client_label=None)
        out.append((target, rec))
    return out


def verify_all(store: Store, *, connect: str | None, http_path: str | None, timeout: float,
               max_workers: int = 32) -> list[Report]:
    pairs = inventory_targets(store, connect=connect, http_path=http_path, timeout=timeout)
    reports = check_many([t for t, _ in pairs], max_workers=max_workers)
    for report, (_, rec) in zip(reports, pairs):
        compare_with_store(report, rec)
    return reports
