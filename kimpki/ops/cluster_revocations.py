"""Revocation state kept in the cluster, beside the CA Secret and the renewal Lease: the
ConfigMap ``kimpki-revocations``, so that a home that lives only as long as one run (the
CronJob's memory home, built from the ``kimpki-ca`` Secret) still knows what was revoked and
which CRL number comes next.

Why a ConfigMap of its own, not more keys in ``kimpki-ca``: revoked serials and CRLs are public
(every gateway receives them), and the CA Secret holds private keys. Writing the state into it
would send the CA keys back and forth on every revocation and let a bug in a state update
clobber them; ``kubectl create secret``/``apply`` of the CA Secret would fight the state too.
A ConfigMap of its own is read and updated with a Role limited to that one name, by tools that
may not read CA keys at all.

Per CA, two ``binaryData`` keys: ``<CA>.json.gz`` (gzipped JSON: the revoked list, the number of
the CRL published here, the highest number *reserved*, the CRL validity) and ``<CA>.crl`` (that
CRL, DER). Compact, so that 10,000 revoked certificates fit in a ConfigMap (1 MiB). Every change is
a read, then an update guarded by the resourceVersion read (a 409 reads again and redoes it).

CRL numbers (RFC 5280: they only grow): before a CRL is signed, its number is reserved here
(:meth:`ClusterRevocations.reserve`, a guarded update). Two runs therefore never sign two CRLs
with one number, and a run killed between reservation and publication leaves a gap, never a
reuse. The revoked list read by the reservation's guarded update is merged into the home before
signing: a revocation another home recorded earlier is always in a CRL with a higher number. A
CRL is published only when its number is above the one published (the newer state wins).
"""

from __future__ import annotations

import base64
import gzip
import json
from datetime import datetime, timezone

from kimpki.errors import KimpkiError, OperationError
from kimpki.istio import contract as c
from kimpki.store import Store
from kimpki.store import revocations as db
from kimpki.store.store import _dt, _ts

CONFIGMAP = "kimpki-revocations"
LABELS = {"app.kubernetes.io/name": "kimpki", "app.kubernetes.io/component": "revocations"}
ATTEMPTS = 10  # guarded updates re-read after a 409 at most this often
STATE_SUFFIX = ".json.gz"


def _state_key(ca: str) -> str:
    return f"{ca}{STATE_SUFFIX}"


def _crl_key(ca: str) -> str:
    return f"{ca}.crl"


class ClusterRevocations:
    """The ``kimpki-revocations`` ConfigMap of one cluster namespace."""

    def __init__(self, cluster, namespace: str | None = None, name: str = CONFIGMAP):
        self.cluster = cluster
        self.namespace = namespace or c.DEFAULT_NAMESPACE
        self.name = name

    @property
    def where(self) -> str:
        return f"configmap {self.namespace}/{self.name}"

    # ------------------------------------------------------------------ reading
    def read(self) -> dict[str, dict]:
        """``{CA: state}`` (state: the ``<CA>.json.gz`` dict plus ``"crl"``: its PEM or None)."""
        return _states(self.cluster.get("ConfigMap", self.namespace, self.name), self.where)

    # ------------------------------------------------------------------ writing
    def reserve(self, store: Store, ca: str, at_least: int) -> int:
        """Reserve the CA's next CRL number (at least ``at_least``) here and return it, after
        recording the home's revocations of the CA and merging the cluster's into the home.
        Call inside ``store.locked()``."""
        got = {}

        def change(states: dict[str, dict]) -> bool:
            st = states.setdefault(ca, {})
            _union(st, store, ca)
            number = max(int(st.get("reserved") or 0) + 1, int(st.get("crl_number") or 0) + 1, at_least)
            st["reserved"] = got["number"] = number
            got["states"] = states
            return True

        self._update(change)
        _merge(store, {ca: got["states"][ca]}, self.where, crl=False)
        return got["number"]

    def publish(self, store: Store, ca: str, number: int, this_update: datetime, next_update: datetime,
                pem: bytes) -> None:
        """Record a CRL just signed with a reserved number (unless a newer one is published)."""
        def change(states: dict[str, dict]) -> bool:
            st = states.setdefault(ca, {})
            changed = _union(st, store, ca)
            if number > int(st.get("crl_number") or 0):
                st.update(crl_number=number, this_update=_ts(this_update), next_update=_ts(next_update),
                          crl=pem.decode("ascii"))
                changed = True
            return changed

        self._update(change)

    def record(self, store: Store, ca: str) -> bool:
        """Record the home's revocations of ``ca`` that the cluster lacks; True when it lacked any."""
        return self._update(lambda states: _union(states.setdefault(ca, {}), store, ca))

    def sync(self, store: Store) -> list[str]:
        """Merge the cluster's state into ``store`` (revocations it lacks; a CRL newer than its
        own; the CRL validity; CAs the home does not have are left out), then :meth:`adopt` when
        the home has a CRL the cluster lacks (one read when it has none). Returns the CAs whose
        state changed."""
        states = self.read()
        with store.locked():
            loaded = _merge(store, states, self.where)
        if any(_adoptable(store, ca, states) for ca in store.list_cas()):
            self.adopt(store)
        return loaded

    def adopt(self, store: Store) -> list[str]:
        """Give the cluster the home's CRL state for each CA it has none of (signed before the
        cluster kept state, or without it): else a home that lives for one run could never
        re-sign those CRLs, and they would expire in the gateways. Its number was never used
        here, so it is reserved as it is."""
        adopted: list[str] = []

        def change(states: dict[str, dict]) -> bool:
            adopted.clear()
            for ca in store.list_cas():
                if not _adoptable(store, ca, states):
                    continue
                mine, path = db.crl_state(store, ca.name), db.crl_path(store, ca.name)
                st = states.setdefault(ca.name, {})
                _union(st, store, ca.name)
                st.update(reserved=mine.number, crl_number=mine.number, this_update=_ts(mine.this_update),
                          next_update=_ts(mine.next_update), crl=path.read_text("ascii"))
                adopted.append(ca.name)
            return bool(adopted)

        self._update(change)
        return adopted

    def _update(self, change) -> bool:
        """Read, apply ``change`` to the states (it returns whether anything changed), write back
        guarded by the resourceVersion read; a 409 (someone else wrote in between) reads again."""
        from kimpki.kube.errors import AlreadyExists, Conflict

        for _ in range(ATTEMPTS):
            obj = self.cluster.get("ConfigMap", self.namespace, self.name)
            states = _states(obj, self.where)
            if not change(states):
                return False
            body = obj or {"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"name": self.name, "namespace": self.namespace, "labels": dict(LABELS)}}
            body.pop("data", None)
            body["binaryData"] = _data(states)
            try:
                if obj is None:
                    self.cluster.create(body)
                else:
                    self.cluster.replace(body)  # metadata.resourceVersion as read: 409 if it moved
                return True
            except (Conflict, AlreadyExists):
                continue
        raise OperationError(f"{self.where} changed {ATTEMPTS} times while kimpki was updating it: run again")


class Mirrors:
    """The state of every cluster a command works on, kept as one: a number is reserved in
    each of them (the highest wins; a cluster that had reserved less is asked again), a CRL
    published to all."""

    def __init__(self, mirrors: list[ClusterRevocations]):
        self.mirrors = mirrors

    def __bool__(self) -> bool:
        return bool(self.mirrors)

    def reserve(self, store: Store, ca: str, at_least: int) -> int:
        got = {m: m.reserve(store, ca, at_least) for m in self.mirrors}
        while len(set(got.values())) > 1:  # gaps are harmless; one number for all is not optional
            top = max(got.values())
            got = {m: (n if n == top else m.reserve(store, ca, top)) for m, n in got.items()}
        return next(iter(got.values()), at_least)

    def publish(self, store: Store, ca: str, number: int, this_update: datetime, next_update: datetime,
                pem: bytes) -> None:
        for m in self.mirrors:
            m.publish(store, ca, number, this_update, next_update, pem)

    def record(self, store: Store, ca: str) -> bool:
        return any([m.record(store, ca) for m in self.mirrors])

    def sync(self, store: Store) -> list[str]:
        """Merge the clusters' state into the home, then give them the home's CRLs they lack
        (:meth:`ClusterRevocations.adopt`). Returns the CAs loaded from a cluster."""
        return sorted({ca for m in self.mirrors for ca in m.sync(store)})


def for_places(places) -> Mirrors:
    """The states of the clusters among ``places`` (``SweepTarget``-like pairs of place and
    namespace), one per cluster: in the namespace of its first target, as the renewal Lease."""
    seen: dict[int, ClusterRevocations] = {}
    for place, namespace in places:
        cluster = getattr(place, "cluster", None)
        if cluster is not None and id(cluster) not in seen:
            seen[id(cluster)] = ClusterRevocations(cluster, namespace)
    return Mirrors(list(seen.values()))


def _adoptable(store: Store, ca, states: dict[str, dict]) -> bool:
    """The home has a CRL of ``ca`` (not retired) and the cluster no state for it."""
    return (ca.name not in states and ca.retired_at is None and db.crl_state(store, ca.name) is not None
            and db.crl_path(store, ca.name).exists())


def _states(obj: dict | None, where: str) -> dict[str, dict]:
    binary = (obj or {}).get("binaryData") or {}
    out: dict[str, dict] = {}
    for key, value in binary.items():
        if not key.endswith(STATE_SUFFIX):
            continue
        ca = key[: -len(STATE_SUFFIX)]
        try:
            st = json.loads(gzip.decompress(base64.b64decode(value, validate=True)))
            if not isinstance(st, dict):
                raise ValueError("not an object")
        except (ValueError, OSError, EOFError) as e:
            raise OperationError(f"{where}: key {key} is not the gzipped JSON kimpki writes ({e}); restore it "
                                 f"from a backup, or delete the key to start this CA's state afresh") from None
        st["crl"] = None
        if binary.get(_crl_key(ca)):
            from cryptography import x509
            from cryptography.hazmat.primitives.serialization import Encoding

            try:
                crl = x509.load_der_x509_crl(base64.b64decode(binary[_crl_key(ca)], validate=True))
            except ValueError as e:
                raise OperationError(f"{where}: key {_crl_key(ca)} is not a DER CRL ({e})") from None
            st["crl"] = crl.public_bytes(Encoding.PEM).decode("ascii")
        out[ca] = st
    return out


def _data(states: dict[str, dict]) -> dict[str, str]:
    """binaryData: per CA, the state as gzipped JSON and the CRL as DER. Both compact: 10,000
    revoked entries take ~290 kB and ~530 kB, inside a ConfigMap's 1 MiB."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    data = {}
    for ca, st in sorted(states.items()):
        st = dict(st)
        crl = st.pop("crl", None)
        raw = json.dumps(st, separators=(",", ":"), sort_keys=True).encode()
        data[_state_key(ca)] = base64.b64encode(gzip.compress(raw, mtime=0)).decode("ascii")
        if crl:
            der = x509.load_pem_x509_crl(crl.encode("ascii")).public_bytes(Encoding.DER)
            data[_crl_key(ca)] = base64.b64encode(der).decode("ascii")
    return data


def _entry(r: db.Revocation) -> list:
    return [r.serial, _ts(r.revoked_at), r.reason, _ts(r.not_after), r.kind, r.name]


def _union(st: dict, store: Store, ca: str) -> bool:
    """Add the home's revocations (and CRL validity) of ``ca`` to the state ``st``; True when it
    changed. Entries past their certificate's notAfter are left out: no CRL lists them."""
    from kimpki.ops.revoking import CRL_VALIDITY_KEY

    changed = False
    now = _now()
    # entries whose certificate expired leave (no CRL lists them), when something is written anyway
    st["revoked"] = [e for e in st.get("revoked") or [] if len(e) > 3 and _dt(e[3]) > now]
    have = {e[0] for e in st["revoked"]}
    for r in db.of_ca(store, ca):
        if r.serial not in have and r.not_after > now:
            st["revoked"].append(_entry(r))
            changed = True
    validity = store.get_setting(CRL_VALIDITY_KEY + ca)
    if validity and st.get("crl_validity_seconds") != int(validity):
        st["crl_validity_seconds"] = int(validity)
        changed = True
    return changed


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _merge(store: Store, states: dict[str, dict], where: str, *, crl: bool = True) -> list[str]:
    """Merge ``states`` into the home. Call inside ``store.locked()``."""
    from kimpki.ops.revoking import CRL_VALIDITY_KEY, parse_crl
    from kimpki.pki import revocation as rv

    changed = []
    known = {ca.name for ca in store.list_cas()}
    for ca, st in states.items():
        if ca not in known:
            continue
        did = False
        for e in st.get("revoked") or []:
            try:
                serial, revoked_at, reason, not_after, kind, name = e
                rev = db.Revocation(ca, serial, name, kind, _dt(not_after), _dt(revoked_at),
                                    rv.reason_name(reason), f"(recorded in {where})")
            except (TypeError, ValueError, KimpkiError) as err:
                raise OperationError(f"{where}: a revocation of CA {ca} is not what kimpki writes "
                                     f"({err})") from None
            if db.find(store, ca, serial) is None:
                db.record(store, rev)
                did = True
        if st.get("crl_validity_seconds") and not store.get_setting(CRL_VALIDITY_KEY + ca):
            store.set_setting(CRL_VALIDITY_KEY + ca, str(int(st["crl_validity_seconds"])))
            did = True
        mine = db.crl_state(store, ca)
        number = int(st.get("crl_number") or 0)
        if crl and st.get("crl") and number > (mine.number if mine else 0):
            pem = st["crl"].encode("ascii")
            got = parse_crl(pem, f"{where} key {_crl_key(ca)}")
            if rv.crl_number(got) != number:
                raise OperationError(f"{where}: key {_crl_key(ca)} holds CRL number {rv.crl_number(got)}, "
                                     f"but {_state_key(ca)} says {number}")
            db.save_crl(store, ca, number, _dt(st["this_update"]), _dt(st["next_update"]), pem)
            did = True
        if did:
            changed.append(ca)
    return changed
