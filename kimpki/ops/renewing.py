"""Renewal: find the managed credentials that are due, and rotate each of them.

``kimpki renew`` is "rotate whatever is due" over one or more places (a cluster namespace, every
namespace, a folder of manifests, or the targets a policy names):

1. **Read** (:func:`survey`): list the Secrets labelled ``app.kubernetes.io/managed-by=kimpki``
   (paginated in a cluster: one request per 500). CA-only Secrets (``kimpki.io/role: ca``) are
   skipped: they are rewritten with their credential. For every credential Secret the decision
   comes from the certificate it *serves* (its notBefore/notAfter), not from the store: what the
   gateway presents is what expires. The rule is cert-manager's (the last third of the lifetime)
   unless ``--renew-before`` or a policy's ``renewBefore`` says otherwise; ``--jitter`` moves it
   earlier by a fixed, per-serial amount (:mod:`kimpki.pki.renewal`). A Secret whose
   annotations or certificate cannot be read is *broken*: it counts as failed, with the reason,
   and the sweep goes on.
2. **Lock** (:func:`renew`; not for a dry run, which writes nothing and must never make a real
   run skip): the home's file lock, and a Lease in each cluster swept
   (:mod:`kimpki.ops.locking`). A run that finds the lock held does nothing and says who holds
   it. The listing happens *after* the lock is taken, so a run that waited sees what the
   previous one renewed.
3. **Rotate** the due credentials through the steps of :mod:`kimpki.ops.rotation`, a batch at a
   time (:func:`_renew_due`): their new pending versions in one store batch (one commit, one
   file-system sync), their Secrets written side by side (bounded), the Secrets already read
   (no second GET), while the next batch is issued, then one store batch to promote them. A
   failure is recorded and the others
   go on; a credential whose write failed keeps its pending certificate, which the next run reuses.
   A Secret that already serves its pending version (a run killed after the write, before the
   promotion) is *finished* first (:func:`_finish_landed`): that version is promoted, nothing is
   written, and only then is due-ness decided (from the Secret, as always).
   A credential whose policy gives it maintenance windows is rotated only inside one: outside,
   it is *deferred* to the next window's opening, unless that opens too late (the certificate
   would expire, or come within the safety margin of notAfter, first; or has expired): then it is
   renewed now and the reason said (:func:`kimpki.pki.windows.window_decision`).

:func:`survey` alone is ``kimpki status`` over places; :func:`inventory_status` is ``kimpki
status`` over the store.
"""

from __future__ import annotations

import contextlib
import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from kimpki.errors import KimpkiError
from kimpki.istio import contract as c
from kimpki.istio.credential import ANN_CREDENTIAL, ANN_ROLE, ROLE_CA, ROLE_CA_ONLY
from kimpki.ops.authority import PassphraseSource
from kimpki.pki import parse
from kimpki.pki.renewal import Jitter, RenewBefore, renewal_time
from kimpki.pki.windows import DEFER, OVERRIDE, MaintenanceWindow, WindowDecision, window_decision
from kimpki.store import Store

if TYPE_CHECKING:  # imported where used: 'kimpki status' over the store needs neither (nor yaml)
    from kimpki.ops.credentials import ManagedCredential
    from kimpki.ops.places import SecretPlace

# States of a credential (``kimpki status``); due and expired ones are renewed.
VALID, DUE, EXPIRED, NOT_YET_VALID, BROKEN = "valid", "due", "expired", "not-yet-valid", "broken"
RENEWABLE = (DUE, EXPIRED)

# What renew did with a credential.
NOT_DUE, RENEWED, RESUMED, WOULD_RENEW, FAILED, SKIPPED, DEFERRED = (
    "not due", "renewed", "resumed", "would renew", "failed", "skipped", "deferred")
# Its Secret already served the store's pending version (a killed run wrote it, never promoted
# it): promoted now, nothing written, and not due (it serves a new certificate).
FINISHED = "finished"
# The same seen by a dry run, which only reads: the next real run promotes it.
WOULD_FINISH = "would finish"


@dataclass(frozen=True)
class RenewalSettings:
    """The renewal rule for credentials no policy speaks for, and the jitter for all."""

    renew_before: RenewBefore = field(default_factory=lambda: RenewBefore.parse(None))
    jitter: Jitter | None = None


@dataclass
class SweepTarget:
    """One place to sweep. ``namespace`` None: every namespace the place holds. ``renew_before``
    and ``windows`` (maintenance windows): per-credential rules from a policy, keyed by
    (namespace, Secret name)."""

    place: SecretPlace
    namespace: str | None = None
    renew_before: dict[tuple[str, str], RenewBefore] = field(default_factory=dict)
    windows: dict[tuple[str, str], tuple[MaintenanceWindow, ...]] = field(default_factory=dict)

    @property
    def description(self) -> str:
        where = self.place.description
        if self.namespace and where.startswith("cluster"):
            return f"namespace {self.namespace} of {where}"
        return where


@dataclass
class CredentialResult:
    """One managed Secret: what it serves, when it renews, and (for renew) what was done."""

    place: str
    secret: str
    namespace: str
    state: str  # valid | due | expired | not-yet-valid | broken | ca-bundle (skipped)
    hosts: list[str] = field(default_factory=list)
    certificate: str | None = None  # the store name
    ca: str | None = None
    serial: str | None = None
    not_before: datetime | None = None
    not_after: datetime | None = None
    renewal_time: datetime | None = None
    renew_before: str | None = None
    windows: tuple[MaintenanceWindow, ...] = ()  # the policy's maintenance windows; () = any time
    window: WindowDecision | None = None  # due (or expired) with windows: renew now, defer or override
    action: str | None = None  # renew only: not due | renewed | resumed | would renew | deferred | failed | skipped
    #                                         | finished
    finished: str | None = None  # renew: the pending serial its Secret served, promoted by this run
    reason: str | None = None
    new_serial: str | None = None
    new_not_after: str | None = None
    renew_before_fallback: bool = False  # renew_before >= the lifetime: the last third applies instead
    ocsp_staple_next_update: datetime | None = None  # the nextUpdate of the OCSP staple it carries
    cred: ManagedCredential | None = field(default=None, repr=False)
    target: SweepTarget | None = field(default=None, repr=False)
    source: dict | None = field(default=None, repr=False)  # the Secret as read

    @property
    def due(self) -> bool:
        return self.state in RENEWABLE

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.secret}"

    @property
    def next_window(self) -> datetime | None:
        """When the next maintenance window opens, for a due credential outside its windows."""
        return self.window.next_window if self.window is not None else None

    @property
    def deferred(self) -> bool:
        """Due, but waiting for its next maintenance window."""
        return self.window is not None and self.window.action == DEFER

    @property
    def window_override(self) -> str | None:
        """Why it is renewed now although outside its maintenance windows."""
        return self.window.reason if self.window is not None and self.window.action == OVERRIDE else None

    def to_dict(self, now: datetime) -> dict:
        days = int((self.not_after - now).total_seconds() // 86400) if self.not_after else None
        out = {
            "secret": self.secret,
            "namespace": self.namespace,
            "place": self.place,
            "certificate": self.certificate,
            "hosts": self.hosts,
            "ca": self.ca,
            "serial": self.serial,
            "not_before": _t(self.not_before),
            "not_after": _t(self.not_after),
            "days_left": days,
            "renewal_time": _t(self.renewal_time),
            "renew_before": self.renew_before,
            "renew_before_fallback": self.renew_before_fallback,
            "maintenance_windows": [w.describe() for w in self.windows],
            # Due (or expired) with windows: renew (inside one), defer (to next_window) or override.
            "window_decision": self.window.action if self.window is not None else None,
            "next_window": _t(self.next_window),
            "window_reason": self.window.reason if self.window is not None else None,
            "ocsp_staple_next_update": _t(self.ocsp_staple_next_update),
            "state": self.state,
        }
        if self.action is not None:
            out.update(action=self.action, reason=self.reason, new_serial=self.new_serial,
                       new_not_after=self.new_not_after)
        else:
            out["reason"] = self.reason
        return out


def _t(t: datetime | None) -> str | None:
    return parse.rfc3339(t) if t is not None else None


def fallback_warnings(found: Iterable[tuple[str, str, timedelta]]) -> list[str]:
    """One line per renew-before that is not shorter than some certificates' lifetimes
    (``(ref, rule, lifetime)`` each), said once per run instead of silently applying the third."""
    by_rule: dict[str, list[tuple[str, timedelta]]] = {}
    for ref, rule, lifetime in found:
        by_rule.setdefault(rule, []).append((ref, lifetime))
    out = []
    for rule, items in by_rule.items():
        ref, lifetime = items[0]
        more = f" and {len(items) - 1} more" if len(items) > 1 else ""
        out.append(f"renew-before {rule} is not shorter than the lifetime of {ref} "
                   f"({lifetime / timedelta(days=1):.1f} days){more}: renewal starts in the last third of "
                   f"the lifetime instead (cert-manager's rule)")
    return out


def result_warnings(results: Iterable[CredentialResult]) -> list[str]:
    return fallback_warnings((r.ref, r.renew_before, r.not_after - r.not_before)
                             for r in results if r.renew_before_fallback)


@dataclass
class RenewalSummary:
    """The outcome of a sweep (``renew --json``)."""

    now: datetime
    dry_run: bool
    places: list[str]
    results: list[CredentialResult] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)  # places that could not be read: {place, reason}
    lock: dict | None = None
    requests: int = 0
    crls_loaded: list[str] = field(default_factory=list)  # CAs whose state came from the cluster
    crls_signed: list[str] = field(default_factory=list)  # CAs whose CRL was due and re-signed
    crls_republished: list[dict] = field(default_factory=list)  # credentials given newer CRLs
    staples_refreshed: list[dict] = field(default_factory=list)  # credentials given a new OCSP staple

    def _count(self, *actions: str) -> int:
        return sum(1 for r in self.results if r.action in actions)

    @property
    def checked(self) -> int:
        return len(self.results)

    @property
    def due(self) -> int:
        return sum(1 for r in self.results if r.due)

    @property
    def renewed(self) -> int:
        return self._count(RENEWED, RESUMED)

    @property
    def would_renew(self) -> int:
        return self._count(WOULD_RENEW)

    @property
    def failed(self) -> int:
        return self._count(FAILED)

    @property
    def skipped(self) -> int:
        return self._count(SKIPPED)

    @property
    def deferred(self) -> int:
        return self._count(DEFERRED)

    @property
    def finished(self) -> list[CredentialResult]:
        """Credentials whose Secret served a pending version an earlier run wrote: promoted."""
        return [r for r in self.results if r.finished is not None and r.action != WOULD_FINISH]

    @property
    def would_finish(self) -> int:
        """A dry run's count of those: the next real run promotes them."""
        return self._count(WOULD_FINISH)

    @property
    def next_window(self) -> CredentialResult | None:
        """The deferred credential whose maintenance window opens first."""
        return min((r for r in self.results if r.action == DEFERRED), key=lambda r: r.next_window, default=None)

    @property
    def busy(self) -> bool:
        """Another run held the lock: nothing was read or done."""
        return self.lock is not None and not self.lock.get("acquired", True)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and not self.errors

    @property
    def warnings(self) -> list[str]:
        return result_warnings(self.results)

    @property
    def next_due(self) -> CredentialResult | None:
        """The credential (not due now) that falls due first."""
        waiting = [r for r in self.results if r.state in (VALID, NOT_YET_VALID) and r.renewal_time is not None]
        return min(waiting, key=lambda r: r.renewal_time, default=None)

    def to_dict(self) -> dict:
        nxt = self.next_due
        return {
            "dry_run": self.dry_run,
            "time": _t(self.now),
            "places": self.places,
            "lock": self.lock,
            "checked": self.checked,
            "due": self.due,
            "renewed": self.renewed,
            "would_renew": self.would_renew,
            "failed": self.failed,
            "skipped": self.skipped,
            "deferred": self.deferred,
            "finished": len(self.finished),
            "would_finish": self.would_finish,
            "next_due": ({"time": _t(nxt.renewal_time), "secret": nxt.secret, "namespace": nxt.namespace,
                          "place": nxt.place} if nxt else None),
            "errors": self.errors,
            "crls_loaded": self.crls_loaded,
            "crls_signed": self.crls_signed,
            "crls_republished": self.crls_republished,
            "staples_refreshed": self.staples_refreshed,
            "warnings": self.warnings,
            "api_requests": self.requests,
            "results": [r.to_dict(self.now) for r in self.results],
        }


# ------------------------------------------------------------------------------------- places
def open_targets(stack: contextlib.ExitStack, *, manifests: Iterable[str] = (), policy: Iterable[str] = (),
                 namespace: str | None = None, all_namespaces: bool = False, cluster: bool = False,
                 kubeconfig: str | None = None, context: str | None = None,
                 client: dict | None = None) -> list[SweepTarget]:
    """The places ``renew``/``status`` sweep, opened (and closed with ``stack``):

    * each ``--manifests DIR`` (only Secrets of ``namespace`` when given);
    * the targets the ``--policy`` files give their Credentials (:func:`policy_targets`);
    * the cluster (``--kubeconfig``/``--context``) when ``cluster`` is true: namespace
      ``namespace`` (default istio-system), or every namespace with ``all_namespaces``.

    ``client``: settings for every cluster connection (``qps``, ``burst``, ``notice``; see
    :meth:`kimpki.kube.Cluster.connect`).
    """
    from kimpki.ops.places import ClusterPlace, ManifestsPlace

    client = client or {}
    targets: list[SweepTarget] = []
    if policy:
        targets += policy_targets(stack, list(policy), kubeconfig=kubeconfig, context=context, client=client)
    for folder in manifests:
        targets.append(SweepTarget(stack.enter_context(ManifestsPlace(folder)),
                                   None if all_namespaces else namespace))
    if cluster:
        place = stack.enter_context(ClusterPlace.connect(kubeconfig=kubeconfig, context=context, **client))
        targets.append(SweepTarget(place, None if all_namespaces else (namespace or c.DEFAULT_NAMESPACE)))
    return targets


def policy_targets(stack: contextlib.ExitStack, paths: list[str], *, kubeconfig: str | None = None,
                   context: str | None = None, client: dict | None = None) -> list[SweepTarget]:
    """Where a policy's Credentials live (each Target once: a manifests folder, or the namespaces
    of its Credentials in a cluster), with each Certificate's ``renewBefore`` for the Secrets
    built from it. ``kubeconfig``/``context`` are the defaults for cluster targets that name none."""
    from kimpki.ops.places import ClusterPlace, ManifestsPlace
    from kimpki.policy.load import load_policy

    pol = load_policy(paths)
    places: dict[tuple, SecretPlace] = {}
    by_key: dict[tuple, SweepTarget] = {}
    for cred in pol.credentials:
        t = cred.target
        cert = pol.certificate(cred.certificate)
        if t.manifests is not None:
            pkey: tuple = ("manifests", str(t.manifests))
            if pkey not in places:
                places[pkey] = stack.enter_context(ManifestsPlace(t.manifests))
            tkey, ns = pkey, None  # a folder is read whole: its Secrets may carry no namespace
        else:
            pkey = ("cluster", t.kubeconfig or kubeconfig, t.context or context)
            if pkey not in places:
                places[pkey] = stack.enter_context(ClusterPlace.connect(kubeconfig=pkey[1], context=pkey[2],
                                                                        **(client or {})))
            tkey, ns = pkey + (cred.namespace,), cred.namespace
        target = by_key.setdefault(tkey, SweepTarget(places[pkey], ns))
        if cert is not None and cert.renew_before_text is not None:
            target.renew_before[(cred.namespace, cred.name)] = cert.renew_before
        if cred.maintenance_windows:
            target.windows[(cred.namespace, cred.name)] = cred.maintenance_windows
    return list(by_key.values())


# ------------------------------------------------------------------------------------- reading
def _meta(obj: dict) -> dict:
    m = obj.get("metadata")
    return m if isinstance(m, dict) else {}


def _ca_bundle_owner(secret: dict) -> str | None:
    """The credential a CA-only Secret belongs to (None when it is not one)."""
    ann = _meta(secret).get("annotations") or {}
    if ann.get(ANN_ROLE) == ROLE_CA_ONLY:  # caCertCredentialName: 'kimpki ca rotate' rewrites it
        return f"CA {ann.get(c.ANNOTATION_PREFIX + 'ca') or '?'} (caCertCredentialName)"
    if ann.get(ANN_ROLE) != ROLE_CA:
        return None
    return ann.get(ANN_CREDENTIAL) or "its credential"


def _state(not_before: datetime, not_after: datetime, renew_at: datetime, now: datetime) -> str:
    """lifecycle_state's answer, from a renewal time already computed (no second computation)."""
    if now > not_after:
        return EXPIRED
    if now < not_before:
        return NOT_YET_VALID
    return DUE if now >= renew_at else VALID


@functools.lru_cache(maxsize=64)
def _describe(rule: RenewBefore) -> str:
    return rule.describe()  # once per rule, not once per Secret


def _examine(secret: dict, target: SweepTarget, settings: RenewalSettings, now: datetime) -> CredentialResult:
    from kimpki.ops.credentials import managed_credential
    meta = _meta(secret)
    name = str(meta.get("name") or "?")
    namespace = meta.get("namespace") or target.namespace or c.DEFAULT_NAMESPACE
    where = target.place.description
    owner = _ca_bundle_owner(secret)
    if owner is not None:
        return CredentialResult(where, name, namespace, "ca-bundle", action=SKIPPED, source=secret,
                                reason=f"holds only the CA bundle of {owner}, rewritten when {owner} is renewed")
    try:
        cred = managed_credential(secret, default_namespace=namespace)
    except KimpkiError as e:
        return CredentialResult(where, name, namespace, BROKEN, reason=str(e), source=secret)
    rule = target.renew_before.get((cred.namespace, cred.name), settings.renew_before)
    res = CredentialResult(where, cred.name, cred.namespace, BROKEN, hosts=list(cred.hosts),
                           certificate=cred.store_name, ca=cred.ca, renew_before=_describe(rule),
                           windows=target.windows.get((cred.namespace, cred.name), ()), cred=cred, target=target,
                           source=secret)
    served = cred.served
    if served is None:
        res.reason = (f"Secret {cred.namespace}/{cred.name} serves no readable certificate; "
                      f"re-issue it with 'kimpki rotate {cred.name}'")
        return res
    res.serial = parse.serial_hex(served)
    res.ocsp_staple_next_update = _staple_next_update(secret)
    res.not_before, res.not_after = served.not_valid_before_utc, served.not_valid_after_utc
    res.renewal_time = renewal_time(res.not_before, res.not_after, rule, jitter=settings.jitter, key=res.serial)
    res.renew_before_fallback = rule.falls_back(res.not_after - res.not_before)
    res.state = _state(res.not_before, res.not_after, res.renewal_time, now)
    if res.windows and res.state in RENEWABLE:
        res.window = window_decision(res.windows, now, res.not_before, res.not_after)
    return res


def _staple_next_update(secret: dict) -> datetime | None:
    from kimpki.ops.stapling import secret_staple
    from kimpki.pki.revocation import read_ocsp_staple

    der = secret_staple(secret)
    info = read_ocsp_staple(der) if der else None
    return info.next_update if info is not None else None


def survey(targets: Iterable[SweepTarget], settings: RenewalSettings, now: datetime,
           errors: list[dict] | None = None) -> list[CredentialResult]:
    """Every managed Secret of ``targets`` with its state. A place that cannot be read is
    reported in ``errors`` (``{place, reason}``) when given, else raised."""
    out: list[CredentialResult] = []
    for target in targets:
        found: list[CredentialResult] = []
        ca_bundles: set[tuple[str, str]] = set()  # (namespace, credential) with a NAME-cacert Secret
        try:
            for secret in target.place.managed(target.namespace):
                r = _examine(secret, target, settings, now)
                found.append(r)
                if r.state == "ca-bundle" and r.secret.endswith(c.CACERT_SECRET_SUFFIX):
                    owner = _ca_bundle_owner(secret)
                    if owner == r.secret[: -len(c.CACERT_SECRET_SUFFIX)]:
                        ca_bundles.add((r.namespace, owner))
        except KimpkiError as e:
            if errors is None:
                raise
            errors.append({"place": target.description, "reason": str(e)})
            continue
        from kimpki.ops.credentials import managed_credential

        for r in found:
            cred = r.cred
            # Istio reads a MUTUAL credential's CA from NAME-cacert when that exists: keep writing it
            # there (what rotation's read_managed finds with a GET; here the listing already says).
            if (cred is not None and cred.spec.mutual and not cred.spec.file_mounted
                    and (cred.namespace, cred.name) in ca_bundles):
                r.cred = managed_credential(cred.secret, default_namespace=cred.namespace, ca_secret=True)
        out.extend(found)
    return out


# ------------------------------------------------------------------------------------- renewing
ResultHook = Callable[[CredentialResult], None]


def _cached(passphrase: PassphraseSource) -> PassphraseSource:
    """Ask for each CA's passphrase once per run, not once per certificate."""
    seen: dict[str, bytes | None] = {}

    def source(ca_name: str) -> bytes | None:
        if ca_name not in seen:
            seen[ca_name] = passphrase(ca_name)
        return seen[ca_name]

    return source


@contextlib.contextmanager
def _locks(store: Store, targets: list[SweepTarget], wait: float) -> Iterator[object]:
    """The home's renewal lock plus a Lease in every cluster swept (see kimpki.ops.locking)."""
    from kimpki.ops.locking import renewal_lock

    clusters: dict[int, tuple[object, str]] = {}
    for t in targets:
        cluster = getattr(t.place, "cluster", None)
        if cluster is not None and id(cluster) not in clusters:
            clusters[id(cluster)] = (cluster, t.namespace or c.DEFAULT_NAMESPACE)
    pairs = list(clusters.values()) or [(None, c.DEFAULT_NAMESPACE)]
    with contextlib.ExitStack() as stack:
        held = []
        for i, (cluster, ns) in enumerate(pairs):
            # The home's file lock once (with the first cluster's Lease), then one Lease per cluster.
            lk = stack.enter_context(renewal_lock(home=store.home if i == 0 else None, cluster=cluster,
                                                  namespace=ns, wait=wait))
            held.append(lk)
            if not lk.acquired:
                break
        yield _AllLocks(held)


class _AllLocks:
    """Several renewal locks seen as one (a policy may target more than one cluster)."""

    def __init__(self, locks: list):
        self.locks = locks

    @property
    def acquired(self) -> bool:
        return all(lk.acquired for lk in self.locks)

    @property
    def _blocking(self):
        return next((lk for lk in self.locks if not lk.acquired), self.locks[0])

    @property
    def busy_message(self) -> str:
        return self._blocking.busy_message

    def check(self) -> None:
        for lk in self.locks:
            lk.check()

    def to_dict(self) -> dict:
        out = self._blocking.to_dict()
        out["locks"] = [w for lk in self.locks for w in lk.locks]
        out["release_errors"] = [e for lk in self.locks for e in lk.release_errors]
        out["busy_message"] = None if self.acquired else self.busy_message
        return out


# Due credentials go through rotation's steps a batch at a time: one store batch for their pending
# versions (one lock, one commit, one file-system sync, instead of ~9 fsyncs per credential), then
# their Secret writes side by side (as many as the place allows: 8 PUTs for a cluster), then one
# store batch to promote them. While a batch's Secrets are being written, the next batch is issued
# (the writes need no store; the API server works while kimpki signs).
BATCH = 100


@dataclass
class _Batch:
    """One batch between its issuance and its promotion: its rotations and their Secret writes."""

    results: list[CredentialResult]
    rots: dict = field(default_factory=dict)  # index in results -> rotation.Rotation
    writes: dict = field(default_factory=dict)  # index -> the write's future
    pool: ThreadPoolExecutor | None = None


def _issue_batch(store: Store, batch: list[CredentialResult], *, now: datetime,
                 passphrase: PassphraseSource, dry_run: bool) -> _Batch:
    """Steps 1-2 of rotation for ``batch`` and the Secrets to write (see :mod:`kimpki.ops.rotation`
    for why a failure at any step, a kill included, loses nothing: a Secret is written only after
    its new key and certificate are committed to the store as pending, and promoted only after
    the write)."""
    from kimpki.ops import rotation

    b = _Batch(batch)
    rots = b.rots
    try:
        # One store batch for the three steps (issue_pending's joins it): what is the same for
        # every credential of the batch (CA records, the loaded issuer, parsed CA certificates,
        # trust bundles; Store.memo) is read once, not once per credential. Its commit makes the
        # new versions pending; the Secrets are written after it (_start_writes).
        with store.batch() if not dry_run else contextlib.nullcontext():
            for i, r in enumerate(batch):
                try:
                    rots[i] = rotation.plan_rotation(store, r.target.place, r.cred, now=now, dry_run=dry_run)
                except Exception as e:  # noqa: BLE001 - one credential's surprise must not stop the others
                    _fail(r, e)
            if dry_run:
                return b
            rotation.issue_pending(store, list(rots.values()), now=now, passphrase=passphrase)
            for i, rot in list(rots.items()):
                if rot.failure is not None:
                    _fail(batch[i], rot.failure)
                    del rots[i]
            for i, rot in list(rots.items()):
                try:
                    # The store's connection is this thread's.
                    rotation.prepare_rotation(store, rot, now=now, passphrase=passphrase)
                except Exception as e:  # noqa: BLE001
                    _fail(batch[i], e)
                    del rots[i]
    except Exception as e:  # noqa: BLE001 - the batch could not be committed: none of it is pending
        for i in list(rots):
            _fail(batch[i], e)
            del rots[i]
    return b


def _start_writes(b: _Batch, lock) -> None:
    """Step 3: the batch's Secret writes, side by side, in threads of their own (no store access)."""
    from kimpki.ops import rotation

    if not b.rots:
        return

    def write(i: int) -> None:
        _lock_check(lock)
        rotation.publish_rotation(b.rots[i])

    writers = min([r.target.place.parallel_writes for r in b.results] + [len(b.rots)])
    b.pool = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="kimpki-renew")
    b.writes = {i: b.pool.submit(write, i) for i in b.rots}


def _finish_batch(store: Store, b: _Batch, *, dry_run: bool) -> None:
    """Wait for the batch's writes, then step 4: promote what was written, in one store batch."""
    from kimpki.ops import rotation

    if dry_run:
        for i, rot in b.rots.items():
            _done(b.results[i], rot.result)
        return
    published = []
    try:
        for i, fut in b.writes.items():
            try:
                fut.result()
            except Exception as e:  # noqa: BLE001 - the Secret is untouched (or either version): pending stays
                _fail(b.results[i], e)
                continue
            published.append(i)
    finally:
        if b.pool is not None:
            b.pool.shutdown(wait=True)
    try:
        rotation.promote(store, [b.rots[i] for i in published])
    except Exception as e:  # noqa: BLE001 - written but not promoted: the next run promotes them (_finish_landed)
        for i in published:
            _fail(b.results[i], e)
        return
    for i in published:
        if b.rots[i].failure is not None:
            _fail(b.results[i], b.rots[i].failure)
        else:
            _done(b.results[i], b.rots[i].result)


def _lock_check(lock) -> None:
    if lock is not None:
        lock.check()  # LockLost: another run may be renewing now, so stop writing


def _fail(r: CredentialResult, e: Exception) -> None:
    r.action = FAILED
    r.reason = str(e) if isinstance(e, KimpkiError) else f"unexpected {type(e).__name__}: {e}"


def _done(r: CredentialResult, rot) -> None:
    r.action = {"rotated": RENEWED, "resumed": RESUMED}.get(rot.action, WOULD_RENEW)
    r.new_serial, r.new_not_after = rot.new_serial, rot.new_not_after
    if rot.warnings:
        r.reason = "; ".join(rot.warnings)


def renew(store: Store, targets: list[SweepTarget], *, now: datetime, passphrase: PassphraseSource,
          settings: RenewalSettings | None = None, dry_run: bool = False, lock_wait: float = 5.0,
          on_result: ResultHook | None = None) -> RenewalSummary:
    """Sweep ``targets`` and rotate every due credential (see the module doc). ``on_result`` is
    called as each credential that needed an action is done (renewed, failed, would renew,
    deferred), for logs that show progress."""
    settings = settings or RenewalSettings()
    summary = RenewalSummary(now=now, dry_run=dry_run, places=[t.description for t in targets])
    passphrase = _cached(passphrase)
    with contextlib.ExitStack() as stack:
        lock = None if dry_run else stack.enter_context(_locks(store, targets, lock_wait))
        if lock is None or lock.acquired:
            if not dry_run:
                _refresh_crls(store, summary, targets, now=now, passphrase=passphrase)
            summary.results = survey(targets, settings, now, summary.errors)
            if not dry_run:  # before anything reads the store's current version of these
                _finish_landed(store, summary.results, summary.errors)
            else:
                _landed_unfinished(store, summary.results, summary.errors)
            _refresh_staples(store, summary, now=now, passphrase=passphrase, dry_run=dry_run)
            pairs_in_step(summary.results)
            _renew_due(store, summary.results, lock, now=now, passphrase=passphrase, dry_run=dry_run,
                       on_result=on_result)
    if lock is not None:
        summary.lock = lock.to_dict()  # after the release, which may have failed (the lease then expires)
    summary.requests = sum(p.requests for p in _unique_places(targets))
    return summary


def _finish_landed(store: Store, results: list[CredentialResult], errors: list[dict]) -> None:
    """A Secret that serves its certificate's *pending* version was written by a run killed (or
    failed) before promoting it: promote it now, the step rotation would have taken, so that the
    store's current version is what is served (and ``gc`` never takes it). Nothing is written to
    the place; the decision that follows reads the Secret as before."""
    from kimpki.ops import rotation

    found = [r for r in results if r.cred is not None and r.state != BROKEN and r.action != SKIPPED]
    try:
        rots = rotation.finish_landed(store, [(r.target.place, r.cred) for r in found])
    except KimpkiError as e:  # the store could not be read: the renewals go on, said once
        errors.append({"place": "store", "reason": f"pending versions already served not promoted: {e}"})
        return
    by_cred = {id(r.cred): r for r in found}
    for rot in rots:
        r = by_cred[id(rot.cred)]
        if rot.failure is not None:
            _fail(r, rot.failure)
        else:
            r.finished = rot.pending.serial


def _landed(store: Store, results: list[CredentialResult]):
    """``(result, pending version)`` for each credential whose Secret serves its certificate's
    *pending* version (a run killed after the write, before the promotion). Only reads."""
    from kimpki.ops import rotation

    for r in results:
        if r.cred is not None and r.state != BROKEN and r.action != SKIPPED:
            rec = rotation.landed_pending(store, r.cred)
            if rec is not None:
                yield r, rec


def _landed_unfinished(store: Store, results: list[CredentialResult], errors: list[dict]) -> None:
    """:func:`_finish_landed` for a dry run: finds the same credentials and promotes nothing."""
    try:
        for r, rec in _landed(store, results):
            r.finished = rec.serial
    except KimpkiError as e:
        errors.append({"place": "store", "reason": f"pending versions already served not found: {e}"})


def unfinished(store: Store | None, results: list[CredentialResult]) -> list[dict]:
    """``kimpki status``: the credentials whose Secret serves the store's *pending* version, each
    given that as its reason. Status only reads: the next ``kimpki renew`` promotes them
    (:func:`_finish_landed`)."""
    if store is None:
        return []
    out = []
    for r, rec in _landed(store, results):
        r.reason = (f"serves serial {rec.serial}, still pending in the store (a run stopped before promoting it): "
                    f"the next 'kimpki renew' promotes it")
        out.append({"secret": r.secret, "namespace": r.namespace, "place": r.place, "serial": rec.serial,
                    "certificate": rec.name})
    return out


def pairs_in_step(results: list[CredentialResult]) -> None:
    """The two halves of an RSA+ECDSA pair (``kimpki.io/pair``) are renewed together: when one is
    due, a valid other half is made due with it, so one server never serves certificates of two
    generations (they were issued together, and stay so)."""
    by_ref = {(r.place, r.namespace, r.secret): r for r in results}
    for r in results:
        pair = r.cred.spec.pair if r.cred is not None else None
        other = by_ref.get((r.place, r.namespace, pair)) if pair else None
        if other is not None and r.due and other.state == VALID:
            other.state = DUE
            other.reason = f"renewed with {r.secret}, the other half of its RSA+ECDSA pair"


def _refresh_crls(store: Store, summary: RenewalSummary, targets: list[SweepTarget], *, now: datetime,
                  passphrase: PassphraseSource) -> None:
    """CRLs expire too (Envoy then refuses every client of their CA): re-sign those due, and give
    every MUTUAL credential whose client trust uses revocation the store's current set, before
    the credentials are surveyed (what a rotation then writes is guarded by that fresh read)."""
    from kimpki.ops import revoking
    from kimpki.ops.cluster_revocations import for_places

    # A home that lives for one run (the CronJob's) gets the revocation state from the cluster.
    mirror = for_places([(t.place, t.namespace) for t in targets])
    try:
        summary.crls_loaded = mirror.sync(store)
    except KimpkiError as e:
        summary.errors.append({"place": "cluster revocation state", "reason": f"not read: {e}"})
        return
    if not revoking.uses_revocation(store):
        return
    try:
        summary.crls_signed = [c.ca for c in revoking.refresh_due_crls(store, now=now, passphrase=passphrase,
                                                                      mirror=mirror or None)]
    except KimpkiError as e:
        summary.errors.append({"place": "store", "reason": f"CRLs not re-signed: {e}"})
    for t in targets:
        try:
            summary.crls_republished += [{**r, "place": t.description} for r in revoking.republish_crls(
                store, t.place, None, now=now, namespace=t.namespace) if r["action"] != "unchanged"]
        except KimpkiError as e:
            summary.errors.append({"place": t.description, "reason": f"CRLs not republished: {e}"})


def _refresh_staples(store: Store, summary: RenewalSummary, *, now: datetime, passphrase: PassphraseSource,
                     dry_run: bool) -> None:
    """OCSP staples expire in days, long before their certificates: re-sign each staple inside
    the last half of its validity (or that no longer says what the store says: another serial,
    or revoked since), writing only that key. A credential about to be rotated is left to its
    rotation, which writes a staple for the new certificate (a deferred one is not rotated now)."""
    from kimpki.ops.stapling import refresh_staple

    for r in summary.results:
        if r.cred is None or not r.cred.spec.ocsp_staple or r.state == BROKEN or (r.due and not r.deferred):
            continue
        try:
            item = refresh_staple(store, r.target.place, r.source, now=now, passphrase=passphrase, dry_run=dry_run)
        except KimpkiError as e:
            summary.errors.append({"place": r.place, "reason": f"OCSP staple of {r.ref} not refreshed: {e}"})
            continue
        if item is not None:
            summary.staples_refreshed.append({**item, "place": r.place})


def _renew_due(store: Store, results: list[CredentialResult], lock, *, now: datetime,
               passphrase: PassphraseSource, dry_run: bool, on_result: ResultHook | None) -> None:
    """Rotate the due credentials, a batch at a time (see :func:`_issue_batch`): a batch is issued
    while the previous one's Secrets are being written, then that one is promoted. ``on_result``
    still sees every credential in the listing's order."""
    lost = None  # why the lock was lost, once it was: every later renewal stops
    writing: tuple[list[CredentialResult], _Batch | None] | None = None  # the batch being written

    def finish(item: tuple[list[CredentialResult], _Batch | None] | None) -> None:
        if item is None:
            return
        chunk, b = item
        if b is not None:
            _finish_batch(store, b, dry_run=dry_run)
        if on_result is not None:
            for r in chunk:
                if r.action not in (None, SKIPPED, NOT_DUE):
                    on_result(r)

    try:
        for start in range(0, len(results), BATCH):
            chunk = results[start:start + BATCH]
            due = []
            for r in chunk:
                if r.action in (SKIPPED, FAILED):  # FAILED: its finishing promotion failed
                    continue
                if r.state == BROKEN:
                    r.action = FAILED
                elif not r.due:
                    r.action = NOT_DUE if r.finished is None else WOULD_FINISH if dry_run else FINISHED
                elif r.deferred:  # outside its maintenance windows, and the next one opens in time
                    r.action, r.reason = DEFERRED, r.window.reason
                else:
                    due.append(r)
            if due and lost is None:
                try:
                    _lock_check(lock)
                except KimpkiError as e:
                    lost = str(e)
            b = None
            if lost is not None:
                for r in due:
                    r.action, r.reason = FAILED, lost
            elif due:
                b = _issue_batch(store, due, now=now, passphrase=passphrase, dry_run=dry_run)
            previous, writing = writing, None
            finish(previous)  # the previous batch: its writes went on while this one was issued
            if b is not None and not dry_run:
                _start_writes(b, lock)
            writing = (chunk, b)
    finally:
        previous, writing = writing, None
        finish(previous)


def _unique_places(targets: list[SweepTarget]) -> list[SecretPlace]:
    seen: dict[int, SecretPlace] = {}
    for t in targets:
        seen.setdefault(id(t.place), t.place)
    return list(seen.values())


# ------------------------------------------------------------------------------------- status
def inventory_status(store: Store, settings: RenewalSettings, now: datetime,
                     warnings: list[str] | None = None) -> list[dict]:
    """``kimpki status`` without a place: the store's current server certificates, each with its
    state and where it was deployed. ``warnings`` gets :func:`fallback_warnings`, when given."""
    rows = []
    fallbacks = []
    for rec in store.list_certs():
        if rec.kind != "server":
            continue
        rule = settings.renew_before
        renew_at = renewal_time(rec.not_before, rec.not_after, rule, jitter=settings.jitter, key=rec.serial)
        pending = store.find_cert(rec.name, state="pending")
        rows.append({
            "certificate": rec.name,
            "hosts": rec.hosts,
            "ca": rec.ca,
            "serial": rec.serial,
            "not_before": _t(rec.not_before),
            "not_after": _t(rec.not_after),
            "days_left": int((rec.not_after - now).total_seconds() // 86400),
            "renewal_time": _t(renew_at),
            "renew_before": rule.describe(),
            "renew_before_fallback": rule.falls_back(rec.not_after - rec.not_before),
            "state": _state(rec.not_before, rec.not_after, renew_at, now),
            "pending_serial": pending.serial if pending is not None else None,
            "deployed_to": rec.deployed_to,
        })
        if rows[-1]["renew_before_fallback"]:
            fallbacks.append((rec.name, rows[-1]["renew_before"], rec.not_after - rec.not_before))
    if warnings is not None:
        warnings += fallback_warnings(fallbacks)
    return rows
