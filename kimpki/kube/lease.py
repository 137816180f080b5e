"""A ``coordination.k8s.io/v1`` Lease used as a lock, with client-go's leader-election rules.

The Lease's ``spec`` is the election record (k8s.io/client-go/tools/leaderelection,
resourcelock.LeaseLock)::

    holderIdentity        who holds it; "" when released (anyone may take it at once)
    leaseDurationSeconds  how long the holder's claim lasts after renewTime
    acquireTime           when the current holder took it (MicroTime)
    renewTime             when the holder last renewed it (MicroTime)
    leaseTransitions      how many times it changed hands

MicroTime is RFC 3339 in UTC with exactly six fractional digits (``2026-11-23T10:00:00.123456Z``);
the API server refuses other forms with 400.

* :meth:`LeaseLock.try_acquire`: GET; CREATE when absent; otherwise a resourceVersion-guarded
  UPDATE when the lease is free (no holder), expired, or already ours. A new holder bumps
  ``leaseTransitions`` and sets ``acquireTime``; our own renewal keeps both. A 409 means someone
  else wrote first: re-read and decide again from what is there (never a blind retry). A free
  lease costs 2 requests.
* :meth:`LeaseLock.renew`: one guarded UPDATE of ``renewTime`` (client-go's fast path).
* :meth:`LeaseLock.release`: one guarded UPDATE that clears ``holderIdentity`` and sets
  ``leaseDurationSeconds`` to 1, as client-go's ``ReleaseOnCancel`` does.

One difference from client-go, on purpose: client-go judges expiry by *its own* clock from the
moment it last saw the record change, which needs a process that watches for a whole lease
duration. kimpki runs once from cron, so it judges expiry from the record itself: expired when
``renewTime + leaseDurationSeconds <= now``. That trusts the holders' clocks to roughly agree
(NTP), which a lease of 60 s renewed every 20 s tolerates by a wide margin.

The clock is injectable (``now``) so tests decide what time it is instead of sleeping.
"""

from __future__ import annotations

import copy
import os
import secrets
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

from kimpki.istio import contract as c
from kimpki.kube import errors as kerr

API_VERSION = "coordination.k8s.io/v1"
KIND = "Lease"
# Every attempt starts from a fresh read; bounded so that a lease rewritten non-stop
# cannot keep us looping.
MAX_ROUNDS = 3

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def default_identity() -> str:
    """``hostname_pid_random``: the hostname names the machine or pod, the pid the process,
    and the random part keeps two runs apart even when a pid is reused (client-go uses
    ``hostname_uuid``)."""
    return f"{socket.gethostname()}_{os.getpid()}_{secrets.token_hex(4)}"


def micro_time(t: datetime) -> str:
    """A MicroTime as the API server wants it: UTC, six fractional digits, ``Z``."""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value) -> datetime | None:
    """A MicroTime (or any RFC 3339 time) as an aware datetime; None when absent or malformed."""
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease says about its holder."""

    holder: str  # "" when free
    duration: int  # leaseDurationSeconds (0 when absent)
    acquire_time: datetime | None
    renew_time: datetime | None
    transitions: int
    resource_version: str | None = None

    @classmethod
    def from_object(cls, obj: dict) -> "LeaseRecord":
        spec = obj.get("spec") or {}

        def integer(key: str) -> int:
            v = spec.get(key)
            return v if isinstance(v, int) and not isinstance(v, bool) else 0

        return cls(holder=str(spec.get("holderIdentity") or ""), duration=integer("leaseDurationSeconds"),
                   acquire_time=parse_time(spec.get("acquireTime")), renew_time=parse_time(spec.get("renewTime")),
                   transitions=integer("leaseTransitions"),
                   resource_version=(obj.get("metadata") or {}).get("resourceVersion"))

    @property
    def expires_at(self) -> datetime | None:
        """When the holder's claim runs out (renewTime, else acquireTime, + duration)."""
        start = self.renew_time or self.acquire_time
        return start + timedelta(seconds=self.duration) if start else None

    def held_at(self, now: datetime) -> bool:
        """True while someone holds it: a holder whose claim has not run out. A holder with no
        renew time or a zero duration holds nothing (client-go treats it as expired too)."""
        exp = self.expires_at
        return bool(self.holder) and exp is not None and exp > now

    def to_dict(self) -> dict:
        return {"holder": self.holder or None, "lease_duration_seconds": self.duration,
                "acquire_time": micro_time(self.acquire_time) if self.acquire_time else None,
                "renew_time": micro_time(self.renew_time) if self.renew_time else None,
                "expires_at": micro_time(self.expires_at) if self.expires_at else None,
                "lease_transitions": self.transitions, "resource_version": self.resource_version}


class LeaseLock:
    """One Lease in one namespace, held by ``identity``.

    ``cluster`` is a :class:`kimpki.kube.Cluster` (only its generic ``get``/``create``/
    ``replace`` are used). API failures other than conflicts raise
    :class:`~kimpki.kube.errors.KubeError`; the methods are safe to call from two threads
    (the renewal heartbeat and the main thread's release)."""

    def __init__(self, cluster, namespace: str, name: str, *, identity: str | None = None,
                 duration: int = 60, now: Clock | None = None, labels: dict | None = None):
        if not isinstance(duration, int) or duration < 1:
            raise ValueError("a lease lasts at least 1 second")
        self.cluster = cluster
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.duration = duration
        self.now: Clock = now or utc_now
        self.labels = {c.MANAGED_BY_LABEL: c.MANAGED_BY_VALUE} if labels is None else dict(labels)
        self.record: LeaseRecord | None = None  # what the lease said at the last read or write
        self._object: dict | None = None  # the lease as last written by us, while we hold it
        self._mutex = threading.RLock()

    def __repr__(self) -> str:
        return f"LeaseLock({self.where}, identity={self.identity!r}, held={self.held})"

    @property
    def where(self) -> str:
        return f"lease {self.namespace}/{self.name}"

    @property
    def held(self) -> bool:
        """True after a successful acquire or renew, until release or a lost renewal. Says
        nothing about expiry: see :meth:`expired`."""
        return self._object is not None

    def expired(self) -> bool:
        """True when we hold the lease but its last renewal is older than its duration, so
        another run may already have taken it."""
        with self._mutex:
            return self.held and not (self.record and self.record.expires_at and self.record.expires_at > self.now())

    # ------------------------------------------------------------------ requests
    def _get(self) -> dict | None:
        obj = self.cluster.get(KIND, self.namespace, self.name, api_version=API_VERSION)
        self.record = LeaseRecord.from_object(obj) if obj is not None else None
        return obj

    def _update_ours(self, make_spec) -> dict | None:
        """Write ``make_spec(record)`` over the lease we hold, guarded by its resourceVersion. On a
        409 (or 404) re-read: while it is still ours (someone touched only its metadata) try once
        more; otherwise it is lost: None, and we no longer hold it."""
        current = self._object
        for _ in range(2):
            try:
                return self._update(current, make_spec(LeaseRecord.from_object(current)))
            except (kerr.Conflict, kerr.NotFound):
                current = self._get()
                if current is None or self.record.holder != self.identity:
                    break
        self._object = None
        return None

    def _wrote(self, obj: dict) -> None:
        self._object = obj
        self.record = LeaseRecord.from_object(obj)

    def _spec(self, *, holder: str, duration: int, acquire: datetime, renew: datetime, transitions: int) -> dict:
        return {"holderIdentity": holder, "leaseDurationSeconds": duration, "acquireTime": micro_time(acquire),
                "renewTime": micro_time(renew), "leaseTransitions": transitions}

    def _update(self, current: dict, spec: dict) -> dict:
        """PUT ``current`` with ``spec`` merged in, guarded by ``current``'s resourceVersion.
        Other spec fields (e.g. a coordinated-election ``strategy``) are kept."""
        new = copy.deepcopy(current)
        new["apiVersion"], new["kind"] = API_VERSION, KIND
        new["spec"] = {**(new.get("spec") or {}), **spec}
        return self.cluster.replace(new)

    # ------------------------------------------------------------------ the three operations
    def try_acquire(self) -> bool:
        """One attempt to take (or keep) the lease. True when we hold it afterwards; False when
        someone else holds it (see :attr:`record` for who, since when, until when)."""
        with self._mutex:
            for _ in range(MAX_ROUNDS):
                now = self.now()
                current = self._get()
                try:
                    if current is None:
                        body = {"apiVersion": API_VERSION, "kind": KIND,
                                "metadata": {"name": self.name, "namespace": self.namespace, "labels": self.labels},
                                "spec": self._spec(holder=self.identity, duration=self.duration, acquire=now,
                                                   renew=now, transitions=0)}
                        self._wrote(self.cluster.create(body))
                        return True
                    rec = self.record
                    ours = rec.holder == self.identity
                    if not ours and rec.held_at(now):
                        self._object = None
                        return False
                    spec = self._spec(holder=self.identity, duration=self.duration,
                                      acquire=(rec.acquire_time or now) if ours else now, renew=now,
                                      transitions=rec.transitions if ours else rec.transitions + 1)
                    self._wrote(self._update(current, spec))
                    return True
                except (kerr.NotServed, kerr.NamespaceNotFound):
                    raise
                except (kerr.Conflict, kerr.AlreadyExists, kerr.NotFound, kerr.ConnectionLost, kerr.Timeout):
                    # someone else created, updated or deleted it in between, or our write's
                    # answer was lost (it may have landed): read again and decide from that
                    continue
            # it kept changing under us: report whoever holds it now (perhaps us, when a
            # write of ours landed but its answer was lost)
            current = self._get()
            ours = current is not None and self.record.holder == self.identity
            self._object = current if ours else None
            return ours

    def renew(self) -> bool:
        """Move ``renewTime`` to now. True when renewed; False when the lease is no longer ours
        (taken over, released or deleted by someone else): stop working under it."""
        with self._mutex:
            if self._object is None:
                return False
            now = self.now()
            obj = self._update_ours(lambda rec: self._spec(holder=self.identity, duration=self.duration,
                                                           acquire=rec.acquire_time or now, renew=now,
                                                           transitions=rec.transitions))
            if obj is None:
                return False
            self._wrote(obj)
            return True

    def release(self) -> bool:
        """Give the lease up so that the next run need not wait for it to expire. True when
        released (or not held); False when it was no longer ours to release."""
        with self._mutex:
            if self._object is None:
                return True

            def released(rec: LeaseRecord) -> dict:
                now = self.now()
                # client-go's release record: no holder, 1 s duration, times set to now
                return self._spec(holder="", duration=1, acquire=now, renew=now, transitions=rec.transitions)

            obj = self._update_ours(released)
            if obj is None:
                return False
            self._object = None
            self.record = LeaseRecord.from_object(obj)
            return True
