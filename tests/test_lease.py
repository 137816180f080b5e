"""The renewal lock against real peers: the Lease lock (kimpki/kube/lease.py) through the real
``kubernetes`` client to the stand-in API server, and ``renewal_lock`` (kimpki/ops/locking.py)
with real flock'd files. Time is a fake clock wherever expiry matters; nothing sleeps to wait for
an outcome, it polls for it."""

from __future__ import annotations

import re
import stat
import threading
from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import wait_until
from tests.kubeapi.fixtures import *  # noqa: F401,F403  (kube_api, kube_env, kube_client)

from kimpki.kube import Cluster
from kimpki.kube import errors as kerr
from kimpki.kube.lease import LeaseLock, LeaseRecord, micro_time
from kimpki.ops.locking import HOLDER_FILE, LOCK_FILE, LockLost, renewal_lock

NS = "istio-system"
NAME = "kimpki-renew"
MICRO = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z")
T0 = datetime(2026, 11, 23, 3, 17, 0, 123456, tzinfo=timezone.utc)


class FakeClock:
    def __init__(self, t: datetime = T0):
        self.t = t

    def __call__(self) -> datetime:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


@pytest.fixture
def cluster(kube_api):
    cl = Cluster.connect(kubeconfig=kube_api.kubeconfig_path)
    yield cl
    cl.close()


@pytest.fixture
def other_cluster(kube_api):
    """A second, independent connection: another renew run."""
    cl = Cluster.connect(kubeconfig=kube_api.kubeconfig_path)
    yield cl
    cl.close()


def lease_calls(srv) -> list[tuple[str, int]]:
    return [(r["method"], r["code"]) for r in srv.calls(resource="leases")]


def stored(srv) -> dict:
    return srv.get_object("leases", NS, NAME)


def seed(srv, holder: str, renew: datetime, *, duration: int = 60, transitions: int = 0,
         acquire: datetime | None = None) -> dict:
    return srv.put_object({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                           "metadata": {"name": NAME, "namespace": NS},
                           "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration,
                                    "acquireTime": micro_time(acquire or renew), "renewTime": micro_time(renew),
                                    "leaseTransitions": transitions}})


# ---------------------------------------------------------------------------------- LeaseLock
def test_a_missing_lease_is_created_for_us_in_two_requests(kube_api, cluster):
    lease = LeaseLock(cluster, NS, NAME, identity="me", now=FakeClock())
    assert lease.try_acquire() is True and lease.held
    assert lease_calls(kube_api) == [("GET", 404), ("POST", 201)]
    obj = stored(kube_api)
    spec = obj["spec"]
    assert spec == {"holderIdentity": "me", "leaseDurationSeconds": 60, "acquireTime": "2026-11-23T03:17:00.123456Z",
                    "renewTime": "2026-11-23T03:17:00.123456Z", "leaseTransitions": 0}
    assert obj["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "kimpki"}
    assert lease.record.resource_version == obj["metadata"]["resourceVersion"]


def test_a_released_lease_is_taken_at_once_in_two_requests(kube_api, cluster):
    seed(kube_api, "", T0 - timedelta(seconds=1), duration=1, transitions=3)
    lease = LeaseLock(cluster, NS, NAME, identity="me", now=FakeClock())
    assert lease.try_acquire() is True
    assert lease_calls(kube_api) == [("GET", 200), ("PUT", 200)]
    spec = stored(kube_api)["spec"]
    assert spec["holderIdentity"] == "me" and spec["leaseTransitions"] == 4 and spec["leaseDurationSeconds"] == 60
    assert spec["acquireTime"] == spec["renewTime"] == micro_time(T0)


def test_a_lease_held_by_another_is_left_alone(kube_api, cluster):
    before = seed(kube_api, "other-run", T0 - timedelta(seconds=10), transitions=2)
    lease = LeaseLock(cluster, NS, NAME, identity="me", now=FakeClock())
    assert lease.try_acquire() is False and not lease.held
    assert lease_calls(kube_api) == [("GET", 200)]  # read only, nothing written
    assert stored(kube_api)["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert lease.record.holder == "other-run"
    assert lease.record.expires_at == T0 + timedelta(seconds=50)


@pytest.mark.parametrize("age, taken", [(59.999999, False), (60, True), (3600, True)])
def test_an_expired_lease_is_taken_over_with_one_more_transition(kube_api, cluster, age, taken):
    # client-go's rule: valid while renewTime + leaseDurationSeconds is after now
    seed(kube_api, "crashed-run", T0 - timedelta(seconds=age), transitions=7)
    lease = LeaseLock(cluster, NS, NAME, identity="me", now=FakeClock())
    assert lease.try_acquire() is taken
    spec = stored(kube_api)["spec"]
    if taken:
        assert spec["holderIdentity"] == "me" and spec["leaseTransitions"] == 8
        assert spec["acquireTime"] == spec["renewTime"] == micro_time(T0)
    else:
        assert spec["holderIdentity"] == "crashed-run" and spec["leaseTransitions"] == 7


def test_our_own_lease_is_renewed_keeping_acquire_time_and_transitions(kube_api, cluster):
    clock = FakeClock()
    seed(kube_api, "", T0, duration=1, transitions=1)
    lease = LeaseLock(cluster, NS, NAME, identity="me", now=clock)
    assert lease.try_acquire()
    kube_api.clear_requests()
    clock.advance(20)
    assert lease.renew() is True
    assert lease_calls(kube_api) == [("PUT", 200)]  # one guarded update, no read
    spec = stored(kube_api)["spec"]
    assert spec["acquireTime"] == micro_time(T0) and spec["renewTime"] == micro_time(T0 + timedelta(seconds=20))
    assert spec["leaseTransitions"] == 2
    # acquiring what we already hold (client-go's slow path) is a renewal too
    clock.advance(20)
    assert lease.try_acquire() is True
    spec = stored(kube_api)["spec"]
    assert spec["acquireTime"] == micro_time(T0) and spec["leaseTransitions"] == 2
    assert spec["renewTime"] == micro_time(T0 + timedelta(seconds=40))


class _MeetAfterRead:
    """Holds every caller of ``get`` until both racers have read the lease: both then write
    based on the same resourceVersion, so the API server has to refuse one of them."""

    def __init__(self, cluster, barrier: threading.Barrier):
        self._cluster, self._barrier = cluster, barrier
        self._first = True

    def get(self, *a, **kw):
        obj = self._cluster.get(*a, **kw)
        if self._first:
            self._first = False
            self._barrier.wait(timeout=10)
        return obj

    def __getattr__(self, name):
        return getattr(self._cluster, name)


@pytest.mark.parametrize("start", ["absent", "expired"])
def test_two_runs_racing_for_the_lease_exactly_one_wins(kube_api, cluster, other_cluster, start):
    if start == "expired":
        seed(kube_api, "crashed-run", T0 - timedelta(minutes=5), transitions=1)
    barrier = threading.Barrier(2)
    racers = {ident: LeaseLock(_MeetAfterRead(cl, barrier), NS, NAME, identity=ident, now=FakeClock())
              for ident, cl in (("run-a", cluster), ("run-b", other_cluster))}
    results: dict[str, bool] = {}

    def race(ident):
        results[ident] = racers[ident].try_acquire()

    threads = [threading.Thread(target=race, args=(i,)) for i in racers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    winners = [i for i, won in results.items() if won]
    assert len(winners) == 1, results
    winner = winners[0]
    loser = next(i for i in racers if i != winner)
    assert stored(kube_api)["spec"]["holderIdentity"] == winner
    assert racers[loser].record.holder == winner and not racers[loser].held
    # the loser's write was refused with 409, then it re-read and backed off (no blind retry)
    write = "POST" if start == "absent" else "PUT"
    calls = lease_calls(kube_api)
    assert calls.count((write, 409)) == 1 and calls.count((write, 200 if write == "PUT" else 201)) == 1
    assert [m for m, _ in calls].count("GET") == 3  # one read each, then only the loser read again
    assert stored(kube_api)["spec"]["leaseTransitions"] == (0 if start == "absent" else 2)


def test_release_clears_the_holder_in_one_request_and_the_next_run_takes_it_at_once(kube_api, cluster):
    clock = FakeClock()
    mine = LeaseLock(cluster, NS, NAME, identity="me", now=clock)
    assert mine.try_acquire()
    kube_api.clear_requests()
    clock.advance(5)
    assert mine.release() is True and not mine.held
    assert lease_calls(kube_api) == [("PUT", 200)]
    spec = stored(kube_api)["spec"]
    # client-go's ReleaseOnCancel record
    assert spec == {"holderIdentity": "", "leaseDurationSeconds": 1, "acquireTime": micro_time(clock.t),
                    "renewTime": micro_time(clock.t), "leaseTransitions": 0}
    nxt = LeaseLock(cluster, NS, NAME, identity="next", now=clock)
    assert nxt.try_acquire() is True
    assert stored(kube_api)["spec"]["leaseTransitions"] == 1
    assert mine.release() is True  # not held: nothing to do, nothing sent
    assert lease_calls(kube_api)[-1] == ("PUT", 200) and len(lease_calls(kube_api)) == 3


def test_a_lease_taken_over_meanwhile_is_neither_renewed_nor_released(kube_api, cluster, other_cluster):
    clock = FakeClock()
    mine = LeaseLock(cluster, NS, NAME, identity="me", now=clock)
    assert mine.try_acquire()
    clock.advance(61)  # we stalled past our lease
    assert mine.expired()
    thief = LeaseLock(other_cluster, NS, NAME, identity="thief", now=clock)
    assert thief.try_acquire()
    assert mine.renew() is False and not mine.held
    assert mine.record.holder == "thief"
    assert stored(kube_api)["spec"]["holderIdentity"] == "thief"
    # and a release attempted while we still thought we held it must not clobber the thief
    mine2 = LeaseLock(cluster, NS, NAME, identity="me2", now=clock)
    clock.advance(61)
    assert mine2.try_acquire()
    clock.advance(61)
    assert LeaseLock(other_cluster, NS, NAME, identity="thief2", now=clock).try_acquire()
    assert mine2.release() is False
    assert stored(kube_api)["spec"]["holderIdentity"] == "thief2"


@pytest.mark.parametrize("fault", ["drop-after", "drop"])
def test_a_write_whose_answer_was_lost_is_settled_by_reading_again(kube_api, cluster, fault):
    # drop-after: the PUT was applied but no answer came; a re-read shows that we hold the lease,
    # so it is ours (one transition, not two). drop: nothing was applied; the re-read shows the
    # lease still expired, so it is taken.
    seed(kube_api, "crashed-run", T0 - timedelta(minutes=5), transitions=1)
    kube_api.fail(method="PUT", resource="leases", status=fault)
    lease = LeaseLock(cluster, NS, NAME, identity="me", now=FakeClock())
    assert lease.try_acquire() is True and lease.held
    spec = stored(kube_api)["spec"]
    assert spec["holderIdentity"] == "me" and spec["leaseTransitions"] == 2
    assert [m for m, _ in lease_calls(kube_api)] == ["GET", "PUT", "GET", "PUT"]


def test_api_failures_are_raised_as_one_line_errors(kube_api, cluster):
    kube_api.fail(method="GET", resource="leases", status=500, times=4)  # a read is tried 4 times
    lease = LeaseLock(cluster, NS, NAME, identity="me", now=FakeClock())
    with pytest.raises(kerr.ServerError) as ei:
        lease.try_acquire()
    assert "\n" not in str(ei.value) and 'leases "kimpki-renew"' in str(ei.value)
    kube_api.deny(verb="create", resource="leases", namespace=NS)
    with pytest.raises(kerr.Forbidden) as ei:
        lease.try_acquire()
    assert ei.value.rule["resources"] == ["leases"] and ei.value.rule["verbs"] == ["create"]
    assert ei.value.rule["apiGroups"] == ["coordination.k8s.io"]
    with pytest.raises(kerr.NamespaceNotFound):
        LeaseLock(cluster, "no-such-namespace", NAME, identity="me", now=FakeClock()).try_acquire()


def test_times_are_micro_times_the_api_server_accepts(kube_api, cluster):
    lease = LeaseLock(cluster, NS, NAME, identity="me")  # the real clock
    assert lease.try_acquire()
    spec = stored(kube_api)["spec"]
    assert MICRO.match(spec["acquireTime"]) and MICRO.match(spec["renewTime"])
    assert micro_time(datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))) == "2026-01-02T01:04:05.000000Z"
    rec = LeaseRecord.from_object({"spec": {"holderIdentity": "x", "renewTime": "2026-01-02T01:04:05.5Z",
                                            "leaseDurationSeconds": 10}})
    assert rec.expires_at == datetime(2026, 1, 2, 1, 4, 15, 500000, tzinfo=timezone.utc)
    # a malformed record holds nothing
    assert not LeaseRecord.from_object({"spec": {"holderIdentity": "x", "renewTime": "soon"}}).held_at(T0)
    assert not LeaseRecord.from_object({"spec": {"holderIdentity": "x", "renewTime": micro_time(T0)}}).held_at(T0)


def test_the_stand_in_answers_lease_writes_as_kube_apiserver_does(kube_api, cluster):
    """MicroTime decoding and ValidateLeaseSpec, as a real API server answers them."""
    def create(spec, name="pin"):
        return cluster.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                               "metadata": {"name": name, "namespace": NS}, "spec": spec})

    with pytest.raises(kerr.Invalid) as ei:
        create({"renewTime": "2026-11-23T03:17:00Z"})
    assert ei.value.code == 400 and ei.value.server_message == (
        'Lease in version "v1" cannot be handled as a Lease: parsing time "2026-11-23T03:17:00Z" as '
        '"2006-01-02T15:04:05.000000Z07:00": cannot parse "Z" as ".000000"')
    with pytest.raises(kerr.Invalid) as ei:
        create({"acquireTime": "2026-11-23T03:17:00.123456789Z"})
    assert ei.value.server_message.endswith('cannot parse "789Z" as "Z07:00"')
    with pytest.raises(kerr.Invalid) as ei:
        create({"leaseDurationSeconds": 0, "leaseTransitions": -1})
    assert ei.value.code == 422 and ei.value.server_message == (
        'Lease.coordination.k8s.io "pin" is invalid: [spec.leaseDurationSeconds: Invalid value: 0: must be '
        'greater than 0, spec.leaseTransitions: Invalid value: -1: must be greater than or equal to 0]')
    obj = create({"renewTime": "2026-11-23T05:17:00.000001+02:00", "acquireTime": None})
    assert obj["spec"] == {"renewTime": "2026-11-23T03:17:00.000001Z"}


# ---------------------------------------------------------------------------------- renewal_lock
def test_the_home_lock_lets_one_run_in_and_names_it_to_the_next(tmp_path):
    home = tmp_path / "home"
    with renewal_lock(home=home, wait=0) as first:
        assert first.acquired and first.locks == [f"file {home / LOCK_FILE}"]
        holder_file = home / HOLDER_FILE
        assert stat.S_IMODE(holder_file.stat().st_mode) == 0o600
        with renewal_lock(home=home, wait=0.05) as second:
            assert not second.acquired and second.locks == []
            assert second.holder == first.identity and second.holder_since is not None
            assert second.busy_message == (
                f"another run (holder {first.identity}, since {second.holder_since:%Y-%m-%dT%H:%M:%SZ}) holds "
                f"the renewal lock (file {home / LOCK_FILE}); nothing done")
            with pytest.raises(LockLost):
                second.check()
        first.check()  # still ours
    assert not holder_file.exists()
    with renewal_lock(home=home, wait=0) as third:
        assert third.acquired


def test_a_cluster_run_holds_home_and_lease_and_gives_both_back(kube_api, cluster, tmp_path):
    with renewal_lock(home=tmp_path / "h", cluster=cluster, namespace=NS) as lock:
        assert lock.acquired
        assert lock.locks == [f"file {tmp_path / 'h' / LOCK_FILE}", f"lease {NS}/{NAME}"]
        assert stored(kube_api)["spec"]["holderIdentity"] == lock.identity
        assert re.fullmatch(r".+_\d+_[0-9a-f]{8}", lock.identity)  # hostname_pid_random
        lock.check()
    assert stored(kube_api)["spec"]["holderIdentity"] == ""
    assert lease_calls(kube_api) == [("GET", 404), ("POST", 201), ("PUT", 200)]  # 2 to take, 1 to give back
    assert lock.release_errors == [] and lock.to_dict()["acquired"] is True


def test_a_run_from_another_home_sees_the_lease_holder_and_does_nothing(kube_api, cluster, other_cluster, tmp_path):
    with renewal_lock(home=tmp_path / "a", cluster=cluster, namespace=NS) as first:
        assert first.acquired
        with renewal_lock(home=tmp_path / "b", cluster=other_cluster, namespace=NS, wait=0) as second:
            assert not second.acquired
            assert second.holder == first.identity and second.blocked_by == f"lease {NS}/{NAME}"
            assert second.holder_since is not None
            assert "nothing done" in second.busy_message and first.identity in second.busy_message
            # its own home is not kept locked while it does nothing
            with renewal_lock(home=tmp_path / "b", wait=0) as again:
                assert again.acquired
            d = second.to_dict()
            assert d["acquired"] is False and d["holder"] == first.identity and d["locks"] == []
            assert d["busy_message"] == second.busy_message


def test_a_waiting_run_gets_the_lease_when_the_holder_lets_go(kube_api, cluster, other_cluster):
    release = threading.Event()
    held = threading.Event()

    def first_run():
        with renewal_lock(cluster=cluster, namespace=NS) as lock:
            assert lock.acquired
            held.set()
            release.wait(timeout=30)

    t = threading.Thread(target=first_run)
    t.start()
    assert held.wait(timeout=30)
    gets_before = len(kube_api.calls("GET", "leases"))

    def let_go_once_the_second_run_has_polled():
        wait_until(lambda: len(kube_api.calls("GET", "leases")) >= gets_before + 2, "a second poll")
        release.set()

    helper = threading.Thread(target=let_go_once_the_second_run_has_polled)
    helper.start()
    with renewal_lock(cluster=other_cluster, namespace=NS, wait=30, poll=0.02) as second:
        assert second.acquired
        assert stored(kube_api)["spec"]["holderIdentity"] == second.identity
    helper.join(timeout=30)
    t.join(timeout=30)


def test_the_heartbeat_renews_the_lease_while_held(kube_api, cluster):
    with renewal_lock(cluster=cluster, namespace=NS, renew_every=0.02) as lock:
        first = stored(kube_api)["spec"]["renewTime"]
        wait_until(lambda: stored(kube_api)["spec"]["renewTime"] != first, "a renewal")
        spec = stored(kube_api)["spec"]
        assert spec["holderIdentity"] == lock.identity and spec["acquireTime"] == first
        lock.check()
    assert stored(kube_api)["spec"]["holderIdentity"] == ""


def test_a_lease_taken_over_while_held_is_reported_lost_and_not_released(kube_api, cluster):
    with renewal_lock(cluster=cluster, namespace=NS, renew_every=0.02) as lock:
        seed(kube_api, "thief", datetime.now(timezone.utc))  # an admin forced it, say
        wait_until(lambda: lock.lost, "the loss to be noticed")
        assert lock.lost == f"lease {NS}/{NAME} was taken over by thief"
        with pytest.raises(LockLost) as ei:
            lock.check()
        assert "lost the renewal lock" in str(ei.value) and "\n" not in str(ei.value)
        puts = len(kube_api.calls("PUT", "leases"))
    assert len(kube_api.calls("PUT", "leases")) == puts  # no release of someone else's lease
    assert stored(kube_api)["spec"]["holderIdentity"] == "thief"


def test_a_lease_not_renewed_in_time_counts_as_lost(kube_api, cluster):
    clock = FakeClock()
    with renewal_lock(cluster=cluster, namespace=NS, now=clock, renew_every=3600) as lock:
        lock.check()
        clock.advance(60)
        with pytest.raises(LockLost) as ei:
            lock.check()
        assert "expired" in str(ei.value)


def test_failing_to_take_or_give_back_the_lease(kube_api, cluster, tmp_path):
    kube_api.deny(verb="create", resource="leases", namespace=NS)
    with pytest.raises(kerr.Forbidden):
        with renewal_lock(home=tmp_path / "h", cluster=cluster, namespace=NS):
            pass  # pragma: no cover - never entered
    with renewal_lock(home=tmp_path / "h", wait=0) as again:  # the home was let go
        assert again.acquired
    kube_api.clear_faults()
    with renewal_lock(cluster=cluster, namespace=NS) as lock:
        kube_api.fail(method="PUT", resource="leases", status=500)
    assert len(lock.release_errors) == 1 and "500" in lock.release_errors[0]
