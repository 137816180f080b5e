"""`kimpki secret create`: kubectl's own Secrets as the oracle, refusals before anything is written,
and create / update in place / fault / unmanaged cases against the stand-in API server."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from kimpki.pki import keys
from kimpki.store import Store
from tests.conftest import assert_one_line_error
from tests.istio_helpers import DEPLOYMENT_FILE, decoded, issue_in_process, kubectl, kubectl_json
from tests.kubeapi.fixtures import *  # noqa: F401,F403

NS = "istio-system"


@pytest.fixture
def seeded(kimpki):
    """The seed's CA and host certificate, issued by kimpki; returns the issue JSON."""
    kimpki.ok("ca", "init", "example.com", "--org", "example Inc.")
    return kimpki.json("issue", "kim.example.com", "--org", "kim organization")


def dry_run(kimpki, *args) -> list[dict]:
    out = kimpki.ok("secret", "create", *args, "--dry-run", "-o", "json").json
    return out["items"] if out["kind"] == "List" else [out]


def assert_same_as_kubectl(ours: dict, theirs: dict) -> None:
    """Same name, namespace, type and data; kimpki only adds labels and annotations."""
    assert ours["metadata"]["name"] == theirs["metadata"]["name"]
    assert ours["metadata"]["namespace"] == theirs["metadata"]["namespace"]
    # kubectl leaves `type` out for generic Secrets; the API server defaults it to Opaque.
    assert ours["type"] == theirs.get("type", "Opaque")
    assert ours["data"] == theirs["data"]
    assert set(ours["metadata"]) - set(theirs["metadata"]) == {"labels", "annotations"}
    assert set(theirs["metadata"]) - set(ours["metadata"]) <= {"creationTimestamp"}


# -- kubectl as the oracle ---------------------------------------------------------------------------

def test_generic_tls_and_mutual_match_kubectl_create_secret(kimpki, seeded):
    cert, key, ca = seeded["cert"], seeded["key"], seeded["ca"]
    cases = [
        ([], ["generic", "kim-credential", f"--from-file=key={key}", f"--from-file=cert={cert}"]),
        (["--format", "tls"], ["tls", "kim-credential", f"--cert={cert}", f"--key={key}"]),
        (["--mutual"], ["generic", "kim-credential", f"--from-file=key={key}", f"--from-file=cert={cert}",
                        f"--from-file=cacert={ca}"]),
        (["--mutual", "--format", "tls"],
         ["generic", "kim-credential", "--type=kubernetes.io/tls", f"--from-file=tls.crt={cert}",
          f"--from-file=tls.key={key}", f"--from-file=ca.crt={ca}"]),
    ]
    for ours_args, kubectl_args in cases:
        (ours,) = dry_run(kimpki, "kim-credential", "--cert", "kim.example.com", *ours_args)
        theirs = kubectl_json("create", "secret", *kubectl_args, "-n", NS, "--dry-run=client")
        assert_same_as_kubectl(ours, theirs)


@pytest.mark.parametrize("fmt,main_args,ca_key", [
    ("generic", ["generic", "kim-credential", "--from-file=key={key}", "--from-file=cert={cert}"], "cacert"),
    ("tls", ["tls", "kim-credential", "--cert={cert}", "--key={key}"], "ca.crt"),
])
def test_ca_secret_matches_two_kubectl_secrets(kimpki, seeded, fmt, main_args, ca_key):
    main, ca = dry_run(kimpki, "kim-credential", "--cert", "kim.example.com", "--mutual", "--ca-secret", "--format", fmt)
    assert_same_as_kubectl(main, kubectl_json("create", "secret", *[a.format(**seeded) for a in main_args],
                                              "-n", NS, "--dry-run=client"))
    assert_same_as_kubectl(ca, kubectl_json("create", "secret", "generic", "kim-credential-cacert",
                                            f"--from-file={ca_key}={seeded['ca']}", "-n", NS, "--dry-run=client"))


def test_file_mounted_matches_the_seeds_kubectl_commands(kimpki, seeded, tmp_path):
    # The seed: kubectl create -n istio-system secret tls istio-ingressgateway-certs --key kim.example.com.key
    #   --cert kim.example.com.crt; kubectl create -n istio-system secret generic
    #   istio-ingressgateway-ca-certs --from-file=example.com.crt
    shutil.copy(seeded["key"], tmp_path / "kim.example.com.key")
    shutil.copy(seeded["cert"], tmp_path / "kim.example.com.crt")
    shutil.copy(kimpki.home / "cas" / "example.com" / "ca.crt", tmp_path / "example.com.crt")
    tls = json.loads(subprocess.run(
        ["kubectl", "create", "-n", NS, "secret", "tls", "istio-ingressgateway-certs", "--key", "kim.example.com.key",
         "--cert", "kim.example.com.crt", "--dry-run=client", "-o", "json"],
        cwd=tmp_path, capture_output=True, text=True, check=True, env={"KUBECONFIG": "/dev/null", "PATH": "/usr/bin:/bin"}).stdout)
    cas = json.loads(subprocess.run(
        ["kubectl", "create", "-n", NS, "secret", "generic", "istio-ingressgateway-ca-certs",
         "--from-file=example.com.crt", "--dry-run=client", "-o", "json"],
        cwd=tmp_path, capture_output=True, text=True, check=True, env={"KUBECONFIG": "/dev/null", "PATH": "/usr/bin:/bin"}).stdout)
    (simple,) = dry_run(kimpki, "--file-mounted", "--cert", "kim.example.com")
    assert_same_as_kubectl(simple, tls)
    main, ca = dry_run(kimpki, "--file-mounted", "--cert", "kim.example.com", "--mutual")
    assert_same_as_kubectl(main, tls)
    assert_same_as_kubectl(ca, cas)
    res = kimpki.ok("secret", "create", "--file-mounted", "--cert", "kim.example.com", "--dry-run")
    assert "restart the gateway pods" in res.err
    # Another host's Secret: the TLS form under its own name, and how to mount it.
    res = kimpki.ok("secret", "create", "istio-ingressgateway-bookinfo-certs", "--file-mounted", "--cert",
                    "kim.example.com", "--dry-run")
    assert "kimpki gateway mount --secret istio-ingressgateway-bookinfo-certs --mount-path " \
           "/etc/istio/ingressgateway-bookinfo-certs" in res.err


def test_dry_run_output_is_what_kubectl_apply_takes(kube_env, kimpki, seeded):
    args = ["secret", "create", "kim-credential", "--cert", "kim.example.com", "--mutual", "--ca-secret", "--dry-run"]
    env = {"KUBECONFIG": kube_env.kubeconfig_path}
    for fmt in ("json", "yaml"):
        out = kimpki.ok(*args, "-o", fmt).out
        # kubectl's own validation of a `kind: List` falls back to /openapi/v2, which the stand-in
        # does not serve (a real API server does); the API server still validates each Secret
        # in the server-side dry run.
        validate = ["--validate=false"] if fmt == "json" else []
        applied = kubectl("apply", "--dry-run=client", *validate, "-f", "-", input=out, env=env).stdout
        assert "secret/kim-credential created (dry run)" in applied
        assert "secret/kim-credential-cacert created (dry run)" in applied
        applied = kubectl("apply", "--dry-run=server", *validate, "-f", "-", input=out, env=env).stdout
        assert "secret/kim-credential created (server dry run)" in applied
        assert "secret/kim-credential-cacert created (server dry run)" in applied
    docs = list(yaml.safe_load_all(kimpki.ok(*args).out))  # default: YAML, one document per Secret
    assert [d["metadata"]["name"] for d in docs] == ["kim-credential", "kim-credential-cacert"]
    assert kube_env.list_objects("secrets", NS) == []


# -- refusals: one line, exit 1, nothing written -----------------------------------------------------

def test_unfit_certificates_are_refused_before_anything_is_written(kube_env, kimpki, seeded, tmp_path):
    now = datetime.now(timezone.utc)
    issue_in_process(kimpki.home, ["old.example.com"], not_before=now - timedelta(days=10),
                     not_after=now - timedelta(days=1))
    issue_in_process(kimpki.home, ["soon.example.com"], not_before=now + timedelta(days=1),
                     not_after=now + timedelta(days=10))
    kimpki.ok("issue", "--client", "kim-client.example.com")
    kimpki.ok("ca", "init", "other")
    assert_one_line_error(kimpki("secret", "create", "c", "--cert", "old.example.com"), 1, "expired on")
    assert_one_line_error(kimpki("secret", "create", "c", "--cert", "soon.example.com"), 1, "not valid yet")
    assert_one_line_error(kimpki("secret", "create", "c", "--cert", "kim-client.example.com"), 1,
                          "client certificate", "not a server credential")
    assert_one_line_error(kimpki("secret", "create", "c", "--cert", "kim.example.com", "--mutual", "--ca", "other"),
                          1, "does not chain to CA 'other'")
    assert_one_line_error(kimpki("secret", "create", "c", "--cert", "nope.example.com"), 1, "no certificate named")
    # A key that does not match: tamper with the key in a copy of the home.
    copy = tmp_path / "tampered"
    shutil.copytree(kimpki.home, copy)
    key = copy / Path(seeded["key"]).relative_to(kimpki.home)
    key.chmod(0o600)
    key.write_bytes(keys.key_to_pem(keys.generate_key()))
    assert_one_line_error(kimpki("--home", copy, "secret", "create", "c", "--cert", "kim.example.com"), 1,
                          "does not match the certificate")
    assert kube_env.calls("POST") == [] and kube_env.calls("PUT") == []


@pytest.mark.parametrize("args,needle", [
    (["--cert", "kim.example.com"], "NAME"),
    (["c", "--cert", "kim.example.com", "--ca", "example.com"], "add --mutual"),
    (["c", "--cert", "kim.example.com", "--ca-secret"], "--ca-secret only makes sense with --mutual"),
    (["c", "--cert", "kim.example.com", "--dry-run", "-o", "json", "--json"], "not both"),
    (["--file-mounted", "--cert", "kim.example.com", "--format", "generic"], "TLS form"),
    # Names the API server refuses (the stand-in's test_kubeapi_standin checks its own refusal),
    # refused before anything is read: also for a dry run, whose output would otherwise not apply.
    (["Kim-Credential", "--cert", "kim.example.com", "--dry-run"],
     "'Kim-Credential' is not a valid Secret name (lower-case letters, digits, '-' and '.', at most 253)"),
    (["c" * 254, "--cert", "kim.example.com"], "is not a valid Secret name"),
    (["c", "-n", "Istio_System", "--cert", "kim.example.com"],
     "-n/--namespace 'Istio_System' is not a valid namespace (lower-case letters, digits and '-', at most 63)"),
    (["bad name-cacert", "--ca-only", "--config-map", "--dry-run"], "'bad name-cacert' is not a valid ConfigMap name"),
])
def test_usage_errors_exit_2(kimpki, args, needle):
    assert_one_line_error(kimpki("secret", "create", *args), 2, needle)


# -- against the stand-in API server -----------------------------------------------------------------

def get_secret(kube_env, name: str) -> dict:
    return kubectl_json("get", "secret", name, "-n", NS, env={"KUBECONFIG": kube_env.kubeconfig_path})


def test_create_then_update_in_place_and_survive_a_failed_update(kube_env, kimpki, seeded):
    d = kimpki.json("secret", "create", "kim-credential", "--cert", "kim.example.com")
    assert d["secrets"][0]["action"] == "created"
    live = get_secret(kube_env, "kim-credential")
    assert decoded(live) == {"cert": Path(seeded["cert"]).read_bytes(), "key": Path(seeded["key"]).read_bytes()}
    assert live["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kimpki"
    assert live["metadata"]["annotations"]["kimpki.io/serial"] == seeded["serial"]
    store = Store.open(kimpki.home)
    assert {"kind": "Secret", "namespace": NS, "name": "kim-credential"} in store.get_cert("kim.example.com").deployed_to
    store.close()

    # The same again: nothing to write.
    again = kimpki.json("secret", "create", "kim-credential", "--cert", "kim.example.com")
    assert again["secrets"][0]["action"] == "unchanged"
    assert get_secret(kube_env, "kim-credential")["metadata"]["resourceVersion"] == live["metadata"]["resourceVersion"]

    # A renewed certificate: updated in place (same uid, new resourceVersion), never deleted.
    renewed = kimpki.json("issue", "kim.example.com")
    res = kimpki.ok("secret", "create", "kim-credential", "--cert", "kim.example.com")
    assert "secret/kim-credential updated in namespace istio-system" in res.out
    now = get_secret(kube_env, "kim-credential")
    assert now["metadata"]["uid"] == live["metadata"]["uid"]
    assert now["metadata"]["resourceVersion"] != live["metadata"]["resourceVersion"]
    assert now["metadata"]["annotations"]["kimpki.io/serial"] == renewed["serial"]
    assert kube_env.calls("DELETE") == []

    # The update fails with a 500: one line, exit 1, and the Secret still holds the previous certificate.
    third = kimpki.json("issue", "kim.example.com")
    kube_env.fail(method="PUT", resource="secrets", status=500)
    assert_one_line_error(kimpki("secret", "create", "kim-credential", "--cert", "kim.example.com"), 1)
    kept = get_secret(kube_env, "kim-credential")
    assert kept["metadata"]["annotations"]["kimpki.io/serial"] == renewed["serial"]
    assert kept["data"] == now["data"] and kept["metadata"]["uid"] == live["metadata"]["uid"]
    # A re-run succeeds.
    assert kimpki.json("secret", "create", "kim-credential", "--cert", "kim.example.com")["secrets"][0]["action"] == "updated"
    assert get_secret(kube_env, "kim-credential")["metadata"]["annotations"]["kimpki.io/serial"] == third["serial"]


def test_an_unmanaged_secret_is_refused_without_force(kube_env, kimpki, seeded):
    kube_env.put_object({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kim-credential", "namespace": NS},
                         "type": "Opaque", "data": {"cert": "b2xk", "key": "b2xk"}})
    assert_one_line_error(kimpki("secret", "create", "kim-credential", "--cert", "kim.example.com"), 1, "--force")
    assert decoded(get_secret(kube_env, "kim-credential"))["cert"] == b"old"
    d = kimpki.json("secret", "create", "kim-credential", "--cert", "kim.example.com", "--force")
    assert d["secrets"][0]["action"] == "updated"
    live = get_secret(kube_env, "kim-credential")
    assert decoded(live)["cert"] == Path(seeded["cert"]).read_bytes()
    assert live["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kimpki"


def test_mutual_writes_the_ca_secret_first_and_warns_about_a_stale_one(kube_env, kimpki, seeded):
    d = kimpki.json("secret", "create", "kim-credential", "--cert", "kim.example.com", "--mutual", "--ca-secret")
    assert [s["name"] for s in d["secrets"]] == ["kim-credential", "kim-credential-cacert"]
    rv = {n: int(kube_env.get_object("secrets", NS, n)["metadata"]["resourceVersion"])
          for n in ("kim-credential", "kim-credential-cacert")}
    assert rv["kim-credential-cacert"] < rv["kim-credential"]  # the CA is there before the credential
    assert decoded(get_secret(kube_env, "kim-credential-cacert")) == {"cacert": Path(seeded["ca"]).read_bytes()}
    res = kimpki.ok("secret", "create", "kim-credential", "--cert", "kim.example.com", "--mutual")
    assert "Secret kim-credential-cacert exists, and Istio reads a MUTUAL server's CA from it" in res.err


def test_file_mounted_keeps_other_ca_files_and_says_to_restart(kube_env, kimpki, seeded):
    kube_env.put_object({"apiVersion": "v1", "kind": "Secret",
                         "metadata": {"name": "istio-ingressgateway-ca-certs", "namespace": NS,
                                      "labels": {"app.kubernetes.io/managed-by": "kimpki"}},
                         "type": "Opaque", "data": {"bookinfo.com.crt": "Ym9va2luZm8="}})
    res = kimpki.ok("secret", "create", "--file-mounted", "--cert", "kim.example.com", "--mutual")
    assert "restart the gateway pods" in res.err
    cas = decoded(get_secret(kube_env, "istio-ingressgateway-ca-certs"))
    assert cas == {"bookinfo.com.crt": b"bookinfo", "example.com.crt": Path(seeded["ca"]).read_bytes()}
    tls = get_secret(kube_env, "istio-ingressgateway-certs")
    assert tls["type"] == "kubernetes.io/tls" and set(tls["data"]) == {"tls.crt", "tls.key"}


# -- start-up cost --------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["--help"], ["gateway", "--help"], ["secret", "create", "--help"], ["gateway", "mount", "--help"],
    ["secret", "create", "kim-credential", "--cert", "kim.example.com", "--dry-run", "--mutual", "--ca-secret"],
    ["gateway", "render", "--host", "kim.example.com", "--credential", "kim-credential", "--validate"],
    ["gateway", "mount", "--local", "-f", str(DEPLOYMENT_FILE), "--secret", "s", "--mount-path", "/etc/s"],
    ["gateway", "unmount", "--local", "-f", str(DEPLOYMENT_FILE), "--secret", "istio-ingressgateway-certs"],
])
def test_local_commands_never_import_kubernetes(kimpki, args):
    if "--cert" in args:
        kimpki.ok("issue", "kim.example.com")
    code = ("import sys, runpy\n"
            f"sys.argv = ['kimpki', *{args!r}]\n"
            "try:\n    runpy.run_module('kimpki', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'urllib3'))\n"
            "print('IMPORTED', bad)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=kimpki.env, capture_output=True, text=True,
                          cwd=kimpki.cwd)
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTED []" in proc.stdout, proc.stdout[-500:]
