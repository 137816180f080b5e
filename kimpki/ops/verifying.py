"""Verify use cases that need the store: is the served certificate the current one, and --all."""

from __future__ import annotations

from dataclasses import replace

from kimpki.ops import pairs as pairing
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


def current_for(store: Store | None, host: str, served_algorithm: str | None = None) -> CertRecord | None:
    """The store's current server certificate for ``host``. A host served by an RSA+ECDSA pair has
    two: the one of the served leaf's algorithm (``served_algorithm``, "ECDSA P-256") is compared."""
    if store is None:
        return None
    if served_algorithm:
        alg = served_algorithm.split()[0].lower()
        same = [r for r in store.list_certs() if r.kind == "server" and host in r.hosts
                and pairing.algorithm_of(r.key_type) == alg]
        if same:
            return same[-1]
    return store.current_for_host(host)


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
        if pairing.find_partner(store, rec) is not None:
            # Half of an RSA+ECDSA pair: a client offering only this algorithm is sent this certificate.
            target = replace(target, key_algorithm=pairing.algorithm_of(rec.key_type))
        out.append((target, rec))
    return out


def client_for(store: Store, server: CertRecord) -> CertRecord | None:
    """A current client certificate (with its key) from the CA that issued ``server``: the one
    --all presents when a gateway asks for a client certificate."""
    clients = [r for r in store.list_certs() if r.kind == "client" and r.has_key]
    same_ca = [r for r in clients if r.ca == server.ca]
    if same_ca:
        return same_ca[-1]
    try:
        root = server.ca_path.read_bytes()
    except OSError:
        return None
    same_root = [r for r in clients if r.ca_path.exists() and r.ca_path.read_bytes() == root]
    return same_root[-1] if same_root else None


def verify_all(store: Store, *, connect: str | None, http_path: str | None, timeout: float,
               max_workers: int = 32) -> list[Report]:
    """Check every current server certificate; a gateway that demands a client certificate
    (MUTUAL) is checked again as MUTUAL with a client certificate of the same CA from the store."""
    pairs = inventory_targets(store, connect=connect, http_path=http_path, timeout=timeout)
    reports = check_many([t for t, _ in pairs], max_workers=max_workers)
    retry: list[tuple[int, Target]] = []
    for i, (report, (target, rec)) in enumerate(zip(reports, pairs)):
        if report.reason is not Reason.CLIENT_CERTIFICATE_REFUSED:
            continue
        client = client_for(store, rec)
        if client is None:
            report.message = (f"{report.message}; no client certificate from CA {rec.ca} in the store to check "
                              f"it as MUTUAL: issue one with 'kimpki issue --client NAME --ca {rec.ca}'")
            continue
        retry.append((i, replace(make_target(target.host, connect=connect, ca_file=str(rec.ca_path),
                                             client_cert=str(client.cert_path), client_key=str(client.key_path),
                                             mode="mutual", http_path=http_path, timeout=timeout,
                                             ca_label=f"CA {rec.ca}", client_label=f"client {client.name}"),
                                 key_algorithm=target.key_algorithm)))
    if retry:
        for (i, _), report in zip(retry, check_many([t for _, t in retry], max_workers=max_workers)):
            reports[i] = report
    for report, (_, rec) in zip(reports, pairs):
        compare_with_store(report, rec)
    return reports
