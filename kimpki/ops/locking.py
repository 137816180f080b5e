"""The renewal lock: one ``kimpki renew`` at a time, so no credential is ever renewed twice.

Usage (this is all ``kimpki renew`` needs)::

    from kimpki.ops.locking import renewal_lock

    with renewal_lock(home=store.home, cluster=cluster_or_None, namespace="istio-system",
                      wait=5) as lock:
        if not lock.acquired:
            log(lock.busy_message)   # "another run (holder H, since T) holds the renewal lock
            return 0                 #  (lease istio-system/kimpki-renew); nothing done"
        for credential in due:       # decide what is due *after* acquiring: a run that just
            lock.check()             # finished may have renewed it; check() raises LockLost
            rotate(credential)       # (exit 1) if the lease was lost meanwhile
    # released on leaving the block, also on an exception

What is locked:

* **The kimpki home**, always: an ``flock`` on ``<home>/renew.lock`` (kimpki/store/lock.py; the
  kernel releases it if the process dies). Runs from the same home share the store's pending
  versions, so they must not overlap whatever they target. The holder writes who it is and
  since when to ``<home>/renew.holder`` so that a waiting run can say who is in the way.
* **A Lease**, when renew targets a cluster (``cluster`` given): ``coordination.k8s.io/v1``
  Lease ``kimpki-renew`` in the gateway namespace, with client-go's leader-election rules
  (kimpki/kube/lease.py). It keeps runs from *different* homes apart: a crontab on an admin
  machine and the in-cluster CronJob. It lasts 60 s and a daemon thread renews it every 20 s
  (duration / 3) while held; if renewing fails until the lease runs out, or someone else took
  it, the lock is *lost* and :meth:`RenewalLock.check` raises :class:`LockLost`. On release the
  holder is cleared, so the next run need not wait for it to expire.

Waiting: both locks together are waited for at most ``wait`` seconds (default 5); then the
result says ``acquired=False`` and who holds the lock, and nothing has been changed. API
errors while acquiring (403, unreachable) are raised as usual: they are failures, not "busy".

Requests: acquiring a free lease costs 2 API requests (GET + CREATE or UPDATE), releasing it
1; a renewal every 20 s adds 1.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from kimpki.errors import OperationError
from kimpki.istio import contract as c
from kimpki.store.fs import PRIVATE_FILE, ensure_private_dir, write_atomic
from kimpki.store.lock import file_lock

DEFAULT_LEASE_NAME = "kimpki-renew"
DEFAULT_LEASE_SECONDS = 60
DEFAULT_WAIT_SECONDS = 5.0
DEFAULT_POLL_SECONDS = 1.0
LOCK_FILE = "renew.lock"
HOLDER_FILE = "renew.holder"
# After a failed renewal, try again sooner than the regular interval: the lease is running out.
RETRY_SECONDS = 2.0

Clock = Callable[[], datetime]


class LockLost(OperationError):
    """The renewal lease was taken over or could not be renewed in time: stop writing."""


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _rfc3339(t: datetime | None) -> str | None:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if t else None


def new_identity() -> str:
    """Who this run is, in lock files and Leases: ``hostname_pid_random``."""
    from kimpki.kube.lease import default_identity  # pure; imports no kubernetes

    return default_identity()


@dataclass
class RenewalLock:
    """What :func:`renewal_lock` yields.

    ``acquired``: this run holds every lock it needs. When False, ``holder``/``holder_since``/
    ``blocked_by`` say who holds which lock, and ``busy_message`` says it in one line.
    ``locks``: what is held (``file /home/renew.lock``, ``lease istio-system/kimpki-renew``).
    ``lost``: why the lease was lost, when it was (see :meth:`check`).
    ``release_errors``: releasing the lease failed (it then expires by itself)."""

    identity: str
    acquired: bool = False
    locks: list[str] = field(default_factory=list)
    holder: str | None = None
    holder_since: datetime | None = None
    blocked_by: str | None = None
    lost: str | None = None
    release_errors: list[str] = field(default_factory=list)
    _lease: object = field(default=None, repr=False)

    @property
    def busy_message(self) -> str:
        who = f"holder {self.holder or 'unknown'}"
        if self.holder_since:
            who += f", since {_rfc3339(self.holder_since)}"
        return f"another run ({who}) holds the renewal lock ({self.blocked_by}); nothing done"

    def check(self) -> None:
        """Raise :class:`LockLost` unless this run still holds the lock. Call it before each
        write: a run that lost its lease must stop, since another run may be renewing now."""
        if not self.acquired:
            raise LockLost(f"the renewal lock is not held ({self.busy_message})")
        lease = self._lease
        if self.lost is None and lease is not None and lease.expired():
            self.lost = f"{lease.where} was not renewed in time and expired"
        if self.lost:
            raise LockLost(f"lost the renewal lock: {self.lost}; stopped before writing more, run again")

    def to_dict(self) -> dict:
        return {"acquired": self.acquired, "identity": self.identity, "locks": list(self.locks),
                "holder": self.holder, "holder_since": _rfc3339(self.holder_since),
                "blocked_by": self.blocked_by, "busy_message": None if self.acquired else self.busy_message,
                "lost": self.lost, "release_errors": list(self.release_errors)}


# --------------------------------------------------------------------------------- the home
def _read_holder(path: Path) -> tuple[str | None, datetime | None]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        since = datetime.fromisoformat(doc["since"]) if doc.get("since") else None
        return str(doc.get("identity") or "") or None, since
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, None  # not written yet, or left by a crashed run: informational only


def _lock_home(stack: ExitStack, home: Path, lock: RenewalLock, wait: float, clock: Clock) -> bool:
    ensure_private_dir(home)
    path = home / LOCK_FILE
    holder_file = home / HOLDER_FILE
    where = f"file {path}"
    try:
        stack.enter_context(file_lock(path, max(wait, 0.0)))
    except OperationError:  # file_lock's "another kimpki process holds ..." after the wait
        lock.holder, lock.holder_since = _read_holder(holder_file)
        lock.blocked_by = where
        return False
    since = clock()
    write_atomic(holder_file, json.dumps({"identity": lock.identity, "pid": os.getpid(),
                                          "host": socket.gethostname(), "since": _rfc3339(since)}).encode(),
                 PRIVATE_FILE)
    # LIFO: the holder note goes before the flock is let go
    stack.callback(holder_file.unlink, missing_ok=True)
    lock.locks.append(where)
    return True


# --------------------------------------------------------------------------------- the lease
class _Heartbeat(threading.Thread):
    """Renews the lease every ``every`` seconds until stopped, or until it is lost."""

    def __init__(self, lease, every: float, lock: RenewalLock):
        super().__init__(name=f"kimpki-lease-{lease.name}", daemon=True)
        self.lease = lease
        self.every = every
        self.lock = lock
        self.renewals = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        from kimpki.kube.errors import KubeError

        delay = self.every
        while not self._stop_event.wait(delay):
            try:
                if self.lease.renew():
                    self.renewals += 1
                    delay = self.every
                    continue
                rec = self.lease.record
                taker = rec.holder if rec and rec.holder else None
                self.lock.lost = (f"{self.lease.where} was taken over by {taker}" if taker
                                  else f"{self.lease.where} was released or deleted by someone else")
                return
            except KubeError as e:
                if self.lease.expired():
                    self.lock.lost = f"could not renew {self.lease.where} before it expired ({e})"
                    return
                delay = min(self.every, RETRY_SECONDS)

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            # a renewal in flight ends within the client's timeout
            self.join(timeout=getattr(self.lease.cluster, "timeout", 10.0) + 1.0)


def _release_lease(lease, heartbeat: _Heartbeat, lock: RenewalLock) -> None:
    from kimpki.kube.errors import KubeError

    heartbeat.stop()
    if lock.lost:
        return  # not ours any more: nothing to give back
    try:
        lease.release()
    except KubeError as e:
        # never fail (or mask the error of) a run because of this: the lease expires by itself
        lock.release_errors.append(str(e))


def _lock_lease(stack: ExitStack, cluster, lock: RenewalLock, *, namespace: str, name: str, seconds: int,
                deadline: float, poll: float, clock: Clock, renew_every: float | None) -> bool:
    from kimpki.kube.lease import LeaseLock

    lease = LeaseLock(cluster, namespace, name, identity=lock.identity, duration=seconds, now=clock)
    while not lease.try_acquire():
        left = deadline - time.monotonic()
        if left <= 0:
            rec = lease.record
            lock.holder = rec.holder if rec else None
            lock.holder_since = rec.acquire_time if rec else None
            lock.blocked_by = lease.where
            return False
        time.sleep(min(poll, left))
    heartbeat = _Heartbeat(lease, renew_every or seconds / 3, lock)
    stack.callback(_release_lease, lease, heartbeat, lock)
    heartbeat.start()
    lock._lease = lease
    lock.locks.append(lease.where)
    return True


@contextmanager
def renewal_lock(*, home: str | os.PathLike | None = None, cluster=None,
                 namespace: str = c.DEFAULT_NAMESPACE, lease_name: str = DEFAULT_LEASE_NAME,
                 lease_seconds: int = DEFAULT_LEASE_SECONDS, wait: float = DEFAULT_WAIT_SECONDS,
                 poll: float = DEFAULT_POLL_SECONDS, identity: str | None = None, now: Clock | None = None,
                 renew_every: float | None = None) -> Iterator[RenewalLock]:
    """Hold the renewal lock for the ``with`` block: the home's file lock when ``home`` is
    given, and the Lease ``namespace/lease_name`` when ``cluster`` (a kimpki.kube.Cluster) is.

    Waits up to ``wait`` seconds in all (polling the lease every ``poll`` seconds), then yields
    a :class:`RenewalLock` whose ``acquired`` says whether this run may renew. ``now`` (a clock
    returning aware UTC datetimes) and ``renew_every`` (default ``lease_seconds / 3``) are for
    tests. Everything held is released when the block ends."""
    if home is None and cluster is None:
        raise ValueError("renewal_lock needs a home, a cluster, or both")
    clock = now or _utc_now
    lock = RenewalLock(identity=identity or new_identity())
    deadline = time.monotonic() + max(wait, 0.0)
    with ExitStack() as stack:
        if home is not None and not _lock_home(stack, Path(home), lock, wait, clock):
            yield lock
            return
        if cluster is not None and not _lock_lease(stack, cluster, lock, namespace=namespace, name=lease_name,
                                                   seconds=lease_seconds, deadline=deadline, poll=poll,
                                                   clock=clock, renew_every=renew_every):
            stack.close()  # let the home go at once: this run does nothing
            lock.locks.clear()
            yield lock
            return
        lock.acquired = True
        yield lock
