"""OCSP staples (``tls.ocsp-staple``): what ``secret create --ocsp-staple`` and a Credential's
``ocspStaple: true`` write, judged by ``openssl ocsp`` and pkilint; what a real Envoy run by
``kimpki gateway serve`` staples (``openssl s_client -status``), before and after ``kimpki
revoke``; ``kimpki renew`` refreshing a staple inside the last half of its validity (time-machine
clock, in-process) and a re-issued certificate getting its own; refusals.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import time_machine
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509 import ocsp

from kimpki.localgw.manifests import parse_manifests, resolve
from kimpki.pki import revocation as rv
from kimpki.pki.parse import rfc3339
from tests.conftest import assert_one_line_error, openssl, wait_until
from tests.kubeapi.fixtures import kube_api  # noqa: F401  (a fixture)
from tests.localgw_pki import gateway_yaml, https_server
from tests.test_renew import run_in_process
from tests.test_verify_envoy import ServedGateway

LINT_OCSP = Path(sys.executable).with_name("lint_ocsp_response")
DAY = timedelta(days=1)


def staple_of(secret: dict) -> bytes:
    return base64.b64decode(secret["data"]["tls.ocsp-staple"])


def leaf_of(secret: dict) -> x509.Certificate:
    return x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))


def single(der: bytes) -> ocsp.OCSPResponse:
    resp = ocsp.load_der_ocsp_response(der)
    assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    return resp


def stapled_secret(k, name: str, cert: str, *args: str) -> dict:
    return yaml.safe_load(k.ok("secret", "create", name, "--cert", cert, "--ocsp-staple", "--dry-run", "-o", "yaml",
                               *args).out)


def check_with_openssl(tmp_path: Path, der: bytes, leaf: Path, issuer: Path, root: Path, status: str) -> str:
    """``openssl ocsp -respin`` verifies the response's signature against the CA and prints its status."""
    resp = tmp_path / f"{status}.der"
    resp.write_bytes(der)
    r = openssl("ocsp", "-respin", resp, "-issuer", issuer, "-verify_other", issuer, "-CAfile", root, "-cert", leaf,
                "-no_nonce", check=False)
    out = (r.stdout + r.stderr).decode()
    assert r.returncode == 0 and "Response verify OK" in out, out
    assert f"{leaf}: {status}" in out, out
    return out


def pkilint(tmp_path: Path, der: bytes) -> str:
    f = tmp_path / "lint.der"
    f.write_bytes(der)
    r = subprocess.run([str(LINT_OCSP), "lint", str(f)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.strip()


@pytest.fixture
def home(kimpki):
    kimpki.ok("ca", "init", "example.com")
    kimpki.ok("issue", "kim.example.com")
    return kimpki


def cert_file(k, name: str) -> Path:
    return k.home / "certs" / name / "current" / "cert.crt"


def ca_file(k, name: str = "example.com") -> Path:
    return k.home / "cas" / name / "ca.crt"


# -- what is written -------------------------------------------------------------------------------------

def test_secret_create_writes_a_good_staple_that_openssl_and_pkilint_accept(home, tmp_path):
    s = stapled_secret(home, "kim-credential", "kim.example.com")
    assert s["type"] == "kubernetes.io/tls" and set(s["data"]) == {"tls.crt", "tls.key", "tls.ocsp-staple"}
    assert s["metadata"]["annotations"]["kimpki.io/ocsp-staple"] == "true"
    der = staple_of(s)
    one = single(der)
    assert one.serial_number == leaf_of(s).serial_number and one.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert one.next_update_utc - one.this_update_utc == rv.DEFAULT_OCSP_VALIDITY  # 4 days
    assert one.this_update_utc <= datetime.now(timezone.utc) < one.next_update_utc
    check_with_openssl(tmp_path, der, cert_file(home, "kim.example.com"), ca_file(home), ca_file(home), "good")
    assert pkilint(tmp_path, der) == ""
    summary = home.json("secret", "create", "kim-credential", "--cert", "kim.example.com", "--ocsp-staple",
                        "--dry-run")
    assert summary["ocsp_staple"]["status"] == "good" and summary["format"] == "tls"
    assert summary["ocsp_staple"]["serial"] == format(one.serial_number, "x")


def test_a_staple_under_an_intermediate_is_signed_by_the_intermediate(home, tmp_path):
    home.ok("ca", "init", "issuing.example", "--parent", "example.com")
    home.ok("issue", "deep.example.com", "--ca", "issuing.example")
    s = stapled_secret(home, "deep-credential", "deep.example.com")
    check_with_openssl(tmp_path, staple_of(s), cert_file(home, "deep.example.com"),
                       ca_file(home, "issuing.example"), ca_file(home), "good")


def test_an_encrypted_ca_key_needs_its_passphrase(kimpki, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("correct horse\n")
    pw.chmod(0o600)
    kimpki.ok("ca", "init", "example.com", "--passphrase-file", pw)
    kimpki.ok("issue", "kim.example.com", "--passphrase-file", pw)
    s = stapled_secret(kimpki, "kim-credential", "kim.example.com", "--passphrase-file", pw)
    assert single(staple_of(s)).certificate_status == ocsp.OCSPCertStatus.GOOD
    r = kimpki("secret", "create", "kim-credential", "--cert", "kim.example.com", "--ocsp-staple", "--dry-run")
    assert r.code == 1 and "Traceback" not in r.err and "passphrase" in r.err, r.err


@pytest.mark.parametrize("args, needle", [
    (["--format", "generic"], "--ocsp-staple needs the tls key set"),
    (["--file-mounted"], "--ocsp-staple is for SDS credentials"),
])
def test_usage_errors(home, args, needle):
    assert_one_line_error(home("secret", "create", "kim-credential", "--cert", "kim.example.com", "--ocsp-staple",
                               "--dry-run", *args), 2, needle)


POLICY = """\
apiVersion: kimpki.io/v1alpha1
kind: Target
metadata: {name: local}
spec: {manifests: out}
---
apiVersion: kimpki.io/v1alpha1
kind: CertificateAuthority
metadata: {name: example.com}
spec: {}
---
apiVersion: kimpki.io/v1alpha1
kind: Certificate
metadata: {name: kim.example.com}
spec: {hosts: [kim.example.com], ca: example.com}
---
apiVersion: kimpki.io/v1alpha1
kind: Credential
metadata: {name: kim-credential, namespace: istio-system}
spec:
  certificate: kim.example.com
  ocspStaple: true
"""


def test_policy_ocsp_staple_is_applied_once(kimpki, tmp_path):
    pol = tmp_path / "policy"
    pol.mkdir()
    (pol / "all.yaml").write_text(POLICY)
    kimpki.ok("apply", "-f", pol)
    docs = [d for f in sorted((pol / "out").rglob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    secret = next(d for d in docs if d.get("kind") == "Secret" and d["metadata"]["name"] == "kim-credential")
    assert secret["type"] == "kubernetes.io/tls"
    assert single(staple_of(secret)).serial_number == leaf_of(secret).serial_number
    # The staple still serves: a second apply keeps it, and changes nothing.
    assert kimpki.ok("apply", "-f", pol).out.strip() == "no changes"


def test_plan_calls_a_staple_refresh_by_its_name(kimpki, tmp_path):
    """A Secret whose staple alone must be re-signed is "OCSP staple due for refresh" in `plan`
    (text and --json); one that differs otherwise too still "differs from the policy"."""
    pol = tmp_path / "policy"
    pol.mkdir()
    (pol / "all.yaml").write_text(POLICY)
    kimpki.ok("apply", "-f", pol)
    path = next(f for f in sorted((pol / "out").rglob("*.yaml")) if "kind: Secret" in f.read_text())
    applied = yaml.safe_load(path.read_text())
    stale = json.loads(json.dumps(applied))
    stale["data"]["tls.ocsp-staple"] = base64.b64encode(expired_staple(kimpki, applied)).decode()
    path.write_text(yaml.safe_dump(stale))

    def secret_reasons() -> list[str]:
        return [a["reason"] for a in kimpki.json("plan", "-f", pol)["actions"] if a["kind"] == "Secret"]

    assert secret_reasons() == ["OCSP staple due for refresh"]
    row = next(line for line in kimpki.ok("plan", "-f", pol).out.splitlines() if "kim-credential" in line)
    assert row.split()[0] == "update" and row.endswith("OCSP staple due for refresh"), row
    edited = json.loads(json.dumps(stale))
    edited["metadata"]["annotations"]["kimpki.io/hosts"] = '["elsewhere.example.com"]'
    path.write_text(yaml.safe_dump(edited))
    assert secret_reasons() == ["differs from the policy"]
    path.write_text(yaml.safe_dump(stale))
    assert "OCSP staple due for refresh" in kimpki.ok("apply", "-f", pol).out
    assert kimpki.ok("apply", "-f", pol).out.strip() == "no changes"


def test_policy_ocsp_staple_with_the_generic_key_set_is_refused(kimpki, tmp_path):
    pol = tmp_path / "policy"
    pol.mkdir()
    (pol / "all.yaml").write_text(POLICY.replace("  ocspStaple: true", "  format: generic\n  ocspStaple: true"))
    assert_one_line_error(kimpki("plan", "-f", pol), 2, f"{pol / 'all.yaml'}:22", "spec.ocspStaple needs format: tls")


# -- the local gateway's reader --------------------------------------------------------------------------

def _manifests(secret: dict, staple: bytes | None = None) -> list[tuple[str, str]]:
    secret = json.loads(json.dumps(secret))
    if staple is not None:
        secret["data"]["tls.ocsp-staple"] = base64.b64encode(staple).decode()
    gw = gateway_yaml("gw", [https_server("kim.example.com", "https", "SIMPLE", secret["metadata"]["name"])])
    return [("m.yaml", yaml.safe_dump(secret) + "---\n" + gw)]


def test_the_local_gateway_passes_the_staple_only_with_the_tls_keys_and_refuses_what_envoy_refuses(home):
    s = stapled_secret(home, "kim-credential", "kim.example.com")
    (plan,) = resolve(parse_manifests(_manifests(s))).plans
    assert plan.certificates[0].ocsp_staple == staple_of(s)
    # The generic key set has no staple: Istio hands none to Envoy.
    generic = json.loads(json.dumps(s))
    generic["data"] = {"cert": s["data"]["tls.crt"], "key": s["data"]["tls.key"],
                       "tls.ocsp-staple": s["data"]["tls.ocsp-staple"]}
    (plan,) = resolve(parse_manifests(_manifests(generic))).plans
    assert plan.certificates[0].ocsp_staple is None
    # What Envoy rejects ("OCSP response has no body", "... does not match its TLS certificate")
    # leaves the server unserved, as on a real gateway.
    home.ok("issue", "other.example.com")
    other = stapled_secret(home, "other-credential", "other.example.com")
    for bad, needle in ((b"\x30\x03\x0a\x01\x00", "not a successful OCSP response"),
                        (staple_of(other), "answers for serial")):
        r = resolve(parse_manifests(_manifests(s, bad)))
        assert r.plans == () and len(r.warnings) == 1 and needle in r.warnings[0], r.warnings


# -- a real Envoy ----------------------------------------------------------------------------------------

def openssl_hex(serial: int) -> str:
    """A serial as openssl prints it: whole bytes in hex (a leading 0 when the digits are odd)."""
    digits = format(serial, "X")
    return "0" * (len(digits) % 2) + digits


def s_client_status(port: int, host: str) -> str:
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", host, "-status"],
                       input="", capture_output=True, text=True, timeout=15)
    return r.stdout


def expired_staple(home, secret: dict) -> bytes:
    """A good staple whose nextUpdate has passed (made here: kimpki never writes one)."""
    ca = x509.load_pem_x509_certificate(ca_file(home).read_bytes())
    key = load_pem_private_key((home.home / "cas" / "example.com" / "ca.key").read_bytes(), None)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    return rv.build_ocsp_response(leaf_of(secret), ca, key, revoked=None, this_update=now - 5 * DAY,
                                  next_update=now - DAY)


def test_gateway_serve_staples_and_revoke_makes_the_served_staple_revoked(home, tmp_path):
    home.ok("issue", "stale.example.com")
    deploy = home.cwd / "deploy"
    deploy.mkdir()
    kim = stapled_secret(home, "kim-credential", "kim.example.com")
    (deploy / "kim-credential.yaml").write_text(yaml.safe_dump(kim))
    stale = stapled_secret(home, "stale-credential", "stale.example.com")
    stale["data"]["tls.ocsp-staple"] = base64.b64encode(expired_staple(home, stale)).decode()
    (deploy / "stale-credential.yaml").write_text(yaml.safe_dump(stale))
    (deploy / "gateway.yaml").write_text(home.ok("gateway", "render", "--host", "kim.example.com", "--credential",
                                                 "kim-credential", "--host", "stale.example.com", "--credential",
                                                 "stale-credential").out)
    gw = ServedGateway(home, deploy, servers=2)
    try:
        out = s_client_status(gw.port, "kim.example.com")
        assert "OCSP Response Status: successful" in out and "Cert Status: good" in out, out
        assert f"Serial Number: {openssl_hex(leaf_of(kim).serial_number)}" in out
        # Envoy's lenient policy: a staple past nextUpdate is not sent, the certificate still is.
        out = s_client_status(gw.port, "stale.example.com")
        assert "OCSP response: no response sent" in out and "BEGIN CERTIFICATE" in out, out

        d = home.json("revoke", "kim.example.com", "--reason", "keyCompromise", "--manifests", deploy)
        assert [(r["secret"], r["status"], r["action"]) for r in d["restapled"]] == \
            [("kim-credential", "revoked", "updated")]
        out = wait_until(lambda: (o := s_client_status(gw.port, "kim.example.com")) and "Cert Status: revoked" in o
                         and o, "Envoy stapling the revoked response")
        assert "Revocation Reason: keyCompromise" in out, out
        # Only the staple changed; the stale one (another certificate) was left alone.
        after = yaml.safe_load((deploy / "kim-credential.yaml").read_text())
        assert {k: v for k, v in after["data"].items() if k != "tls.ocsp-staple"} == \
            {k: v for k, v in kim["data"].items() if k != "tls.ocsp-staple"}
        assert yaml.safe_load((deploy / "stale-credential.yaml").read_text())["data"] == stale["data"]
        revoked = staple_of(after)
        check_with_openssl(tmp_path, revoked, cert_file(home, "kim.example.com"), ca_file(home),
                           ca_file(home), "revoked")
        assert pkilint(tmp_path, revoked) == ""
        # Again: already revoked, the staple already says so.
        again = home.json("revoke", "kim.example.com", "--manifests", deploy)
        assert again["already_revoked"] and again["restapled"] == []
    finally:
        assert gw.stop() == 0, "".join(gw.stderr)


# -- renew (an injected clock, in-process) ---------------------------------------------------------------

def test_renew_refreshes_the_staple_in_the_last_half_and_a_reissue_brings_a_new_one(capsys, tmp_path):
    home, deploy = tmp_path / "home", tmp_path / "deploy"
    deploy.mkdir()
    t0 = datetime.now(timezone.utc).replace(microsecond=0)
    path = deploy / "kim-credential.yaml"

    def run(*args) -> dict:
        code, out, err = run_in_process(capsys, home, *args)
        assert code == 0, err
        return json.loads(out) if "--json" in args else {"out": out, "err": err}

    def staple() -> ocsp.OCSPResponse:
        return single(staple_of(yaml.safe_load(path.read_text())))

    with time_machine.travel(t0, tick=False):
        run("ca", "init", "example.com")
        run("issue", "kim.example.com")
        path.write_text(run("secret", "create", "kim-credential", "--cert", "kim.example.com", "--ocsp-staple",
                            "--dry-run", "-o", "yaml")["out"])
    first = staple()
    with time_machine.travel(t0 + DAY, tick=False):  # the first half of its 4 days: kept
        s = run("renew", "--manifests", deploy, "--json")
        assert s["staples_refreshed"] == [] and s["renewed"] == 0
        st = run("status", "--manifests", deploy, "--json")
        assert st["credentials"][0]["ocsp_staple_next_update"] == rfc3339(first.next_update_utc)
        assert "OCSP staples:" in run("status", "--manifests", deploy)["out"]
    assert staple().this_update_utc == first.this_update_utc
    with time_machine.travel(t0 + 2 * DAY + timedelta(hours=1), tick=False):  # the last half: re-signed
        dry = run("renew", "--manifests", deploy, "--dry-run", "--json")
        assert [r["action"] for r in dry["staples_refreshed"]] == ["would refresh"]
        assert staple().this_update_utc == first.this_update_utc  # a dry run writes nothing
        s = run("renew", "--manifests", deploy, "--json")
        assert [(r["secret"], r["status"], r["action"]) for r in s["staples_refreshed"]] == \
            [("kim-credential", "good", "updated")]
        assert run("renew", "--manifests", deploy, "--json")["staples_refreshed"] == []  # fresh again
    second = staple()
    assert second.this_update_utc > first.next_update_utc - 2 * DAY
    assert second.next_update_utc == second.this_update_utc + rv.DEFAULT_OCSP_VALIDITY
    with time_machine.travel(t0 + 61 * DAY, tick=False):  # the certificate is due: re-issued, new staple
        s = run("renew", "--manifests", deploy, "--json")
        assert s["renewed"] == 1 and s["staples_refreshed"] == []
        renewed = yaml.safe_load(path.read_text())
        assert renewed["metadata"]["annotations"]["kimpki.io/ocsp-staple"] == "true"
        third = single(staple_of(renewed))
        assert third.serial_number == leaf_of(renewed).serial_number == int(s["results"][0]["new_serial"], 16)
        assert third.this_update_utc > t0 + 60 * DAY


def test_a_home_holding_only_the_ca_refreshes_staples_but_never_unrevokes_one(capsys, tmp_path):
    """The CronJob's home imports the CA and holds none of the certificates: it signs the staple of
    the certificate the Secret serves; a staple that says revoked, which that home knows nothing
    about, is refused rather than made good again (as a Secret's CRLs are never dropped)."""
    home, cron_home, deploy = tmp_path / "home", tmp_path / "cron-home", tmp_path / "deploy"
    deploy.mkdir()
    t0 = datetime.now(timezone.utc).replace(microsecond=0)

    def run(h: Path, *args, code: int = 0) -> dict:
        got, out, err = run_in_process(capsys, h, *args)
        assert got == code, err + out
        return json.loads(out) if "--json" in args else {"out": out, "err": err}

    with time_machine.travel(t0, tick=False):
        run(home, "ca", "init", "example.com")
        for host in ("kim.example.com", "lost.example.com"):
            run(home, "issue", host)
            (deploy / f"{host}.yaml").write_text(run(home, "secret", "create", host.split(".")[0] + "-credential",
                                                     "--cert", host, "--ocsp-staple", "--dry-run", "-o", "yaml")["out"])
        run(home, "revoke", "lost.example.com", "--manifests", deploy, "--json")
        ca_dir = home / "cas" / "example.com"
        run(cron_home, "ca", "import", "example.com", "--cert", ca_dir / "ca.crt", "--key", ca_dir / "ca.key")
    with time_machine.travel(t0 + 2 * DAY + timedelta(hours=1), tick=False):
        s = run(cron_home, "renew", "--manifests", deploy, "--json", code=1)
    assert [(r["secret"], r["status"]) for r in s["staples_refreshed"]] == [("kim-credential", "good")]
    (err,) = s["errors"]
    assert "lost-credential" in err["reason"] and "says serial" in err["reason"] and "revoked" in err["reason"]
    lost = yaml.safe_load((deploy / "lost.example.com.yaml").read_text())
    assert single(staple_of(lost)).certificate_status == ocsp.OCSPCertStatus.REVOKED  # untouched
    kim = yaml.safe_load((deploy / "kim.example.com.yaml").read_text())
    assert single(staple_of(kim)).this_update_utc > t0 + 2 * DAY


def test_in_a_cluster_revoke_rewrites_only_the_staple_and_secret_create_reports_it(home, kube_api):
    """The Kubernetes API stand-in over real HTTP: the stapled Secret's staple key alone changes
    (resourceVersion-guarded), a Secret serving another certificate is left alone."""
    kc = ["--kubeconfig", kube_api.kubeconfig_path]
    home.ok("issue", "other.example.com")
    created = home.json("secret", "create", "kim-credential", "--cert", "kim.example.com", "--ocsp-staple", *kc)
    assert created["ocsp_staple"]["status"] == "good"
    assert "OCSP staple: good, next update" in home.ok("secret", "create", "other-credential", "--cert",
                                                       "other.example.com", "--ocsp-staple", *kc).out
    before = {n: kube_api.get_object("secrets", "istio-system", n) for n in ("kim-credential", "other-credential")}
    d = home.json("revoke", "kim.example.com", "--reason", "superseded", "-n", "istio-system", *kc)
    assert [(r["secret"], r["status"], r["action"]) for r in d["restapled"]] == \
        [("kim-credential", "revoked", "updated")]
    after = {n: kube_api.get_object("secrets", "istio-system", n) for n in before}
    old, new = before["kim-credential"], after["kim-credential"]
    assert new["metadata"]["resourceVersion"] != old["metadata"]["resourceVersion"]
    assert {k: v for k, v in new["data"].items() if k != "tls.ocsp-staple"} == \
        {k: v for k, v in old["data"].items() if k != "tls.ocsp-staple"}
    one = single(base64.b64decode(new["data"]["tls.ocsp-staple"]))
    assert one.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert one.revocation_reason == x509.ReasonFlags.superseded
    assert after["other-credential"]["metadata"]["resourceVersion"] == \
        before["other-credential"]["metadata"]["resourceVersion"]


def test_secret_create_twice_keeps_a_staple_that_still_serves(home, kube_api):
    """A second `secret create --ocsp-staple` is "unchanged" (same resourceVersion, same staple);
    a staple that no longer serves (expired) is re-signed, as `renew` would."""
    kc = ["--kubeconfig", kube_api.kubeconfig_path]
    args = ("secret", "create", "kim-credential", "--cert", "kim.example.com", "--ocsp-staple", *kc)
    first = home.json(*args)
    assert [s["action"] for s in first["secrets"]] == ["created"]
    before = kube_api.get_object("secrets", "istio-system", "kim-credential")
    second = home.json(*args)
    assert [s["action"] for s in second["secrets"]] == ["unchanged"]
    assert second["ocsp_staple"] == first["ocsp_staple"]
    after = kube_api.get_object("secrets", "istio-system", "kim-credential")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["data"] == before["data"]
    assert "secret/kim-credential unchanged in namespace istio-system" in home.ok(*args).out
    # An expired staple no longer serves: a new one, only that key changing.
    stale = json.loads(json.dumps(after))
    stale["data"]["tls.ocsp-staple"] = base64.b64encode(expired_staple(home, after)).decode()
    kube_api.put_object(stale)
    third = home.json(*args)
    assert [s["action"] for s in third["secrets"]] == ["updated"]
    renewed = kube_api.get_object("secrets", "istio-system", "kim-credential")
    assert staple_of(renewed) not in (staple_of(stale), staple_of(before))
    assert single(staple_of(renewed)).next_update_utc > datetime.now(timezone.utc)
    assert {k: v for k, v in renewed["data"].items() if k != "tls.ocsp-staple"} == \
        {k: v for k, v in before["data"].items() if k != "tls.ocsp-staple"}


def test_a_stapled_pair_created_twice_is_unchanged(kimpki, kube_api):
    """--dual: each Secret of the pair keeps its own staple while it serves."""
    kc = ["--kubeconfig", kube_api.kubeconfig_path]
    kimpki.ok("ca", "init", "example.com")
    kimpki.ok("issue", "kim.example.com", "--dual")
    args = ("secret", "create", "kim-credential", "--cert", "kim.example.com", "--dual", "--ocsp-staple", *kc)
    first = kimpki.json(*args)
    names = [s["name"] for s in first["secrets"]]
    assert len(names) == 2 and [s["action"] for s in first["secrets"]] == ["created", "created"]
    before = {n: kube_api.get_object("secrets", "istio-system", n) for n in names}
    for n, secret in before.items():
        assert single(staple_of(secret)).serial_number == leaf_of(secret).serial_number, n
    assert [s["action"] for s in kimpki.json(*args)["secrets"]] == ["unchanged", "unchanged"]
    after = {n: kube_api.get_object("secrets", "istio-system", n) for n in names}
    assert {n: s["metadata"]["resourceVersion"] for n, s in after.items()} == \
        {n: s["metadata"]["resourceVersion"] for n, s in before.items()}


# -- kimpki check ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["good", "other_serial", "undecodable", "expired", "generic_keys"])
def test_check_reports_a_staple_envoy_refuses_and_an_expired_one(home, case):
    """What Envoy 1.40 does with the staple (confirmed on the venv's Envoy): another serial's
    staple ("does not match its TLS certificate") or an undecodable one ("has no body") rejects
    the whole secret: KIM0013, an error; an expired one is dropped (served unstapled): KIM0014, a
    warning. The generic key set carries no staple for Istio, so nothing is checked there."""
    home.ok("issue", "other.example.com")
    s = stapled_secret(home, "kim-credential", "kim.example.com")
    staple = {"good": staple_of(s), "other_serial": staple_of(stapled_secret(home, "o", "other.example.com")),
              "undecodable": b"\x30\x03\x0a\x01\x00", "expired": expired_staple(home, s),
              "generic_keys": b"not an OCSP response"}[case]
    if case == "generic_keys":
        s["data"] = {"cert": s["data"]["tls.crt"], "key": s["data"]["tls.key"], **s["data"]}
    deploy = home.cwd / "deploy"
    deploy.mkdir()
    for name, text in _manifests(s, staple):
        (deploy / name).write_text(text)
    res = home("check", "-f", deploy, "--json")
    d = json.loads(res.out)
    staples = [f for f in d["findings"] if f["check"] == "ocsp_staple"]
    if case == "generic_keys":
        assert res.code == 0 and staples == [], res.out
        return
    (f,) = staples
    assert f["credential"] == "kim-credential"
    code, status, needle, exit_code = {
        "good": (None, "ok", "good, next update", 0),
        "other_serial": ("KIM0013", "error", "answers for serial", 1),
        "undecodable": ("KIM0013", "error", "is not a successful OCSP response", 1),
        "expired": ("KIM0014", "warning", "Envoy serves the certificate without a staple", 0),
    }[case]
    assert (f["code"], f["status"], res.code) == (code, status, exit_code), res.out
    assert needle in f["detail"] and (code is None or f["reason"] in ("OcspStapleRefused", "OcspStapleExpired"))
    if code == "KIM0013":
        assert "Envoy rejects the whole secret" in f["detail"] and f["reason"] == "OcspStapleRefused"
        text = home("check", "-f", deploy)
        assert text.code == 1 and "KIM0013" in text.out
    if code == "KIM0014":
        assert f["reason"] == "OcspStapleExpired" and d["summary"]["warnings"] == 1


def test_check_help_lists_the_staple_codes(kimpki):
    from kimpki.ops import check

    out = kimpki.ok("check", "--help").out
    for code in ("KIM0013", "KIM0014"):
        assert code in out and code in check.CODES and code in check.__doc__
