"""`kimpki status`: the store's inventory, or the credential Secrets of a cluster / folder / policy,
with states (valid, due, expired, not-yet-valid, broken) and --fail-on for monitoring."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import time_machine

from kimpki.pki import parse
from kimpki.pki.renewal import renewal_time
from tests.conftest import assert_one_line_error
from tests.istio_helpers import decoded
from tests.kubeapi.fixtures import *  # noqa: F401,F403
from tests.test_renew import (DAY, NS, credential, kube, make_ca, run_in_process, utc_now, write_manifests)


@pytest.fixture
def mixed_cluster(kimpki, kube_api):
    """valid, due, expired, not-yet-valid and broken credentials, and a CA-only Secret, in the stand-in."""
    make_ca(kimpki.home)
    (broken,) = credential(kimpki.home, "broken-credential", "broken.example.com")
    del broken["metadata"]["annotations"]["kimpki.io/store-name"]
    kube_api.put_objects(
        credential(kimpki.home, "valid-credential", "valid.example.com", age=10 * DAY)
        + credential(kimpki.home, "due-credential", "due.example.com", age=70 * DAY)
        + credential(kimpki.home, "expired-credential", "expired.example.com", age=100 * DAY)
        + credential(kimpki.home, "future-credential", "future.example.com", age=-3 * DAY)
        + credential(kimpki.home, "mutual-credential", "mutual.example.com", mutual=True, ca_secret=True)
        + [broken])
    kube_api.clear_requests()
    return kube_api


def test_cluster_states_table_and_json(kimpki, mixed_cluster):
    srv = mixed_cluster
    d = kimpki.json("status", "--cluster", env=kube(srv))
    assert d["source"] == "places" and d["places"] == [f"namespace {NS} of cluster {srv.url}"]
    states = {c["secret"]: c["state"] for c in d["credentials"]}
    assert states == {"valid-credential": "valid", "due-credential": "due", "expired-credential": "expired",
                      "future-credential": "not-yet-valid", "mutual-credential": "valid",
                      "broken-credential": "broken"}
    assert d["counts"] == {"valid": 2, "due": 1, "expired": 1, "not-yet-valid": 1, "broken": 1}
    assert [s["secret"] for s in d["skipped"]] == ["mutual-credential-cacert"]
    due = next(c for c in d["credentials"] if c["secret"] == "due-credential")
    cert = parse.load_certificates(decoded(srv.get_object("secrets", NS, "due-credential"))["cert"])[0]
    assert due["serial"] == parse.serial_hex(cert)
    assert due["not_after"] == parse.rfc3339(cert.not_valid_after_utc)
    assert due["renewal_time"] == parse.rfc3339(renewal_time(cert.not_valid_before_utc, cert.not_valid_after_utc))
    assert due["days_left"] in (19, 20) and due["hosts"] == ["due.example.com"]
    broken = next(c for c in d["credentials"] if c["secret"] == "broken-credential")
    assert "kimpki.io/store-name" in broken["reason"]
    # Reading only: one LIST, nothing written, no Lease.
    assert [(c["method"], c["resource"]) for c in srv.calls()] == [("GET", "secrets")]

    text = kimpki.ok("status", "--cluster", env=kube(srv)).out
    lines = text.splitlines()
    assert lines[0].split() == ["NAMESPACE", "SECRET", "HOSTS", "NOT", "AFTER", "DAYS", "RENEWAL", "DUE", "STATE"]
    row = next(l for l in lines if "due-credential" in l)
    assert row.split()[0] == NS and row.split()[-1] == "due" and "due.example.com" in row
    assert "broken:" in text and "broken-credential" in text.split("broken:")[1]


@pytest.mark.parametrize("fail_on,code", [(None, 0), ("due", 1), ("expired", 1)])
def test_fail_on_with_an_expired_credential(kimpki, mixed_cluster, fail_on, code):
    res = kimpki("status", "-n", NS, *(["--fail-on", fail_on] if fail_on else []), env=kube(mixed_cluster))
    assert res.code == code, res.err
    if code:
        assert "Traceback" not in res.err and f"(--fail-on {fail_on})" in res.err


def test_fail_on_due_and_expired_apart(kimpki, kube_api):
    make_ca(kimpki.home)
    kube_api.put_objects(credential(kimpki.home, "a", "a.example.com", age=70 * DAY)
                         + credential(kimpki.home, "b", "b.example.com", age=DAY))
    assert kimpki("status", "--cluster", "--fail-on", "expired", env=kube(kube_api)).code == 0
    res = kimpki("status", "--cluster", "--fail-on", "due", env=kube(kube_api))
    assert res.code == 1 and "1 due (--fail-on due)" in res.err
    # A shorter window makes a valid (20 days left, renewing 15 days before); a longer one makes b due too.
    assert kimpki("status", "--cluster", "--fail-on", "due", "--renew-before", "15d", env=kube(kube_api)).code == 0
    d = kimpki.json("status", "--cluster", "--renew-before", "99%", env=kube(kube_api))
    assert d["counts"]["due"] == 2 and {c["renew_before"] for c in d["credentials"]} == {"99%"}


def test_store_inventory_when_no_place_is_given(kimpki, tmp_path):
    make_ca(kimpki.home)
    folder = tmp_path / "deploy"
    write_manifests(folder, credential(kimpki.home, "kim-credential", "kim.example.com", age=70 * DAY))
    credential(kimpki.home, "unused", "fresh.example.com")
    kimpki.ok("issue", "--client", "client.example.com")  # client certificates are not listed
    kimpki.ok("renew", "--manifests", folder)  # records where the renewed certificate went
    d = kimpki.json("status")
    assert d["source"] == "store"
    rows = {r["certificate"]: r for r in d["certificates"]}
    assert set(rows) == {"kim.example.com", "fresh.example.com"}
    assert rows["kim.example.com"]["state"] == "valid"  # renewed just now
    assert rows["kim.example.com"]["deployed_to"][0]["name"] == "kim-credential"
    assert rows["kim.example.com"]["deployed_to"][0]["manifests"] == str(folder.resolve())
    assert rows["fresh.example.com"]["deployed_to"] == [] and rows["fresh.example.com"]["pending_serial"] is None
    text = kimpki.ok("status").out
    assert text.splitlines()[0].split()[:2] == ["CERTIFICATE", "HOSTS"]
    assert "DEPLOYED TO" in text.splitlines()[0]
    assert f"istio-system/kim-credential ({folder.resolve()})" in text
    assert kimpki("status", "--fail-on", "due").code == 0


def test_store_inventory_states_follow_the_clock(capsys, tmp_path):
    home = tmp_path / "home"
    make_ca(home)
    t0 = utc_now()
    credential(home, "x", "x.example.com", now=t0)
    for day, state, code in ((59, "valid", 0), (61, "due", 1), (91, "expired", 1)):
        with time_machine.travel(t0 + day * DAY, tick=False):
            c, out, err = run_in_process(capsys, home, "status", "--json", "--fail-on", "due")
        (row,) = json.loads(out)["certificates"]
        assert (row["state"], c) == (state, code), err
        assert row["days_left"] == 90 - day - 1  # notAfter is 5 minutes short of day 90: whole days, rounded down


def test_manifests_and_the_clock(capsys, tmp_path):
    home, folder = tmp_path / "home", tmp_path / "deploy"
    make_ca(home)
    t0 = utc_now()
    write_manifests(folder, credential(home, "kim-credential", "kim.example.com", now=t0))
    with time_machine.travel(t0 + 59 * DAY, tick=False):
        code, out, _ = run_in_process(capsys, home, "status", "--manifests", folder, "--json", "--fail-on", "due")
    assert code == 0 and json.loads(out)["credentials"][0]["state"] == "valid"
    with time_machine.travel(t0 + 61 * DAY, tick=False):
        code, out, err = run_in_process(capsys, home, "status", "--manifests", folder, "--json", "--fail-on", "due")
    assert code == 1 and json.loads(out)["credentials"][0]["state"] == "due"
    assert "1 due" in err


def test_empty_places(kimpki, kube_api, tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no managed credential Secrets in manifests" in kimpki.ok("status", "--manifests", tmp_path / "empty").out
    assert "no server certificates in the store yet" in kimpki.ok("status").out


@pytest.mark.parametrize("args,needle", [
    (["--renew-before", "banana"], "invalid --renew-before 'banana'"),
    (["--jitter", "x"], "invalid --jitter 'x'"),
    (["--fail-on", "soon"], "--fail-on"),
    (["-n", "a", "-A"], "not both"),
    (["--manifests", "/nonexistent"], "no such manifests folder"),
])
def test_usage_errors(kimpki, args, needle):
    assert_one_line_error(kimpki("status", *args), 2, needle)


def test_help(kimpki):
    out = kimpki.ok("status", "--help").out
    for needle in ("Examples:", "--fail-on", "broken", "Without place options the store", "Exit codes:"):
        assert needle in out


def test_days_left_rounds_down(kimpki, kube_api):
    make_ca(kimpki.home)
    kube_api.put_objects(credential(kimpki.home, "a", "a.example.com", age=timedelta(days=30, hours=12)))
    (c,) = kimpki.json("status", "--cluster", env=kube(kube_api))["credentials"]
    assert c["days_left"] == 59  # 59 days and some hours left (90 d from 30.5 d + 5 min ago)


@pytest.mark.parametrize("args", [["status"], ["status", "--help"], ["renew", "--help"]])
def test_store_status_and_help_import_no_kubernetes(kimpki, args):
    import subprocess
    import sys

    code = ("import sys, runpy\n"
            f"sys.argv = ['kimpki', *{args!r}]\n"
            "try:\n    runpy.run_module('kimpki', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'urllib3', 'yaml'))\n"
            "print('IMPORTED', bad)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=kimpki.env, capture_output=True, text=True,
                          cwd=kimpki.cwd)
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTED []" in proc.stdout, proc.stdout
