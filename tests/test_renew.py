"""`kimpki renew`: decisions with an injected clock (time-machine, in-process), and whole runs against
the Kubernetes API stand-in and folders of manifests (subprocesses, with certificates issued with a
past validity): only what is due is rotated, in place; failures, re-runs, concurrency, pagination,
the lock, logs and exit codes."""

from __future__ import annotations

import json
import shutil
import signal
import stat
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import time_machine
import yaml

from kimpki.istio.credential import CredentialMaterial, CredentialSpec, Provenance, build_credential
from kimpki.pki import keys, parse
from kimpki.pki.renewal import Jitter, RenewBefore, renewal_time
from kimpki.store import Store
from tests.conftest import assert_one_line_error, wait_until
from tests.istio_helpers import decoded
from tests.kubeapi.fixtures import *  # noqa: F401,F403

NS = "istio-system"
CA = "example.com"
DAY = timedelta(days=1)


# -- helpers (also used by test_status.py) ------------------------------------------------------------

def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def make_ca(home: Path, name: str = CA) -> None:
    from kimpki.ops import authority

    store = Store.open(home)
    try:
        authority.init_ca(store, name, org="example Inc.", common_name=None, key_type=keys.KeyType.EC_P256,
                          days=3650, passphrase=None, parent=None, parent_passphrase=authority.no_passphrase,
                          now=utc_now())
    finally:
        store.close()


def credential(home: Path, secret: str, host: str, *, age: timedelta = timedelta(0), days: float = 90,
               mutual: bool = False, ca_secret: bool = False, namespace: str = NS, fmt: str = "generic",
               now: datetime | None = None, ca: str = CA) -> list[dict]:
    """Issue a server certificate for ``host`` whose validity began ``age`` ago and lasts ``days``,
    and build its credential Secret(s) as ``kimpki secret create`` does (without its refusal of
    expired material, so that tests can hold expired credentials too)."""
    from kimpki.ops import issuing

    now = now or utc_now()
    not_before = now - age - timedelta(minutes=5)
    store = Store.open(home)
    try:
        rec = issuing.issue(store, [host], ca_name=ca, now=now, passphrase=lambda _: None,
                            not_before=not_before, not_after=not_before + days * DAY).record
        material = CredentialMaterial(rec.cert_path.read_bytes(), rec.key_path.read_bytes(),
                                      rec.ca_path.read_bytes() if mutual else None)
    finally:
        store.close()
    spec = CredentialSpec(secret, namespace, format=fmt, mutual=mutual, ca_secret=ca_secret)
    prov = Provenance(rec.name, tuple(rec.hosts), rec.ca, rec.serial, parse.rfc3339(rec.not_after))
    return list(build_credential(spec, material, prov).secrets)


def write_manifests(folder: Path, secrets: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for s in secrets:
        (folder / f"{s['metadata']['name']}.yaml").write_text(yaml.safe_dump(s, sort_keys=False))


def folder_secret(folder: Path, name: str) -> dict:
    return yaml.safe_load((folder / f"{name}.yaml").read_text())


def served_serial(secret: dict) -> str:
    data = decoded(secret)
    pem = data.get("cert") or data["tls.crt"]
    return parse.serial_hex(parse.load_certificates(pem)[0])


def kube(srv) -> dict:
    """The environment that points a kimpki subprocess at the stand-in."""
    return {"KUBECONFIG": srv.kubeconfig_path, "KUBECACHEDIR": str(Path(srv.workdir) / "kube-cache")}


def run_in_process(capsys, home: Path, *args) -> tuple[int, str, str]:
    """The real CLI entry point in this process (so that time-machine's clock applies)."""
    from kimpki.cli.main import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["--home", str(home), *map(str, args)])
    out, err = capsys.readouterr()
    return e.value.code, out, err


def versions(home: Path, name: str) -> list:
    store = Store.open(home)
    try:
        return [r for r in store.list_certs(include_history=True) if r.name == name]
    finally:
        store.close()


def put_puts(srv) -> list[str]:
    return [c["name"] for c in srv.calls(method="PUT", resource="secrets")]


# -- decisions with an injected clock (in-process) -------------------------------------------------------

@pytest.fixture
def fresh_folder(tmp_path):
    """A home with a CA and three fresh 90-day credentials in a manifests folder; returns
    (home, folder, issue time)."""
    home, folder = tmp_path / "home", tmp_path / "deploy"
    make_ca(home)
    t0 = utc_now()
    for i in range(3):
        write_manifests(folder, credential(home, f"cred-{i}", f"h{i}.example.com", now=t0))
    return home, folder, t0


@pytest.mark.parametrize("day,args,due", [
    (59, [], 0), (61, [], 3),                                     # the last third: day 60
    (59, ["--renew-before", "30d"], 0), (61, ["--renew-before", "30d"], 3),
    (61, ["--renew-before", "20d"], 0), (71, ["--renew-before", "20d"], 3),
    (59, ["--renew-before", "35%"], 3), (58, ["--renew-before", "35%"], 0),
    (91, [], 3),                                                  # expired: renewed too
])
def test_due_follows_the_clock(capsys, fresh_folder, day, args, due):
    home, folder, t0 = fresh_folder
    with time_machine.travel(t0 + day * DAY, tick=False):
        code, out, err = run_in_process(capsys, home, "renew", "--manifests", folder, "--dry-run", "--json", *args)
    assert code == 0, err
    s = json.loads(out)
    assert (s["checked"], s["due"], s["would_renew"], s["renewed"], s["failed"]) == (3, due, due, 0, 0)
    states = {r["state"] for r in s["results"]}
    assert states == ({"expired"} if day > 90 else {"due"} if due else {"valid"})
    if not due:
        assert "nothing due; next renewal" in err
        assert s["next_due"]["secret"] in {"cred-0", "cred-1", "cred-2"}


def test_renewal_under_the_clock_renews_once_then_waits_a_new_lifetime(capsys, fresh_folder):
    home, folder, t0 = fresh_folder
    before = {f"cred-{i}": served_serial(folder_secret(folder, f"cred-{i}")) for i in range(3)}
    with time_machine.travel(t0 + 61 * DAY, tick=False):
        code, out, err = run_in_process(capsys, home, "renew", "--manifests", folder, "--json")
        assert code == 0, err
        s = json.loads(out)
        assert (s["due"], s["renewed"], s["failed"]) == (3, 3, 0)
        # The same day again: the new certificates (90 days from day 61) are not due.
        code, out, err = run_in_process(capsys, home, "renew", "--manifests", folder, "--json")
        assert code == 0 and json.loads(out)["due"] == 0
        assert "nothing due" in err
    after = {n: served_serial(folder_secret(folder, n)) for n in before}
    assert all(after[n] != before[n] for n in before)
    for i in range(3):
        vs = versions(home, f"h{i}.example.com")
        assert sorted(v.state for v in vs) == ["current", "previous"]
        assert next(v for v in vs if v.state == "current").serial == after[f"cred-{i}"]
        assert next(v for v in vs if v.state == "current").not_before > t0 + 60 * DAY
    with time_machine.travel(t0 + 61 * DAY + 59 * DAY, tick=False):
        code, out, _ = run_in_process(capsys, home, "renew", "--manifests", folder, "--dry-run", "--json")
        assert json.loads(out)["due"] == 0
    with time_machine.travel(t0 + 61 * DAY + 61 * DAY, tick=False):
        code, out, _ = run_in_process(capsys, home, "renew", "--manifests", folder, "--dry-run", "--json")
        assert json.loads(out)["due"] == 3


def test_jitter_is_deterministic_and_matches_the_rule(capsys, tmp_path):
    home, folder = tmp_path / "home", tmp_path / "deploy"
    make_ca(home)
    t0 = utc_now()
    for i in range(12):
        write_manifests(folder, credential(home, f"cred-{i:02d}", f"h{i}.example.com", now=t0))
    jitter = Jitter.parse("15%")  # up to 13.5 days earlier than day 60
    code, out, _ = run_in_process(capsys, home, "renew", "--manifests", folder, "--dry-run", "--json")
    expected = {}
    for r in json.loads(out)["results"]:
        nb, na = datetime.fromisoformat(r["not_before"]), datetime.fromisoformat(r["not_after"])
        expected[r["secret"]] = at = renewal_time(nb, na, RenewBefore.parse(None), jitter=jitter, key=r["serial"])
        assert nb + 46 * DAY < at <= renewal_time(nb, na)  # never later, at most 13.5 days earlier
    # Travel to between the 6th and 7th renewal times: exactly those 6 are due.
    times = sorted(expected.values())
    day = times[5] + (times[6] - times[5]) / 2
    with time_machine.travel(day, tick=False):
        runs = [json.loads(run_in_process(capsys, home, "renew", "--manifests", folder, "--dry-run", "--json",
                                          "--jitter", "15%")[1]) for _ in range(2)]
        plain = json.loads(run_in_process(capsys, home, "renew", "--manifests", folder, "--dry-run", "--json")[1])
    assert runs[0]["results"] == runs[1]["results"]  # the same decisions, run after run
    assert runs[0]["due"] == 6
    for r in runs[0]["results"]:
        assert r["renewal_time"] == parse.rfc3339(expected[r["secret"]])
        assert r["state"] == ("due" if expected[r["secret"]] <= day else "valid")
    assert plain["due"] == 0  # without jitter nothing is due yet: jitter alone made those 6 due


# -- whole runs against the API stand-in -------------------------------------------------------------

@pytest.fixture
def three_in_cluster(kimpki, kube_api):
    """kim (due: 70 days into 90), kim-new (MUTUAL, CA in kim-new-credential-cacert) and bookinfo
    (tls form), both fresh, in the stand-in."""
    make_ca(kimpki.home)
    secrets = (credential(kimpki.home, "kim-credential", "kim.example.com", age=70 * DAY)
               + credential(kimpki.home, "kim-new-credential", "kim-new.example.com", mutual=True, ca_secret=True)
               + credential(kimpki.home, "bookinfo-credential", "bookinfo.com", fmt="tls"))
    kube_api.put_objects(secrets)
    kube_api.clear_requests()
    return kube_api


def test_only_the_due_credential_is_rotated_in_place(kimpki, three_in_cluster):
    srv = three_in_cluster
    before = {s["metadata"]["name"]: s for s in srv.list_objects("secrets", NS)}
    res = kimpki("renew", "--json", env=kube(srv))
    assert res.code == 0, res.err
    s = res.json
    assert (s["checked"], s["due"], s["renewed"], s["failed"], s["skipped"]) == (4, 1, 1, 0, 1)
    assert put_puts(srv) == ["kim-credential"]  # the others: not one write
    assert srv.calls(method="POST", resource="secrets") == [] and srv.calls(method="DELETE") == []
    # Read once, through the LIST: the update is guarded by the resourceVersion the LIST returned.
    assert [c["name"] for c in srv.calls(method="GET", resource="secrets") if c["name"]] == []
    after = {x["metadata"]["name"]: x for x in srv.list_objects("secrets", NS)}
    old, new = before["kim-credential"], after["kim-credential"]
    assert new["metadata"]["uid"] == old["metadata"]["uid"]  # updated in place, not re-created
    assert served_serial(new) != served_serial(old)
    assert new["metadata"]["annotations"]["kimpki.io/serial"] == served_serial(new)
    result = next(r for r in s["results"] if r["secret"] == "kim-credential")
    assert (result["action"], result["serial"]) == ("renewed", served_serial(old))
    assert result["new_serial"] == served_serial(new)
    for name in ("kim-new-credential", "kim-new-credential-cacert", "bookinfo-credential"):
        assert after[name] == before[name]
    skipped = next(r for r in s["results"] if r["action"] == "skipped")
    assert skipped["secret"] == "kim-new-credential-cacert" and "CA bundle of kim-new-credential" in skipped["reason"]
    # The store: the renewed serial is current and recorded as deployed to the Secret.
    cur = next(v for v in versions(kimpki.home, "kim.example.com") if v.state == "current")
    assert cur.serial == served_serial(new)
    assert {"kind": "Secret", "namespace": NS, "name": "kim-credential"}.items() <= cur.deployed_to[0].items()
    assert "renewed istio-system/kim-credential" in res.err


def test_a_mutual_credential_keeps_its_separate_ca_secret(kimpki, kube_api):
    make_ca(kimpki.home)
    kube_api.put_objects(credential(kimpki.home, "kim-new-credential", "kim-new.example.com", age=80 * DAY,
                                    mutual=True, ca_secret=True))
    kube_api.clear_requests()
    res = kimpki("renew", "--json", env=kube(kube_api))
    assert res.code == 0, res.err
    assert res.json["renewed"] == 1
    assert sorted(put_puts(kube_api)) == ["kim-new-credential", "kim-new-credential-cacert"]
    main = kube_api.get_object("secrets", NS, "kim-new-credential")
    cacert = kube_api.get_object("secrets", NS, "kim-new-credential-cacert")
    assert set(main["data"]) == {"cert", "key"}  # the CA stays in NAME-cacert, where Istio reads it first
    assert set(cacert["data"]) == {"cacert"}
    assert cacert["metadata"]["annotations"]["kimpki.io/serial"] == served_serial(main)


def test_credentials_of_two_cas_renewed_in_one_batch_each_chain_to_their_own(kimpki, tmp_path):
    """A batch checks every new credential against its CA with what it parsed once for the batch
    (the CA certificates, by content): credentials of two CAs, interleaved in one batch, are each
    checked against their own CA, renewed, and published with it."""
    make_ca(kimpki.home, "one.example")
    make_ca(kimpki.home, "two.example")
    folder = tmp_path / "deploy"
    for i in range(4):
        ca = ("one.example", "two.example")[i % 2]
        write_manifests(folder, credential(kimpki.home, f"cred-{i}", f"h{i}.{ca}", age=70 * DAY, ca=ca))
    r = kimpki("renew", "--manifests", folder, "--json")
    assert r.code == 0, r.err
    assert (r.json["renewed"], r.json["failed"]) == (4, 0), [x["reason"] for x in r.json["results"]]
    store = Store.open(kimpki.home)
    try:
        ca_certs = {ca: parse.load_certificates(store.get_ca(ca).cert_path.read_bytes())[0]
                    for ca in ("one.example", "two.example")}
    finally:
        store.close()
    for i in range(4):
        ca = ("one.example", "two.example")[i % 2]
        secret = folder_secret(folder, f"cred-{i}")
        assert secret["metadata"]["annotations"]["kimpki.io/ca"] == ca
        parse.load_certificates(decoded(secret)["cert"])[0].verify_directly_issued_by(ca_certs[ca])


def test_a_new_certificate_that_fails_its_check_is_never_published(kimpki, tmp_path):
    """Every certificate a renewal just issued is checked before its Secret is written: with the
    CA's key file swapped for another CA's key, each new signature fails to verify against the CA
    certificate, so nothing is written, the old Secrets stay, and the run fails with the reason."""
    make_ca(kimpki.home)
    make_ca(kimpki.home, "other.example")
    folder = tmp_path / "deploy"
    for i in range(2):
        write_manifests(folder, credential(kimpki.home, f"cred-{i}", f"h{i}.example.com", age=70 * DAY))
    before = {i: (folder / f"cred-{i}.yaml").read_bytes() for i in range(2)}
    store = Store.open(kimpki.home)
    try:
        ours, other = store.get_ca(CA).key_path, store.get_ca("other.example").key_path
    finally:
        store.close()
    ours.write_bytes(other.read_bytes())
    r = kimpki("renew", "--manifests", folder, "--json")
    assert r.code == 1, r.err
    assert (r.json["renewed"], r.json["failed"]) == (0, 2)
    for x in r.json["results"]:
        assert "does not chain to CA 'example.com'" in x["reason"], x["reason"]
    assert {i: (folder / f"cred-{i}.yaml").read_bytes() for i in range(2)} == before
    assert "Traceback" not in r.err


def test_nothing_due_exits_0_and_says_when_the_next_renewal_is(kimpki, kube_api):
    make_ca(kimpki.home)
    kube_api.put_objects(credential(kimpki.home, "kim-credential", "kim.example.com", age=10 * DAY)
                         + credential(kimpki.home, "bookinfo-credential", "bookinfo.com", age=20 * DAY))
    kube_api.clear_requests()
    res = kimpki("renew", env=kube(kube_api))
    assert res.code == 0, res.err
    assert res.out == ""
    # The one that started 20 days ago is due first: day 60 of its 90.
    bookinfo = kube_api.get_object("secrets", NS, "bookinfo-credential")
    cert = parse.load_certificates(decoded(bookinfo)["cert"])[0]
    when = parse.rfc3339(renewal_time(cert.not_valid_before_utc, cert.not_valid_after_utc))
    lines = res.err.strip().splitlines()
    assert len(lines) == 1
    assert f"nothing due; next renewal {when} (istio-system/bookinfo-credential)" in lines[0]
    assert put_puts(kube_api) == []


def test_json_summary_keys(kimpki, three_in_cluster):
    s = kimpki("renew", "--dry-run", "--json", env=kube(three_in_cluster)).json
    assert list(s) == ["dry_run", "time", "places", "lock", "checked", "due", "renewed", "would_renew", "failed",
                       "skipped", "deferred", "finished", "would_finish", "next_due", "errors", "crls_loaded", "crls_signed", "crls_republished",
                       "staples_refreshed", "warnings", "api_requests", "results"]
    assert s["dry_run"] is True and s["lock"] is None  # a dry run takes no lock
    assert s["places"] == [f"namespace {NS} of cluster {three_in_cluster.url}"]
    assert (s["due"], s["would_renew"], s["renewed"]) == (1, 1, 0)
    assert set(s["next_due"]) == {"time", "secret", "namespace", "place"}
    r = next(r for r in s["results"] if r["secret"] == "kim-credential")
    assert list(r) == ["secret", "namespace", "place", "certificate", "hosts", "ca", "serial", "not_before",
                       "not_after", "days_left", "renewal_time", "renew_before", "renew_before_fallback",
                       "maintenance_windows",
                       "window_decision", "next_window", "window_reason", "ocsp_staple_next_update", "state",
                       "action", "reason",
                       "new_serial", "new_not_after"]
    assert (r["state"], r["action"], r["hosts"], r["certificate"], r["ca"]) == \
        ("due", "would renew", ["kim.example.com"], "kim.example.com", CA)
    assert r["renew_before"] == "33.3333%"
    assert (r["maintenance_windows"], r["window_decision"], r["next_window"]) == ([], None, None)  # no policy
    assert put_puts(three_in_cluster) == []  # nothing written by a dry run
    assert three_in_cluster.calls(resource="leases") == []


def test_a_failed_update_fails_the_run_and_the_rerun_finishes_with_the_pending_certificate(kimpki, kube_api):
    make_ca(kimpki.home)
    kube_api.put_objects(credential(kimpki.home, "a-credential", "a.example.com", age=70 * DAY)
                         + credential(kimpki.home, "b-credential", "b.example.com", age=70 * DAY)
                         + credential(kimpki.home, "c-credential", "c.example.com", age=70 * DAY))
    a_before = kube_api.get_object("secrets", NS, "a-credential")
    others_before = {n: served_serial(kube_api.get_object("secrets", NS, n)) for n in ("b-credential", "c-credential")}
    kube_api.clear_requests()
    kube_api.fail(method="PUT", resource="secrets", name="a-credential", status=500)
    res = kimpki("renew", "--json", env=kube(kube_api))
    assert res.code == 1
    s = res.json
    assert (s["due"], s["renewed"], s["failed"]) == (3, 2, 1)
    failed = next(r for r in s["results"] if r["action"] == "failed")
    assert failed["secret"] == "a-credential"
    assert "untouched" in failed["reason"] and "kept as pending" in failed["reason"]
    assert "Traceback" not in res.err
    assert any(l.split(" ", 2)[1] == "error" and "failed istio-system/a-credential" in l for l in res.err.splitlines())
    assert kube_api.get_object("secrets", NS, "a-credential") == a_before  # still served as it was
    pending = [v for v in versions(kimpki.home, "a.example.com") if v.state == "pending"]
    assert len(pending) == 1 and pending[0].serial in failed["reason"]
    # b and c were renewed all the same: each serves a new serial, the one now current in the store.
    renewed = {r["secret"]: r["new_serial"] for r in s["results"] if r["action"] == "renewed"}
    assert sorted(renewed) == ["b-credential", "c-credential"]
    for name, host in (("b-credential", "b.example.com"), ("c-credential", "c.example.com")):
        served_now = served_serial(kube_api.get_object("secrets", NS, name))
        assert served_now == renewed[name] != others_before[name]
        assert [v.serial for v in versions(kimpki.home, host) if v.state == "current"] == [served_now]
    # The re-run: only a is due now, and it goes out with the pending certificate.
    again = kimpki("renew", "--json", env=kube(kube_api))
    assert again.code == 0, again.err
    r = again.json
    assert (r["due"], r["renewed"], r["failed"]) == (1, 1, 0)
    (done,) = [x for x in r["results"] if x["action"] in ("renewed", "resumed")]
    assert done["action"] == "resumed" and done["new_serial"] == pending[0].serial
    assert served_serial(kube_api.get_object("secrets", NS, "a-credential")) == pending[0].serial
    assert "earlier run left pending" in again.err
    assert [v.state for v in versions(kimpki.home, "a.example.com")].count("current") == 1


def expire_renewal_lease(srv) -> None:
    """What a minute without renewals does to the Lease a killed run left (its duration is 60 s)."""
    lease = srv.get_object("leases", NS, "kimpki-renew")
    past = (utc_now() - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    lease["spec"]["renewTime"] = lease["spec"]["acquireTime"] = past
    srv.put_objects([lease])


def test_a_kill_while_the_guarded_puts_run_side_by_side_loses_nothing(kimpki, kube_api):
    """renew commits a batch's new keys as pending, then sends its PUTs side by side. Killed with
    PUTs in flight (the stand-in holds eight of them): every Secret still serves a complete
    certificate and key, every new key is in the store, and the re-run finishes with those keys."""
    make_ca(kimpki.home)
    names = [f"cred-{i:02d}" for i in range(12)]
    for i, name in enumerate(names):
        kube_api.put_objects(credential(kimpki.home, name, f"h{i:02d}.example.com", age=70 * DAY))
    old = {n: served_serial(kube_api.get_object("secrets", NS, n)) for n in names}
    kube_api.clear_requests()
    kube_api.fail(method="PUT", resource="secrets", nth=5, times=8, status="delay", delay=3)
    proc = _start(kimpki, "renew", "--json", env=kube(kube_api))
    try:
        deadline = time.monotonic() + 60
        while len(kube_api.calls(method="PUT", resource="secrets")) < len(names):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL

    def check(expect_landed: bool, state: str = "pending") -> dict[str, str]:
        pending = {}
        for i, name in enumerate(names):
            (p,) = [v for v in versions(kimpki.home, f"h{i:02d}.example.com") if v.state == state]
            # The new key is in the store, private, and belongs to its certificate: recoverable.
            assert stat.S_IMODE(p.key_path.stat().st_mode) == 0o600
            assert keys.key_matches(keys.load_key(p.key_path.read_bytes()),
                                    parse.load_certificates(p.cert_path.read_bytes())[0].public_key())
            pending[name] = p.serial
            secret = kube_api.get_object("secrets", NS, name)
            data = decoded(secret)
            assert keys.key_matches(keys.load_key(data["key"]), parse.load_certificates(data["cert"])[0].public_key())
            assert served_serial(secret) in ((pending[name],) if expect_landed else (old[name], pending[name]))
        return pending

    pending = check(expect_landed=False)
    assert len(set(pending.values())) == len(names)
    # The held PUTs still land (their answers went nowhere): each Secret then serves its pending key.
    deadline = time.monotonic() + 60
    while any(served_serial(kube_api.get_object("secrets", NS, n)) != pending[n] for n in names):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    check(expect_landed=True)

    # gc keeps the pending versions the Secrets serve (it cannot see Secrets; they are valid).
    assert kimpki.json("gc", "--pending-older-than", "0s")["stale_pending"] == []
    assert check(expect_landed=True) == pending
    # Nothing is due any more (each Secret serves a fresh certificate), and nothing was lost: the
    # re-run promotes each served pending version ("finished"), writing no Secret.
    versions_before = {n: kube_api.get_object("secrets", NS, n)["metadata"]["resourceVersion"] for n in names}
    kube_api.clear_requests()
    expire_renewal_lease(kube_api)
    again = kimpki("renew", "--json", env=kube(kube_api))
    assert again.code == 0, again.err
    assert (again.json["checked"], again.json["due"], again.json["failed"]) == (len(names), 0, 0)
    assert again.json["finished"] == len(names)
    assert {r["secret"]: r["action"] for r in again.json["results"]} == {n: "finished" for n in names}
    assert put_puts(kube_api) == []
    assert {n: kube_api.get_object("secrets", NS, n)["metadata"]["resourceVersion"]
            for n in names} == versions_before
    assert check(expect_landed=True, state="current") == pending
    listed = {r["name"]: r["serial"] for r in kimpki.json("list")["items"]}
    assert {n: listed[f"h{i:02d}.example.com"] for i, n in enumerate(names)} == pending
    assert kimpki.json("gc", "--pending-older-than", "0s")["stale_pending"] == []
    assert check(expect_landed=True, state="current") == pending


def test_a_kill_before_the_puts_land_leaves_old_secrets_and_the_rerun_uses_the_pending_keys(kimpki, kube_api):
    """Killed while its PUTs are held (none applied): the old Secrets serve on, and the re-run
    sends the keys the killed run committed, issuing none."""
    make_ca(kimpki.home)
    names = [f"cred-{i:02d}" for i in range(6)]
    for i, name in enumerate(names):
        kube_api.put_objects(credential(kimpki.home, name, f"h{i:02d}.example.com", age=70 * DAY))
    before = {n: kube_api.get_object("secrets", NS, n) for n in names}
    kube_api.clear_requests()
    held = kube_api.fail(method="PUT", resource="secrets", times=len(names), status="drop")
    proc = _start(kimpki, "renew", "--json", env={**kube(kube_api), "KIMPKI_KUBE_TIMEOUT": "30"})
    try:
        deadline = time.monotonic() + 60
        while not kube_api.calls(method="PUT", resource="secrets"):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    held.remove()
    assert {n: kube_api.get_object("secrets", NS, n) for n in names} == before
    pending = {}
    for i, name in enumerate(names):
        (p,) = [v for v in versions(kimpki.home, f"h{i:02d}.example.com") if v.state == "pending"]
        pending[name] = p.serial
    expire_renewal_lease(kube_api)
    again = kimpki("renew", "--json", env=kube(kube_api))
    assert again.code == 0, again.err
    assert {x["secret"]: (x["action"], x["new_serial"]) for x in again.json["results"]} == {
        n: ("resumed", pending[n]) for n in names}
    for i, name in enumerate(names):
        assert served_serial(kube_api.get_object("secrets", NS, name)) == pending[name]
        states = sorted(v.state for v in versions(kimpki.home, f"h{i:02d}.example.com"))
        assert states == ["current", "previous"]


def test_a_kill_after_the_write_and_before_the_promotion_is_finished_by_the_next_renew(kimpki, tmp_path):
    """Killed the moment the due credential's document is in place (its pending version not yet
    promoted): the folder serves the new certificate, the store calls it pending. gc keeps it (a
    Secret serves it, which gc cannot see), and the next renew promotes it without writing the
    document again, reporting it as finished; gc afterwards keeps it too."""
    folder = tmp_path / "deploy"
    make_ca(kimpki.home)
    write_manifests(folder, credential(kimpki.home, "cred-0", "h0.example.com", age=70 * DAY))
    write_manifests(folder, credential(kimpki.home, "cred-1", "h1.example.com"))  # not due
    marker = tmp_path / "killed-at"
    killed = kimpki("renew", "--manifests", folder, env={"KIMPKI_TEST_KILL_AT": "placed deploy/cred-0.yaml",
                                                          "KIMPKI_TEST_KILL_MARKER": str(marker)})
    assert killed.code == -signal.SIGKILL and marker.read_text() == "placed deploy/cred-0.yaml\n", killed.err
    (pending,) = [v for v in versions(kimpki.home, "h0.example.com") if v.state == "pending"]
    assert served_serial(folder_secret(folder, "cred-0")) == pending.serial  # written, not promoted
    written = (folder / "cred-0.yaml").stat()

    def kept_by_gc() -> None:
        assert kimpki.json("gc", "--pending-older-than", "0s")["stale_pending"] == []
        assert pending.key_path.read_bytes() and pending.cert_path.read_bytes()
        assert pending.serial in [v.serial for v in versions(kimpki.home, "h0.example.com")]

    kept_by_gc()  # still pending, but valid: what the folder serves
    # status only reads: it says so, and what will finish it.
    st = kimpki.json("status", "--manifests", folder)
    assert [(u["secret"], u["serial"]) for u in st["unfinished"]] == [("cred-0", pending.serial)]
    assert "the next 'kimpki renew' promotes it" in {c["secret"]: c for c in st["credentials"]}["cred-0"]["reason"]
    assert f"cred-0: serves serial {pending.serial}, still pending" in kimpki.ok("status", "--manifests", folder).out
    assert [v.state for v in versions(kimpki.home, "h0.example.com")].count("pending") == 1
    # A dry run says what the real one will do, and promotes nothing.
    dry = kimpki("renew", "--manifests", folder, "--dry-run", "--json")
    assert dry.code == 0, dry.err
    assert (dry.json["finished"], dry.json["would_finish"], dry.json["would_renew"]) == (0, 1, 0), dry.json
    assert {r["secret"]: r["action"] for r in dry.json["results"]} == {"cred-0": "would finish", "cred-1": "not due"}
    assert f"would finish istio-system/cred-0" in dry.err and pending.serial in dry.err
    assert "would finish 1" in dry.err.splitlines()[-1]
    assert [v.state for v in versions(kimpki.home, "h0.example.com")].count("pending") == 1
    again = kimpki("renew", "--manifests", folder, "--json")
    assert again.code == 0, again.err
    s = again.json
    assert (s["due"], s["renewed"], s["failed"], s["finished"], s["would_finish"]) == (0, 0, 0, 1, 0), s
    by = {r["secret"]: r for r in s["results"]}
    assert (by["cred-0"]["action"], by["cred-0"]["serial"]) == ("finished", pending.serial)
    assert by["cred-1"]["action"] == "not due"
    assert f"finished istio-system/cred-0" in again.err and pending.serial in again.err
    assert "finished 1" in again.err.splitlines()[-1]
    after = (folder / "cred-0.yaml").stat()
    assert (after.st_ino, after.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)  # not written again
    listed = {r["name"]: r for r in kimpki.json("list")["items"]}
    assert listed["h0.example.com"]["serial"] == pending.serial
    assert sorted(v.state for v in versions(kimpki.home, "h0.example.com")) == ["current", "previous"]
    assert (kimpki.home / "certs/h0.example.com/current").resolve().name == pending.serial
    kept_by_gc()
    assert kimpki.json("status", "--manifests", folder)["unfinished"] == []
    # Finished once: the next run has nothing left to finish.
    assert kimpki.json("renew", "--manifests", folder)["finished"] == 0


def test_a_broken_secret_fails_with_its_reason_and_the_rest_is_renewed(kimpki, kube_api):
    make_ca(kimpki.home)
    good = credential(kimpki.home, "good-credential", "good.example.com", age=70 * DAY)
    (no_ann,) = credential(kimpki.home, "bare-credential", "bare.example.com", age=70 * DAY)
    del no_ann["metadata"]["annotations"]["kimpki.io/hosts"]
    (garbled,) = credential(kimpki.home, "garbled-credential", "garbled.example.com")
    garbled["data"]["cert"] = "bm90IGEgY2VydGlmaWNhdGU="  # "not a certificate"
    kube_api.put_objects(good + [no_ann, garbled])
    res = kimpki("renew", "--json", env=kube(kube_api))
    assert res.code == 1
    s = res.json
    assert (s["checked"], s["due"], s["renewed"], s["failed"]) == (3, 1, 1, 2)
    by = {r["secret"]: r for r in s["results"]}
    assert by["bare-credential"]["state"] == "broken"
    assert "lacks the annotation(s) kimpki.io/hosts" in by["bare-credential"]["reason"]
    assert by["garbled-credential"]["state"] == "broken"
    assert "serves no readable certificate" in by["garbled-credential"]["reason"]
    assert by["good-credential"]["action"] == "renewed"
    assert "Traceback" not in res.err


def test_pagination_and_requests(kimpki, kube_api):
    """1,234 managed Secrets, 500 a page: 3 LIST requests. A real run adds the Lease: GET, create,
    and the release; and one read of the cluster's revocation state (there is none)."""
    make_ca(kimpki.home)
    (template,) = credential(kimpki.home, "template", "t.example.com", age=DAY)
    objs = []
    for i in range(1234):
        s = json.loads(json.dumps(template))
        s["metadata"]["name"] = f"cred-{i:04d}"
        objs.append(s)
    kube_api.put_objects(objs)
    kube_api.clear_requests()
    s = kimpki("renew", "--dry-run", "--json", env=kube(kube_api)).json
    assert (s["checked"], s["due"]) == (1234, 0)
    lists = [r for r in kube_api.requests if r[0] == "GET" and r[1] == f"/api/v1/namespaces/{NS}/secrets"]
    assert len(lists) == 3 and len(kube_api.requests) == 3 == s["api_requests"]
    assert all("limit=500" in q and "labelSelector=app.kubernetes.io/managed-by%3Dkimpki" in q
               for _, _, q in lists)
    assert sum("continue=" in q for _, _, q in lists) == 2
    kube_api.clear_requests()
    s = kimpki("renew", "--json", env=kube(kube_api)).json
    assert s["checked"] == 1234 and s["lock"]["acquired"]
    leases = [(c["method"], c["name"]) for c in kube_api.calls(resource="leases")]
    assert leases == [("GET", "kimpki-renew"), ("POST", None), ("PUT", "kimpki-renew")]
    assert [(c["method"], c["name"]) for c in kube_api.calls(resource="configmaps")] == [("GET", "kimpki-revocations")]
    assert len(kube_api.requests) == 7
    lease = kube_api.get_object("leases", NS, "kimpki-renew")
    assert lease["spec"]["holderIdentity"] == ""  # released: the next run need not wait


def seed_copies(kimpki, kube_api, n: int, *, age: timedelta = DAY) -> None:
    """``n`` managed Secrets that serve one certificate (cheap: one issuance)."""
    make_ca(kimpki.home)
    (template,) = credential(kimpki.home, "template", "t.example.com", age=age)
    objs = []
    for i in range(n):
        s = json.loads(json.dumps(template))
        s["metadata"]["name"] = f"cred-{i:04d}"
        objs.append(s)
    kube_api.put_objects(objs)
    kube_api.clear_requests()


def secret_lists(srv) -> list[dict]:
    return [c for c in srv.calls(method="GET", resource="secrets") if not c["name"]]


def test_an_expired_continue_token_is_listed_again_once_in_one_request(kimpki, kube_api):
    """Issue 10 item 10: etcd compacted the revision a continue token points at (410 Expired on a
    later page). renew lists again in one request, as client-go's pager does, and goes on."""
    seed_copies(kimpki, kube_api, 1234)
    kube_api.fail("GET", "secrets", status=410, query="continue")
    res = kimpki("renew", "--dry-run", "--json", env=kube(kube_api))
    assert res.code == 0, res.err
    s = res.json
    assert (s["checked"], s["due"], s["errors"]) == (1234, 0, [])
    assert len({r["secret"] for r in s["results"]}) == 1234 or s["results"] == []
    lists = secret_lists(kube_api)
    assert [c["code"] for c in lists] == [200, 410, 200]
    assert "limit=" not in lists[2]["query"] and "continue=" not in lists[2]["query"]
    (notice,) = [l for l in res.err.splitlines() if " warning " in l]
    assert "410 Expired" in notice and "listing them again in one request" in notice


def test_a_list_that_expires_again_fails_the_run_clearly(kimpki, kube_api):
    seed_copies(kimpki, kube_api, 600)
    kube_api.fail("GET", "secrets", status=410, query="continue")
    kube_api.fail("GET", "secrets", status=410, nth=2)
    res = kimpki("status", "--cluster", env=kube(kube_api))
    assert_one_line_error(res, 1, "expired the list of secrets", "and again when it was listed in one request",
                          "run the command again")
    assert [c["code"] for c in secret_lists(kube_api)] == [200, 410, 410]


def test_429_with_retry_after_is_waited_out_and_said_in_the_log(kimpki, kube_api):
    """Issue 10 item 11: API Priority and Fairness answers 429 with Retry-After. The LIST and the
    resourceVersion-guarded PUT are sent again after the wait; the log says so."""
    make_ca(kimpki.home)
    kube_api.put_objects(credential(kimpki.home, "kim-credential", "kim.example.com", age=70 * DAY))
    kube_api.clear_requests()
    kube_api.fail("GET", "secrets", status=429, retry_after=1)
    kube_api.fail("PUT", "secrets", status=429, retry_after=1)
    res = kimpki("renew", "--log-format", "json", env=kube(kube_api))
    assert res.code == 0, res.err
    lines = [json.loads(l) for l in res.err.strip().splitlines()]
    waits = [l for l in lines if l["event"] == "api_pushback"]
    assert [l["level"] for l in waits] == ["warning", "warning"]
    assert "list secrets" in waits[0]["message"] and "update secrets" in waits[1]["message"]
    assert all("answered 429" in w["message"] and "retry after 1 s: waiting" in w["message"] for w in waits)
    assert [c["code"] for c in secret_lists(kube_api)] == [429, 200]
    assert [c["code"] for c in kube_api.calls(method="PUT", resource="secrets")] == [429, 200]
    assert lines[-1]["renewed"] == 1


def test_qps_and_burst_limit_the_client(kimpki, kube_api):
    seed_copies(kimpki, kube_api, 3, age=70 * DAY)
    res = kimpki("renew", "--qps", "50", "--burst", "2", "--json", env=kube(kube_api))
    assert res.code == 0, res.err
    assert res.json["renewed"] == 3
    assert_one_line_error(kimpki("renew", "--burst", "5"), 2, "--burst needs --qps")
    assert_one_line_error(kimpki("renew", "--qps", "-1"), 2, "--qps")


def test_all_namespaces_and_one_namespace(kimpki, kube_api):
    make_ca(kimpki.home)
    kube_api.put_objects(credential(kimpki.home, "a", "a.example.com", age=70 * DAY, namespace="default")
                         + credential(kimpki.home, "b", "b.example.com", age=70 * DAY))
    one = kimpki("renew", "--dry-run", "--json", env=kube(kube_api)).json
    assert [r["namespace"] for r in one["results"]] == [NS]
    other = kimpki("renew", "-n", "default", "--dry-run", "--json", env=kube(kube_api)).json
    assert [r["namespace"] for r in other["results"]] == ["default"]
    every = kimpki("renew", "--all-namespaces", "--dry-run", "--json", env=kube(kube_api)).json
    assert sorted(r["namespace"] for r in every["results"]) == ["default", NS]


# -- concurrency ------------------------------------------------------------------------------------

def _start(kimpki, *args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kimpki", *map(str, args)], cwd=kimpki.cwd,
                            env={**kimpki.env, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_two_concurrent_runs_on_one_folder_renew_each_credential_once(kimpki, tmp_path):
    folder = tmp_path / "deploy"
    make_ca(kimpki.home)
    for i in range(6):
        write_manifests(folder, credential(kimpki.home, f"cred-{i}", f"h{i}.example.com", age=70 * DAY))
    procs = [_start(kimpki, "renew", "--manifests", folder, "--json", "--lock-wait", "60") for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    summaries = [json.loads(o) for o, _ in outs]
    assert sorted(s["renewed"] for s in summaries) == [0, 6]  # the second found nothing left to do
    for i in range(6):
        states = sorted(v.state for v in versions(kimpki.home, f"h{i}.example.com"))
        assert states == ["current", "previous"]  # one new version each, not two
        cur = next(v for v in versions(kimpki.home, f"h{i}.example.com") if v.state == "current")
        assert served_serial(folder_secret(folder, f"cred-{i}")) == cur.serial


def test_two_concurrent_runs_from_two_homes_share_the_lease(kimpki, kube_api, tmp_path):
    """An admin's crontab and the in-cluster CronJob: different homes (each with the CA), one
    cluster. The Lease keeps them apart: each due Secret is written exactly once."""
    make_ca(kimpki.home)
    names = [f"cred-{i}" for i in range(6)]
    for i, n in enumerate(names):
        kube_api.put_objects(credential(kimpki.home, n, f"h{i}.example.com", age=70 * DAY))
    other_home = tmp_path / "other-home"
    shutil.copytree(kimpki.home, other_home, symlinks=True)  # certs/NAME/current is a symlink
    kube_api.clear_requests()
    procs = [_start(kimpki, "renew", "--json", "--lock-wait", "60", env=kube(kube_api)),
             _start(kimpki, "--home", other_home, "renew", "--json", "--lock-wait", "60", env=kube(kube_api))]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(json.loads(o)["renewed"] for o, _ in outs) == [0, 6]
    assert sorted(put_puts(kube_api)) == names  # one PUT per Secret
    assert len({served_serial(kube_api.get_object("secrets", NS, n)) for n in names}) == 6


def test_a_held_lock_means_nothing_done_and_exit_0(kimpki, tmp_path):
    from kimpki.ops.locking import renewal_lock

    folder = tmp_path / "deploy"
    make_ca(kimpki.home)
    write_manifests(folder, credential(kimpki.home, "cred", "h.example.com", age=70 * DAY))
    before = (folder / "cred.yaml").read_bytes()
    with renewal_lock(home=kimpki.home, wait=0, identity="other-run") as held:
        assert held.acquired
        res = kimpki("renew", "--manifests", folder, "--lock-wait", "0", "--json")
        text = kimpki("renew", "--manifests", folder, "--lock-wait", "0")
    assert res.code == 0 and text.code == 0
    assert res.json["lock"]["acquired"] is False and res.json["checked"] == 0
    assert "another run (holder other-run" in text.err and "nothing done" in text.err
    assert len(text.err.strip().splitlines()) == 1
    assert (folder / "cred.yaml").read_bytes() == before
    assert len(versions(kimpki.home, "h.example.com")) == 1


# -- logs, exit codes, usage ---------------------------------------------------------------------------

def test_log_format_json_lines_parse(kimpki, kube_api):
    make_ca(kimpki.home)
    kube_api.put_objects(credential(kimpki.home, "a-credential", "a.example.com", age=70 * DAY)
                         + credential(kimpki.home, "b-credential", "b.example.com", age=70 * DAY)
                         + credential(kimpki.home, "c-credential", "c.example.com"))
    kube_api.fail(method="PUT", resource="secrets", name="b-credential", status=500)
    res = kimpki("renew", "--log-format", "json", env=kube(kube_api))
    assert res.code == 1 and res.out == ""
    lines = [json.loads(l) for l in res.err.strip().splitlines()]
    assert [(l["event"], l.get("secret")) for l in lines] == [
        ("renewed", "a-credential"), ("failed", "b-credential"), ("summary", None)]
    for l in lines:
        assert {"time", "level", "event", "message"} <= set(l)
        assert datetime.fromisoformat(l["time"]).tzinfo is not None
    renewed, failed, summary = lines
    assert (renewed["level"], renewed["namespace"]) == ("info", NS)
    assert renewed["serials"]["old"] != renewed["serials"]["new"] and renewed["serials"]["new"]
    assert failed["level"] == "error" and "(500 InternalError)" in failed["reason"]
    assert (summary["level"], summary["checked"], summary["renewed"], summary["failed"]) == ("error", 3, 1, 1)
    assert summary["next_due"]["secret"] == "c-credential"


def test_log_format_json_reports_a_fatal_error_as_json(kimpki, tmp_path):
    # No cluster at all: the kubeconfig points nowhere useful.
    bad = tmp_path / "kubeconfig"
    bad.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "clusters": [
        {"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}], "users": [{"name": "u", "user": {"token": "x"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}], "current-context": "x"}))
    res = kimpki("renew", "--log-format", "json", "--kubeconfig", bad, env={"KIMPKI_KUBE_TIMEOUT": "2"})
    assert res.code == 1
    (line,) = [json.loads(l) for l in res.err.strip().splitlines()]
    assert line["level"] == "error" and line["event"] == "error" and "127.0.0.1:1" in line["message"]
    text = kimpki("renew", "--kubeconfig", bad, env={"KIMPKI_KUBE_TIMEOUT": "2"})
    assert_one_line_error(text, 1, "127.0.0.1:1")


@pytest.mark.parametrize("args,needle", [
    (["--renew-before", "banana"], "invalid --renew-before 'banana'"),
    (["--renew-before", "100%"], "between 0 and 100"),
    (["--jitter", "soon"], "invalid --jitter 'soon'"),
    (["-n", "a", "--all-namespaces"], "not both"),
    (["--manifests", "/nonexistent/folder"], "no such manifests folder"),
    (["--manifests", ".", "--kubeconfig", "x"], "--kubeconfig/--context choose a cluster"),
    (["--lock-wait", "-1"], "--lock-wait"),
    (["--burst", "0", "--qps", "1"], "--burst"),
    (["--log-format", "xml"], "--log-format"),
])
def test_usage_errors_exit_2_with_one_line(kimpki, args, needle):
    res = kimpki("renew", *args)
    assert_one_line_error(res, 2, needle)


def test_help_has_examples_and_exit_codes(kimpki):
    out = kimpki.ok("renew", "--help").out
    for needle in ("Examples:", "kimpki renew --manifests ./deploy", "--renew-before", "--jitter", "--log-format",
                   "--lock-wait", "Exit codes:", "stderr"):
        assert needle in out


def test_renew_from_a_policy_uses_its_renew_before(capsys, tmp_path):
    """--policy sweeps the folder the policy's Target names, and a Certificate's renewBefore
    decides for the Secrets built from it; other Secrets there follow the default rule."""
    home, pol = tmp_path / "home", tmp_path / "policy"
    out = pol / "out"
    make_ca(home)
    t0 = utc_now()
    write_manifests(out, credential(home, "kim-credential", "kim.example.com", now=t0)
                    + credential(home, "other-credential", "other.example.com", now=t0))
    pol.mkdir(exist_ok=True)
    (pol / "policy.yaml").write_text("""\
apiVersion: kimpki.io/v1alpha1
kind: Target
metadata: {name: local}
spec: {manifests: out}
---
apiVersion: kimpki.io/v1alpha1
kind: CertificateAuthority
metadata: {name: example.com}
spec: {org: example Inc.}
---
apiVersion: kimpki.io/v1alpha1
kind: Certificate
metadata: {name: kim.example.com}
spec: {hosts: [kim.example.com], ca: example.com, duration: 90d, renewBefore: 45d}
---
apiVersion: kimpki.io/v1alpha1
kind: Credential
metadata: {name: kim-credential, namespace: istio-system}
spec: {certificate: kim.example.com}
""")
    with time_machine.travel(t0 + 50 * DAY, tick=False):
        code, out_json, err = run_in_process(capsys, home, "renew", "--policy", pol, "--dry-run", "--json")
    assert code == 0, err
    s = json.loads(out_json)
    by = {r["secret"]: r for r in s["results"]}
    assert (by["kim-credential"]["state"], by["kim-credential"]["renew_before"]) == ("due", "45d")
    assert (by["other-credential"]["state"], by["other-credential"]["renew_before"]) == ("valid", "33.3333%")
    assert len(s["places"]) == 1 and s["places"][0].startswith("manifests ") and s["places"][0].endswith("out")


# -- maintenance windows (a policy's, decided under an injected clock) --------------------------------

WINDOWED_POLICY = """\
apiVersion: kimpki.io/v1alpha1
kind: Target
metadata: {name: local}
spec:
  manifests: out
  maintenanceWindows:           # every credential of this Target: Saturdays 02:00-06:00 UTC
  - days: [Sat]
    start: 02:00
    duration: 4h
---
apiVersion: kimpki.io/v1alpha1
kind: CertificateAuthority
metadata: {name: example.com}
spec: {org: example Inc.}
---
apiVersion: kimpki.io/v1alpha1
kind: Certificate
metadata: {name: kim.example.com}
spec: {hosts: [kim.example.com], ca: example.com}
---
apiVersion: kimpki.io/v1alpha1
kind: Credential
metadata: {name: kim-credential, namespace: istio-system}
spec: {certificate: kim.example.com}
"""


@pytest.fixture
def windowed(tmp_path):
    """A policy whose Target allows renewal on Saturdays 02:00-06:00 UTC, and kim-credential (90 days)
    issued on a Monday 00:00 UTC (t0): due from day 60 (a Friday); day 61 is a Saturday. Returns
    (home, policy folder, manifests folder, t0)."""
    home, pol = tmp_path / "home", tmp_path / "policy"
    out = pol / "out"
    make_ca(home)
    now = utc_now()
    t0 = (now + timedelta(days=7 - now.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    assert t0.weekday() == 0 and t0 > now
    write_manifests(out, credential(home, "kim-credential", "kim.example.com", now=t0 + timedelta(minutes=5)))
    pol.mkdir(exist_ok=True)
    (pol / "policy.yaml").write_text(WINDOWED_POLICY)
    return home, pol, out, t0


def test_inside_the_window_a_due_credential_is_renewed(capsys, windowed):
    home, pol, out, t0 = windowed
    before = served_serial(folder_secret(out, "kim-credential"))
    with time_machine.travel(t0 + 61 * DAY + timedelta(hours=3), tick=False):  # Saturday 03:00
        code, out_json, err = run_in_process(capsys, home, "renew", "--policy", pol, "--json")
    assert code == 0, err
    s = json.loads(out_json)
    assert (s["due"], s["renewed"], s["deferred"], s["failed"]) == (1, 1, 0, 0)
    (r,) = s["results"]
    assert (r["action"], r["window_decision"], r["next_window"]) == ("renewed", "renew", None)
    assert r["maintenance_windows"] == ["Sat 02:00 UTC for 4h"]
    assert served_serial(folder_secret(out, "kim-credential")) == r["new_serial"] != before
    assert "outside" not in err


def test_outside_the_window_a_due_credential_is_deferred_and_nothing_is_written(capsys, windowed):
    home, pol, out, t0 = windowed
    path = out / "kim-credential.yaml"
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    next_window = parse.rfc3339(t0 + 68 * DAY + timedelta(hours=2))  # the Saturday after
    with time_machine.travel(t0 + 61 * DAY + timedelta(hours=12), tick=False):  # Saturday noon
        code, out_json, err = run_in_process(capsys, home, "renew", "--policy", pol, "--json")
        assert code == 0, err
        s = json.loads(out_json)
        assert list(s)[list(s).index("skipped") + 1] == "deferred"
        assert (s["checked"], s["due"], s["renewed"], s["deferred"], s["failed"]) == (1, 1, 0, 1, 0)
        (r,) = s["results"]
        assert (r["state"], r["action"], r["window_decision"], r["next_window"]) == \
            ("due", "deferred", "defer", next_window)
        assert r["new_serial"] is None and f"next opens {next_window}" in r["reason"]
        assert "deferred istio-system/kim-credential" in err and f"next opens {next_window}" in err
        assert "deferred 1" in err and f"next maintenance window {next_window} (istio-system/kim-credential)" in err
        # JSON log lines carry the same.
        code, _, err = run_in_process(capsys, home, "renew", "--policy", pol, "--log-format", "json")
        events = [json.loads(line) for line in err.splitlines()]
        assert code == 0 and [e["event"] for e in events] == ["deferred", "summary"]
        assert events[0]["next_window"] == next_window and events[1]["deferred"] == 1
        # status shows where renew will wait.
        code, status_json, _ = run_in_process(capsys, home, "status", "--policy", pol, "--json")
        (c,) = json.loads(status_json)["credentials"]
        assert (c["state"], c["window_decision"], c["next_window"]) == ("due", "defer", next_window)
        code, text, _ = run_in_process(capsys, home, "status", "--policy", pol)
        assert f"due, window {next_window[:16].replace('T', ' ')}" in text
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime  # not one byte written
    assert [v.state for v in versions(home, "kim.example.com")] == ["current"]  # nothing issued either


@pytest.mark.parametrize("days,offset,needle", [
    # Saturday noon, day 89: notAfter (day 90, a Monday) comes before the next Saturday's window.
    (90, 89 * DAY + timedelta(hours=12), "would expire at"),
    # Friday noon, day 81, for a certificate valid until Saturday 20:00 (day 82): that Saturday's
    # window opens 18 hours before notAfter, inside the safety margin of a day.
    (82 + 20 / 24, 81 * DAY + timedelta(hours=12), "less than 1d before notAfter"),
    # Tuesday, day 91: expired.
    (90, 91 * DAY, "expired at"),
])
def test_outside_the_window_but_out_of_time_it_is_renewed_with_the_reason(capsys, windowed, days, offset, needle):
    home, pol, out, t0 = windowed
    write_manifests(out, credential(home, "kim-credential", "kim.example.com", days=days,
                                    now=t0 + timedelta(minutes=5)))  # notBefore t0
    before = served_serial(folder_secret(out, "kim-credential"))
    with time_machine.travel(t0 + offset, tick=False):
        code, out_json, err = run_in_process(capsys, home, "renew", "--policy", pol, "--json")
    assert code == 0, err
    s = json.loads(out_json)
    assert (s["renewed"], s["deferred"]) == (1, 0)
    (r,) = s["results"]
    assert (r["action"], r["window_decision"]) == ("renewed", "override")
    assert needle in r["window_reason"] and r["next_window"] is not None
    assert served_serial(folder_secret(out, "kim-credential")) == r["new_serial"] != before
    assert "renewing outside its maintenance windows: " in err and needle in err


def test_a_current_folder_that_is_not_a_link_fails_that_credential_alone_in_one_line(kimpki, tmp_path):
    """A store whose ``certs/NAME/current`` is a real folder (not kimpki's link) is damage kimpki does
    not repair by itself (the folder may hold someone's files): renew reports it for that credential
    in one line naming the path, renews the others, and leaves the folder as it was; once it is
    moved away, rotate finishes with the certificate the Secret already serves."""
    folder = tmp_path / "deploy"
    make_ca(kimpki.home)
    for i in range(3):
        write_manifests(folder, credential(kimpki.home, f"cred-{i}", f"h{i}.example.com", age=70 * DAY))
    current = kimpki.home / "certs" / "h1.example.com" / "current"
    current.unlink()
    current.mkdir()
    (current / "note.txt").write_text("someone's file\n")
    res = kimpki("renew", "--manifests", folder, "--json")
    assert res.code == 1, res.err
    s = res.json
    assert (s["renewed"], s["failed"]) == (2, 1), s
    by = {r["secret"]: r for r in s["results"]}
    reason = by["cred-1"]["reason"]
    assert f"{current} is a folder, not the symbolic link" in reason and "\n" not in reason, reason
    assert "unexpected" not in reason and "Traceback" not in res.err
    assert (current / "note.txt").read_text() == "someone's file\n"  # nothing of it removed
    for i in (0, 2):
        cur = next(v for v in versions(kimpki.home, f"h{i}.example.com") if v.state == "current")
        assert served_serial(folder_secret(folder, f"cred-{i}")) == cur.serial
    pending = next(v for v in versions(kimpki.home, "h1.example.com") if v.state == "pending")
    assert served_serial(folder_secret(folder, "cred-1")) == pending.serial  # written, not promoted
    # kimpki rotate of that one credential says the same in one line.
    assert_one_line_error(kimpki("rotate", "cred-1", "--manifests", folder), 1, str(current), "is a folder")
    current.rename(current.with_name("current.damaged"))
    res = kimpki("rotate", "cred-1", "--manifests", folder, "--json")
    assert res.code == 0, res.err
    assert (res.json["action"], res.json["new_serial"]) == ("resumed", pending.serial)
    assert (kimpki.home / "certs" / "h1.example.com" / "current").resolve().name == pending.serial


def test_the_next_batch_is_issued_while_the_secrets_of_the_previous_one_are_written(kimpki, kube_api, tmp_path):
    """Renew takes due credentials 100 at a time; batch 2's new versions go into the store while
    batch 1's PUTs are still held by the API server (the first 8 are delayed), and every
    credential is renewed, each Secret serving its new pending-then-current version."""
    make_ca(kimpki.home)
    n = 101
    for i in range(n):
        kube_api.put_objects(credential(kimpki.home, f"cred-{i:03d}", f"h{i:03d}.example.com", age=70 * DAY))
    old = {i: served_serial(kube_api.get_object("secrets", NS, f"cred-{i:03d}")) for i in range(n)}
    kube_api.clear_requests()
    kube_api.fail(method="PUT", resource="secrets", nth=1, times=8, status="delay", delay=6)
    out_file, err_file = tmp_path / "renew.json", tmp_path / "renew.log"
    with out_file.open("w") as out, err_file.open("w") as err:  # files: a full pipe would stall it
        proc = subprocess.Popen([sys.executable, "-m", "kimpki", "renew", "--json"], cwd=kimpki.cwd,
                                env={**kimpki.env, **kube(kube_api)}, stdout=out, stderr=err)
    try:
        last = "h100.example.com"
        wait_until(lambda: proc.poll() is not None or any(v.state == "pending" for v in versions(kimpki.home, last)),
                   f"a pending version of {last} (batch 2)")
        renewed_meanwhile = sum(served_serial(kube_api.get_object("secrets", NS, f"cred-{i:03d}")) != old[i]
                                for i in range(n - 1))
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert renewed_meanwhile < n - 1, "batch 2 was issued only after every PUT of batch 1 had landed"
    assert proc.returncode == 0, err_file.read_text()
    s = json.loads(out_file.read_text())
    assert (s["renewed"], s["failed"]) == (n, 0)
    assert len(kube_api.calls(method="PUT", resource="secrets")) == n  # one guarded PUT each
    for i in range(n):
        (cur,) = [v for v in versions(kimpki.home, f"h{i:03d}.example.com") if v.state == "current"]
        assert served_serial(kube_api.get_object("secrets", NS, f"cred-{i:03d}")) == cur.serial != old[i]
