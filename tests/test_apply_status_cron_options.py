"""``apply --force``, ``status --jitter`` and ``cron render --ca-secret-name``, on the shipped
policies written to a folder."""

from __future__ import annotations

import json
import re
import shutil
from datetime import datetime, timedelta

import pytest
import yaml

from tests.conftest import ROOT

UNMANAGED = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
             "metadata": {"name": "kim-credential", "namespace": "istio-system"},
             "data": {"key": "YQ==", "cert": "YQ=="}}


@pytest.fixture
def policies(kimpki):
    folder = kimpki.cwd / "policies"
    shutil.copytree(ROOT / "policies", folder, ignore=shutil.ignore_patterns("out"))
    return folder


def test_apply_force_takes_over_a_secret_kimpki_did_not_write(kimpki, policies):
    (policies / "out").mkdir()
    legacy = policies / "out" / "legacy.yaml"
    legacy.write_text(yaml.safe_dump(UNMANAGED))
    refused = kimpki("apply", "--filename", policies)
    assert refused.code == 1 and "is not managed by kimpki" in refused.err and "give --force" in refused.err
    assert yaml.safe_load(legacy.read_text()) == UNMANAGED
    report = kimpki.json("apply", "--filename", policies, "--force")
    assert ("update", "Secret", "kim-credential") in [(a["action"], a["kind"], a["name"]) for a in report["actions"]]
    taken = yaml.safe_load(legacy.read_text())
    assert taken["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "kimpki"}
    assert taken["data"]["cert"] != "YQ=="


def rfc3339(t: str) -> datetime:
    return datetime.fromisoformat(t.replace("Z", "+00:00"))


def test_status_jitter_moves_each_renewal_earlier_by_a_fixed_amount_per_serial(kimpki, policies):
    kimpki.ok("apply", "-f", policies)
    out = policies / "out"

    def renewal_times(*args) -> dict[str, datetime]:
        d = kimpki.json("status", "--manifests", out, *args)
        return {c["secret"]: rfc3339(c["renewal_time"]) for c in d["credentials"]}

    plain, jittered = renewal_times(), renewal_times("--jitter", "10%")
    assert set(plain) == set(jittered) and len(plain) == 3
    for name, t in plain.items():
        assert t - timedelta(days=9.01) <= jittered[name] < t, name  # 10% of a 90-day lifetime
    assert len(set(jittered.values())) == 3  # spread out, not all moved alike
    assert renewal_times("--jitter", "10%") == jittered  # the same every run: a function of the serial
    assert renewal_times("--namespace", "default") == {}  # every credential is in istio-system
    # The Prometheus renewal gauge carries the jittered time too.
    metrics = kimpki.ok("status", "--manifests", out, "--jitter", "10%", "--output", "prometheus").out
    gauge = {m[0]: float(m[1]) for m in re.findall(
        r'^kimpki_certificate_renewal_timestamp_seconds\{[^}]*secret="([^"]+)"[^}]*\} (\S+)$', metrics, re.M)}
    assert gauge == pytest.approx({name: t.timestamp() for name, t in jittered.items()}, abs=1)


def test_after_apply_plan_has_nothing_to_do_and_check_finds_nothing_wrong(kimpki, policies):
    kimpki.ok("apply", "-f", policies)
    plan = kimpki.json("plan", "--filename", policies)
    assert plan["actions"] == [] or {a["action"] for a in plan["actions"]} == {"unchanged"}, plan
    report = kimpki.json("check", "--filename", policies / "out")
    assert report["ok"] and report["summary"]["gateways"] == 2, report


def test_cron_kubernetes_ca_secret_name(kimpki):
    kimpki.ok("ca", "init", "example.com")
    d = kimpki.json("cron", "render", "--kubernetes", "--image", "registry.example/kimpki:1",
                    "--ca-secret-name", "kimpki-ca-prod", "--namespace", "gateways")
    assert d["ca_secret"] == "kimpki-ca-prod"
    assert "create secret generic kimpki-ca-prod " in d["create_ca_secret"] and "-n gateways" in d["create_ca_secret"]
    cronjob = d["objects"][-1]
    volumes = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"]
    assert [v["secret"]["secretName"] for v in volumes if "secret" in v] == ["kimpki-ca-prod"]
    objs = json.loads(kimpki.ok("cron", "render", "--kubernetes", "--image", "registry.example/kimpki:1",
                                "--ca-secret-name", "kimpki-ca-prod", "--with-ca-secret", "--output", "json").out)
    (secret,) = [o for o in objs["items"] if o["kind"] == "Secret"]
    assert secret["metadata"]["name"] == "kimpki-ca-prod" and set(secret["data"]) >= {"example.com.crt"}
