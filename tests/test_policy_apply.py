"""``kimpki plan`` / ``kimpki apply`` on the shipped policies: into a manifests folder served by a real
Envoy (``kimpki gateway serve``) and checked with curl, and into the stand-in Kubernetes API server."""

from __future__ import annotations

import hashlib
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from kimpki.istio.volumes import mount_ops, mounted_secrets
from kimpki.ops.converge import converge
from kimpki.pki.keys import KeyType
from kimpki.policy import load_policy
from kimpki.store import Store
from tests.conftest import ROOT, Kimpki, assert_one_line_error, wait_until
from tests.istio_helpers import DEPLOYMENT_FILE, kubectl, kubectl_json
from tests.kubeapi.fixtures import *  # noqa: F401,F403
from tests.tlspeers import assert_curl_refused

POLICIES = ROOT / "policies"
BOOKINFO_MOUNT = "/etc/istio/ingressgateway-bookinfo-certs"

FIRST_APPLY = [  # (action, kind, name) in the order apply takes them
    ("create", "CertificateAuthority", "example.com"),
    ("set", "Constraints", "example.com"),
    ("issue", "Certificate", "kim.example.com"),
    ("issue", "Certificate", "kim-new.example.com"),
    ("issue", "Certificate", "bookinfo.com"),
    ("issue", "Certificate", "kim-client"),
    ("create", "Secret", "kim-credential"),
    ("create", "Secret", "kim-new-credential"),
    ("create", "Secret", "istio-ingressgateway-bookinfo-certs"),
    ("patch", "Deployment", "istio-ingressgateway"),
    ("create", "Gateway", "kim-gateway"),
    ("create", "VirtualService", "kim-gateway-service"),
    ("create", "Gateway", "bookinfo-gateway"),
    ("create", "VirtualService", "bookinfo-gateway-service"),
]


def actions(report: dict) -> list[tuple[str, str, str]]:
    return [(a["action"], a["kind"], a["name"]) for a in report["actions"]]


def snapshot(folder: Path) -> dict[str, tuple[str, int, int]]:
    """Every file's content hash, mode and mtime: "byte-identical and untouched"."""
    return {f.name: (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mode & 0o777, f.stat().st_mtime_ns)
            for f in sorted(folder.iterdir())}


def copy_policies(dest: Path) -> Path:
    shutil.copytree(POLICIES, dest, ignore=shutil.ignore_patterns("out", "README.md"))
    return dest


# -- a local gateway, as a user starts it ----------------------------------------------------------

class Served:
    """``kimpki gateway serve -f FOLDER --port 0`` in the background (real Envoy)."""

    def __init__(self, kimpki: Kimpki, folder: Path):
        self.proc = subprocess.Popen([sys.executable, "-m", "kimpki", "gateway", "serve", "-f", str(folder),
                                      "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     cwd=kimpki.cwd, env=kimpki.env)
        self.lines: list[str] = []
        self.port = None
        for line in self.proc.stdout:  # ends when the process exits
            self.lines.append(line.rstrip())
            m = re.search(r"on https://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
            if "ready in" in line:
                break
        if self.port is None or self.proc.poll() is not None:
            self.stop()
            raise AssertionError("kimpki gateway serve did not start:\n" + "\n".join(self.lines))

    def curl(self, host: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(["curl", "-sS", "--max-time", "5", "--resolve", f"{host}:{self.port}:127.0.0.1",
                               *extra, f"https://{host}:{self.port}/health"], capture_output=True, text=True)

    def served_serial(self, host: str, cafile: Path) -> str:
        ctx = ssl.create_default_context(cafile=str(cafile))
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as tls:
                cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
        return format(cert.serial_number, "x")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


def store_paths(home: Path) -> dict:
    store = Store.open(home)
    try:
        client = store.get_cert("kim-client")
        return {"ca": store.get_ca("example.com").cert_path, "client_cert": client.cert_path,
                "client_key": client.key_path,
                "serials": {c.name: c.serial for c in store.list_certs()}}
    finally:
        store.close()


# -- the shipped policies into a manifests folder ---------------------------------------------------

@pytest.fixture(scope="module")
def applied(tmp_path_factory):
    """The shipped policies copied to a temporary folder; plan, apply, apply again."""
    base = tmp_path_factory.mktemp("apply")
    (base / "work").mkdir()
    k = Kimpki(base / "home", base / "work")
    policies = copy_policies(base / "policies")
    out = policies / "out"
    plan = k.json("plan", "-f", policies)
    assert not out.exists()  # a plan writes nothing
    first = k.json("apply", "-f", policies)
    files = snapshot(out)
    second = k.ok("apply", "-f", policies)
    second_json = k.json("apply", "-f", policies)
    plan_after = k.ok("plan", "-f", policies)
    return {"k": k, "policies": policies, "out": out, "plan": plan, "first": first, "files": files,
            "second": second, "second_json": second_json, "plan_after": plan_after}


def test_plan_lists_what_apply_then_does(applied):
    plan, first = applied["plan"], applied["first"]
    assert actions(plan) == actions(first) == FIRST_APPLY
    assert (plan["applied"], first["applied"], first["changes"]) == (False, True, len(FIRST_APPLY))
    assert all(not a["done"] for a in plan["actions"]) and all(a["done"] for a in first["actions"])
    by = {(a["kind"], a["name"]): a for a in first["actions"]}
    assert by[("Certificate", "kim.example.com")]["reason"] == "missing"
    assert by[("Secret", "kim-credential")]["reason"] == "new certificate"
    assert by[("Secret", "kim-credential")]["where"] == f"manifests {applied['out']}"
    assert by[("Constraints", "example.com")]["reason"] == (
        "domains example.com, bookinfo.com (bare, subdomains); no wildcards; no IPs; at most 365d")
    assert by[("Deployment", "istio-ingressgateway")]["reason"] == (
        f"mount Secret istio-ingressgateway-bookinfo-certs at {BOOKINFO_MOUNT} "
        "(patch file istio-ingressgateway.volumes-patch.yaml)")
    # Each action points back at the policy line it comes from.
    assert by[("Gateway", "kim-gateway")]["source"] == f"{applied['policies']}/gateways.yaml:4"
    assert first["api_requests"] == {} and first["warnings"] == []


def test_second_apply_changes_nothing_and_touches_no_file(applied):
    assert applied["second"].out.strip() == "no changes"
    assert applied["plan_after"].out.strip() == "no changes"
    assert applied["second_json"]["changes"] == 0 and applied["second_json"]["actions"] == []
    assert snapshot(applied["out"]) == applied["files"]


def test_the_folder_holds_the_seeds_manifests(applied):
    out = applied["out"]
    assert sorted(applied["files"]) == [
        "bookinfo-gateway.gateway.yaml", "istio-ingressgateway-bookinfo-certs.yaml",
        "istio-ingressgateway.volumes-patch.yaml", "kim-credential.yaml", "kim-gateway.gateway.yaml",
        "kim-new-credential.yaml"]
    assert out.stat().st_mode & 0o777 == 0o700  # it holds private keys
    for name, (_, mode, _) in applied["files"].items():
        assert mode == (0o644 if name.endswith(("gateway.yaml", "volumes-patch.yaml")) else 0o600), name
    kim = yaml.safe_load((out / "kim-credential.yaml").read_text())
    assert (kim["type"], sorted(kim["data"])) == ("Opaque", ["cert", "key"])
    new = yaml.safe_load((out / "kim-new-credential.yaml").read_text())
    assert sorted(new["data"]) == ["cacert", "cert", "key"]
    assert new["metadata"]["annotations"]["kimpki.io/mode"] == "mutual"
    book = yaml.safe_load((out / "istio-ingressgateway-bookinfo-certs.yaml").read_text())
    assert (book["type"], sorted(book["data"])) == ("kubernetes.io/tls", ["tls.crt", "tls.key"])
    patch = yaml.safe_load((out / "istio-ingressgateway.volumes-patch.yaml").read_text())
    assert patch == {"spec": {"template": {"spec": {
        "containers": [{"name": "istio-proxy", "volumeMounts": [
            {"mountPath": BOOKINFO_MOUNT, "name": "ingressgateway-bookinfo-certs", "readOnly": True}]}],
        "volumes": [{"name": "ingressgateway-bookinfo-certs",
                     "secret": {"secretName": "istio-ingressgateway-bookinfo-certs", "optional": True}}]}}}}


def test_constraints_set_by_apply_refuse_issue_outside_them(applied):
    k = applied["k"]
    res = k("issue", "evil.com", "--ca", "example.com")
    assert_one_line_error(res, 1, "CA 'example.com' refuses this certificate: evil.com is not in allowedDomains "
                                  "(example.com, bookinfo.com)")
    assert_one_line_error(k("issue", "*.example.com", "--ca", "example.com"), 1, "allowWildcards is false")


@pytest.fixture(scope="module")
def served(applied):
    gw = Served(applied["k"], applied["out"])
    yield gw
    gw.stop()


def test_envoy_serves_kim_simple(applied, served):
    paths = store_paths(applied["k"].home)
    r = served.curl("kim.example.com", "--cacert", str(paths["ca"]))
    assert (r.returncode, r.stdout) == (0, '{"status":"UP"}'), r.stderr
    assert served.served_serial("kim.example.com", paths["ca"]) == paths["serials"]["kim.example.com"]
    assert any("serving kim.example.com (SIMPLE, credential kim-credential)" in line for line in served.lines)


def test_envoy_serves_kim_new_mutual(applied, served):
    paths = store_paths(applied["k"].home)
    without = served.curl("kim-new.example.com", "--cacert", str(paths["ca"]))
    assert_curl_refused(without, "alert certificate required")  # no client certificate: refused
    r = served.curl("kim-new.example.com", "--cacert", str(paths["ca"]), "--cert", str(paths["client_cert"]),
                    "--key", str(paths["client_key"]))
    assert (r.returncode, r.stdout) == (0, '{"status":"UP"}'), r.stderr


def test_envoy_serves_bookinfo_file_mounted_through_the_volume_patch(applied, served):
    paths = store_paths(applied["k"].home)
    r = served.curl("bookinfo.com", "--cacert", str(paths["ca"]))
    assert (r.returncode, r.stdout) == (0, '{"status":"UP"}'), r.stderr
    assert served.served_serial("bookinfo.com", paths["ca"]) == paths["serials"]["bookinfo.com"]
    assert any(f"serving bookinfo.com (SIMPLE, Secret istio-ingressgateway-bookinfo-certs mounted at {BOOKINFO_MOUNT})"
               in line for line in served.lines)


def test_apply_dry_run_is_a_plan(tmp_path):
    k = Kimpki(tmp_path / "home", tmp_path)
    policies = copy_policies(tmp_path / "policies")
    dry = k.json("apply", "-f", policies, "--dry-run")
    assert actions(dry) == FIRST_APPLY and dry["applied"] is False
    assert not (policies / "out").exists()
    store = Store.open(tmp_path / "home")
    assert (store.list_cas(), store.list_certs(include_history=True)) == ([], [])
    store.close()


# -- changes: a folder that holds the gateway Deployment, hosts edited, live reload ------------------

def test_changed_hosts_are_reissued_and_served_without_restart(tmp_path):
    k = Kimpki(tmp_path / "home", tmp_path)
    policies = copy_policies(tmp_path / "policies")
    out = policies / "out"
    out.mkdir()
    out.chmod(0o755)
    deployment = out / "istio-ingressgateway-deployment.yaml"
    shutil.copy(DEPLOYMENT_FILE, deployment)
    original = DEPLOYMENT_FILE.read_text()

    first = k.json("apply", "-f", policies)
    by = {(a["kind"], a["name"]): a for a in first["actions"]}
    # The folder holds the Deployment: its document is patched in place, no patch file is written.
    assert by[("Deployment", "istio-ingressgateway")]["where"] == f"manifests {out} ({deployment.name})"
    assert not (out / "istio-ingressgateway.volumes-patch.yaml").exists()
    assert out.stat().st_mode & 0o777 == 0o755  # an existing folder keeps its mode
    patched_text = deployment.read_text()
    comments = [line for line in original.splitlines() if line.startswith("#")]
    assert patched_text.splitlines()[:len(comments)] == comments  # the file's header is kept
    patched = yaml.safe_load(patched_text)
    assert {"mount_path": BOOKINFO_MOUNT, "volume": "ingressgateway-bookinfo-certs",
            "secret": "istio-ingressgateway-bookinfo-certs"} in mounted_secrets(patched)
    assert mount_ops(patched, secret_name="istio-ingressgateway-bookinfo-certs", mount_path=BOOKINFO_MOUNT) == []
    assert k.ok("apply", "-f", policies).out.strip() == "no changes"

    gw = Served(k, out)
    try:
        paths = store_paths(k.home)
        assert gw.curl("bookinfo.com", "--cacert", str(paths["ca"])).returncode == 0
        old_serial = gw.served_serial("kim.example.com", paths["ca"])

        certs = policies / "certificates.yaml"
        certs.write_text(certs.read_text().replace("hosts: [kim.example.com]",
                                                   "hosts: [kim.example.com, www.kim.example.com]"))
        plan = k.json("plan", "-f", policies)
        assert actions(plan) == [("issue", "Certificate", "kim.example.com"), ("update", "Secret", "kim-credential"),
                                 ("update", "Gateway", "kim-gateway"),
                                 ("update", "VirtualService", "kim-gateway-service")]
        assert plan["actions"][0]["reason"] == "hosts changed (kim.example.com -> kim.example.com, www.kim.example.com)"
        assert plan["actions"][1]["reason"] == "new certificate"
        applied = k.json("apply", "-f", policies)
        assert actions(applied) == actions(plan)
        new_serial = applied["actions"][0]["serial"]

        # The running Envoy picks up the new Secret and Gateway through its file watch.
        r = wait_until(lambda: (c := gw.curl("www.kim.example.com", "--cacert", str(paths["ca"]))).returncode == 0 and c,
                       "the gateway to serve www.kim.example.com")
        assert (r.returncode, r.stdout) == (0, '{"status":"UP"}'), r.stderr
        assert gw.served_serial("kim.example.com", paths["ca"]) == new_serial != old_serial
        assert gw.proc.poll() is None
    finally:
        gw.stop()
    assert k.ok("apply", "-f", policies).out.strip() == "no changes"


def test_renewal_reasons_with_an_injected_clock(tmp_path):
    k = Kimpki(tmp_path / "home", tmp_path)
    policies = copy_policies(tmp_path / "policies")
    k.ok("apply", "-f", policies)
    policy = load_policy([policies])
    store = Store.open(k.home)
    try:
        issued = store.get_cert("kim.example.com").not_before + timedelta(minutes=5)

        def reasons(p, days: float) -> dict[str, str]:
            rep = converge(p, store, now=issued + timedelta(days=days), execute=False)
            return {a.name: re.split(r" \(| on ", a.reason)[0] for a in rep.actions if a.kind == "Certificate"}

        assert reasons(policy, 59) == {}
        # renewBefore 30d of 90 days (kim*), 33% (bookinfo.com), default a third (kim-client)
        assert reasons(policy, 60.5) == {"kim.example.com": "due for renewal", "kim-new.example.com": "due for renewal",
                                         "bookinfo.com": "due for renewal", "kim-client": "due for renewal"}
        assert reasons(policy, 91) == dict.fromkeys(
            ["kim.example.com", "kim-new.example.com", "bookinfo.com", "kim-client"], "expired")
        certs = [replace(c, key_type=KeyType.EC_P384) if c.name == "kim-new.example.com" else
                 replace(c, org="other") if c.name == "bookinfo.com" else
                 replace(c, usage="server") if c.name == "kim-client" else c for c in policy.certificates]
        changed = replace(policy, certificates=tuple(certs))
        rep = converge(changed, store, now=issued, execute=False)
        assert {a.name: a.reason for a in rep.actions if a.kind == "Certificate"} == {
            "kim-new.example.com": "key type changed (ec-p256 -> ec-p384)",
            "bookinfo.com": "organisation changed (bookinfo organization -> other)",
            "kim-client": "usage changed (client -> server)"}
        other_ca = replace(policy.authorities[0], name="example-2", constraints=None)
        moved = replace(policy, authorities=(*policy.authorities, other_ca), certificates=tuple(
            replace(c, ca="example-2") if c.name == "kim.example.com" else c for c in policy.certificates))
        rep = converge(moved, store, now=issued, execute=False)
        assert [(a.verb, a.kind, a.name, a.reason) for a in rep.actions][:3] == [
            ("create", "CertificateAuthority", "example-2", "missing"),
            ("issue", "Certificate", "kim.example.com", "CA changed (example.com -> example-2)"),
            ("update", "Secret", "kim-credential", "new certificate")]
    finally:
        store.close()


def test_apply_never_replaces_a_ca_that_differs(tmp_path):
    k = Kimpki(tmp_path / "home", tmp_path)
    k.ok("ca", "init", "example.com", "--org", "someone else", "--key-type", "ec-p384")
    policies = copy_policies(tmp_path / "policies")
    res = k.ok("apply", "-f", policies, "--json")
    report = res.json
    assert ("create", "CertificateAuthority", "example.com") not in actions(report)
    assert report["warnings"] == [
        f"{policies}/authority.yaml:4: CA example.com in the store has key type ec-p384, the policy says ec-p256; "
        "organisation 'someone else', the policy says 'example Inc.'; apply never replaces a CA "
        "(rotate it with 'kimpki ca rotate example.com')"]
    assert "kimpki: warning: " in res.err


# -- a cluster target: the stand-in API server -------------------------------------------------------

def cluster_policies(dest: Path) -> Path:
    policies = copy_policies(dest)
    (policies / "target.yaml").write_text(
        "apiVersion: kimpki.io/v1alpha1\nkind: Target\nmetadata: {name: cluster}\nspec:\n  cluster: {}\n")
    return policies


def writes(srv, since: int) -> list[dict]:
    return [r for r in srv.request_log[since:] if r.get("resource") is not None and r["method"] != "GET"]


def test_cluster_target_apply_then_no_writes(kube_env, tmp_path):
    srv = kube_env
    srv.put_object(yaml.safe_load(DEPLOYMENT_FILE.read_text()))
    k = Kimpki(tmp_path / "home", tmp_path)
    env = {"KUBECONFIG": srv.kubeconfig_path}
    policies = cluster_policies(tmp_path / "policies")

    start = len(srv.request_log)
    plan = k.json("plan", "-f", policies, env=env)
    assert actions(plan) == FIRST_APPLY
    assert writes(srv, start) == []  # a plan only reads
    assert all(a["where"] == f"cluster {srv.url}" for a in plan["actions"] if a["kind"] not in
               ("CertificateAuthority", "Constraints", "Certificate"))

    first = k.json("apply", "-f", policies, env=env)
    assert actions(first) == FIRST_APPLY
    kim = srv.get_object("secrets", "istio-system", "kim-credential")
    assert kim["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kimpki"
    assert sorted(kim["data"]) == ["cert", "key"]
    assert sorted(srv.get_object("secrets", "istio-system", "kim-new-credential")["data"]) == ["cacert", "cert", "key"]
    assert srv.get_object("secrets", "istio-system", "istio-ingressgateway-bookinfo-certs")["type"] == "kubernetes.io/tls"
    gw = kubectl_json("-n", "istio-system", "get", "gateway", "kim-gateway", env=env)
    assert [s["tls"] for s in gw["spec"]["servers"]] == [{"mode": "SIMPLE", "credentialName": "kim-credential"},
                                                        {"mode": "MUTUAL", "credentialName": "kim-new-credential"}]
    assert srv.get_object("virtualservices", "istio-system", "bookinfo-gateway-service") is not None
    dep = srv.get_object("deployments", "istio-system", "istio-ingressgateway")
    assert {"mount_path": BOOKINFO_MOUNT, "volume": "ingressgateway-bookinfo-certs",
            "secret": "istio-ingressgateway-bookinfo-certs"} in mounted_secrets(dep)

    start = len(srv.request_log)
    again = k.json("apply", "-f", policies, env=env)
    assert again["changes"] == 0
    assert writes(srv, start) == []  # converged: only GETs
    assert again["api_requests"] == {"cluster": len(srv.request_log) - start}
    # (no resourceVersion assert: on a real cluster the Deployment's moves with its controller's
    # status writes; "converged" means kimpki sent no write, which writes(...) == [] says)
    assert k.ok("plan", "-f", policies, env=env).out.strip() == "no changes"

    assert_one_line_error(k("issue", "evil.com", "--ca", "example.com"), 1,
                          "CA 'example.com' refuses this certificate: evil.com is not in allowedDomains")


def test_cluster_target_errors_are_one_line_exit_1(kube_env, tmp_path):
    k = Kimpki(tmp_path / "home", tmp_path)
    policies = cluster_policies(tmp_path / "policies")
    # No ingress gateway Deployment in the cluster: the mount cannot be planned.
    res = k("apply", "-f", policies, env={"KUBECONFIG": kube_env.kubeconfig_path})
    (mount,) = load_policy([policies]).mounts
    assert_one_line_error(res, 1, f"kimpki: error: {mount.where}: GatewayMount ingressgateway-bookinfo-certs: "
                                  "no Deployment istio-ingressgateway in namespace istio-system")
    kube_env.put_object(yaml.safe_load(DEPLOYMENT_FILE.read_text()))
    kube_env.fail(method="POST", resource="gateways", status=500)
    res = k("apply", "-f", policies, env={"KUBECONFIG": kube_env.kubeconfig_path})
    assert_one_line_error(res, 1, f"{policies}/gateways.yaml:4: Gateway kim-gateway: ")
    # Everything before the failure is in place; the re-run finishes the job.
    report = k.json("apply", "-f", policies, env={"KUBECONFIG": kube_env.kubeconfig_path})
    assert actions(report) == [("create", "Gateway", "kim-gateway"), ("create", "VirtualService", "kim-gateway-service"),
                               ("create", "Gateway", "bookinfo-gateway"),
                               ("create", "VirtualService", "bookinfo-gateway-service")]


def test_the_patch_file_is_what_kubectl_patch_takes(kube_env, tmp_path):
    """The folder's strategic-merge patch, applied by real kubectl, mounts what a cluster apply would:
    a cluster apply afterwards finds nothing to patch."""
    kube_env.put_object(yaml.safe_load(DEPLOYMENT_FILE.read_text()))
    env = {"KUBECONFIG": kube_env.kubeconfig_path}
    k = Kimpki(tmp_path / "home", tmp_path)
    policies = copy_policies(tmp_path / "policies")
    k.ok("apply", "-f", policies)
    kubectl("-n", "istio-system", "patch", "deployment", "istio-ingressgateway", "--patch-file",
            policies / "out" / "istio-ingressgateway.volumes-patch.yaml", env=env)
    dep = kubectl_json("-n", "istio-system", "get", "deployment", "istio-ingressgateway", env=env)
    assert mount_ops(dep, secret_name="istio-ingressgateway-bookinfo-certs", mount_path=BOOKINFO_MOUNT) == []
    assert len([v for v in dep["spec"]["template"]["spec"]["volumes"]
                if v["name"] == "ingressgateway-bookinfo-certs"]) == 1
    cluster = cluster_policies(tmp_path / "cluster-policies")
    report = k.json("plan", "-f", cluster, env=env)
    assert ("patch", "Deployment", "istio-ingressgateway") not in actions(report)


def imported_by_apply(k: Kimpki, policy: Path, which: str) -> str:
    """The modules ``m`` for which the expression ``which`` holds that ``kimpki apply -f policy``
    imported (the list as printed), after checking that the apply succeeded."""
    code = ("import sys, runpy\n"
            f"sys.argv = ['kimpki', 'apply', '-f', {str(policy)!r}]\n"
            "try:\n    runpy.run_module('kimpki', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            f"print('IMPORTED', sorted(m for m in sys.modules if {which}))\n")
    proc = subprocess.run([sys.executable, "-c", code], env=k.env, capture_output=True, text=True, cwd=policy.parent)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("IMPORTED ", 1)[1].strip()


def test_a_manifests_target_never_imports_kubernetes(tmp_path):
    k = Kimpki(tmp_path / "home", tmp_path)
    policies = copy_policies(tmp_path / "policies")
    assert imported_by_apply(k, policies, "m.split('.')[0] in ('kubernetes', 'urllib3')") == "[]"
    assert (policies / "out" / "kim-credential.yaml").exists()


def test_an_apply_of_certificates_alone_imports_no_credential_modules(tmp_path):
    """Start-up is part of every apply: what a policy without credentials, mounts or CRL settings
    does not use (credentials, OCSP staples, revocation, the Deployment patch) is not imported."""
    k = Kimpki(tmp_path / "home", tmp_path)
    (tmp_path / "pki.yaml").write_text("""\
apiVersion: kimpki.io/v1alpha1
kind: CertificateAuthority
metadata: {name: example.com}
spec: {}
---
apiVersion: kimpki.io/v1alpha1
kind: Certificate
metadata: {name: kim.example.com}
spec: {hosts: [kim.example.com], ca: example.com}
""")
    assert imported_by_apply(k, tmp_path / "pki.yaml", "m in ('kimpki.ops.credentials', 'kimpki.ops.stapling', "
                                                        "'kimpki.ops.revoking', 'kimpki.ops.deployment_patch')") == "[]"
    assert k.json("list")["items"][0]["name"] == "kim.example.com"


def test_a_rotated_ca_stands_for_the_policys_ca(tmp_path):
    """After 'kimpki ca rotate' (and 'retire'), the successor is the policy's CA: apply does not move
    certificates back to the old CA, keeps the constraints on every generation, and issues from the
    successor."""
    k = Kimpki(tmp_path / "home", tmp_path)
    policies = copy_policies(tmp_path / "policies")
    out = policies / "out"
    k.ok("apply", "-f", policies)
    k.ok("ca", "rotate", "example.com", "--manifests", out)
    assert k.ok("plan", "-f", policies).out.strip() == "no changes"
    k.ok("ca", "retire", "example.com", "--manifests", out)
    assert k.ok("plan", "-f", policies).out.strip() == "no changes"
    successor = next(c["name"] for c in k.json("ca", "list")["items"] if c["name"] != "example.com")
    assert_one_line_error(k("issue", "evil.com", "--ca", successor), 1,
                          f"CA '{successor}' refuses this certificate: evil.com is not in allowedDomains")

    certs = policies / "certificates.yaml"
    certs.write_text(certs.read_text().replace("hosts: [kim.example.com]", "hosts: [kim.example.com, www.kim.example.com]"))
    report = k.json("apply", "-f", policies)
    assert actions(report)[:2] == [("issue", "Certificate", "kim.example.com"), ("update", "Secret", "kim-credential")]
    store = Store.open(k.home)
    try:
        assert store.get_cert("kim.example.com").ca == successor
    finally:
        store.close()
    assert k.ok("apply", "-f", policies).out.strip() == "no changes"


def test_encrypted_ca_and_intermediate_from_a_policy(tmp_path):
    k = Kimpki(tmp_path / "home", tmp_path)
    policies = tmp_path / "p"
    policies.mkdir()
    (policies / "root.pass").write_text("correct horse\n")
    (policies / "pki.yaml").write_text("""\
apiVersion: kimpki.io/v1alpha1
kind: Target
metadata: {name: local}
spec: {manifests: out}
---
apiVersion: kimpki.io/v1alpha1
kind: CertificateAuthority
metadata: {name: root}
spec:
  passphrase: {file: root.pass}
  constraints: {allowedDomains: [example.com]}
---
apiVersion: kimpki.io/v1alpha1
kind: CertificateAuthority
metadata: {name: issuing}
spec:
  parent: root
  duration: 365d
  passphrase: {env: ISSUING_PASSPHRASE}
---
apiVersion: kimpki.io/v1alpha1
kind: Certificate
metadata: {name: kim.example.com}
spec: {hosts: [kim.example.com], ca: issuing}
""")
    res = k("apply", "-f", policies)
    assert_one_line_error(res, 2, f"{policies}/pki.yaml:13: CertificateAuthority issuing: $ISSUING_PASSPHRASE "
                                  "(its passphrase) is not set")
    assert k.json("ca", "list")["items"] == []  # refused before anything changed
    env = {"ISSUING_PASSPHRASE": "battery staple"}
    report = k.json("apply", "-f", policies, env=env)
    assert actions(report) == [("create", "CertificateAuthority", "root"), ("set", "Constraints", "root"),
                               ("create", "CertificateAuthority", "issuing"), ("issue", "Certificate", "kim.example.com")]
    cas = {c["name"]: c for c in k.json("ca", "list")["items"]}
    assert (cas["root"]["encrypted"], cas["issuing"]["encrypted"], cas["issuing"]["parent"]) == (True, True, "root")
    # The root's constraints hold below the intermediate too.
    res = k("issue", "evil.com", "--ca", "issuing", env={"KIMPKI_CA_PASSPHRASE": "battery staple"})
    assert_one_line_error(res, 1, "CA 'root' (above CA 'issuing') refuses this certificate")
    assert k.ok("apply", "-f", policies, env=env).out.strip() == "no changes"


def test_apply_records_what_each_certificate_carries(tmp_path):
    """The inventory row apply writes for a certificate (SANs, subject, serial, validity, key
    fingerprint) and its chain and CA files are worked out from the hosts and the issuer rather
    than read back from the certificate just signed: each is checked against the certificate."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    from kimpki.pki import keys, parse

    policy = tmp_path / "pki.yaml"
    policy.write_text("""\
apiVersion: kimpki.io/v1alpha1
kind: CertificateAuthority
metadata: {name: root}
spec: {org: example Inc.}
---
apiVersion: kimpki.io/v1alpha1
kind: CertificateAuthority
metadata: {name: issuing}
spec: {parent: root, duration: 365d}
---
apiVersion: kimpki.io/v1alpha1
kind: Certificate
metadata: {name: mixed}
spec:
  hosts: [KIM.Example.com, 10.0.0.7, "bücher.example", "*.kim.example.com", "[2001:DB8::1]", kim.example.com.]
  ca: issuing
  org: kim organization
---
apiVersion: kimpki.io/v1alpha1
kind: Certificate
metadata: {name: ip-client}
spec: {hosts: [10.0.0.8, ip.example.com], ca: root, usage: client, keyType: rsa-2048}
""")
    k = Kimpki(tmp_path / "home", tmp_path)
    k.ok("apply", "-f", policy)
    store = Store.open(tmp_path / "home")
    root = x509.load_pem_x509_certificate((tmp_path / "home/cas/root/ca.crt").read_bytes())
    issuing = x509.load_pem_x509_certificate((tmp_path / "home/cas/issuing/ca.crt").read_bytes())
    expected = {"mixed": (["kim.example.com", "xn--bcher-kva.example", "*.kim.example.com"], ["10.0.0.7", "2001:db8::1"],
                          "CN=kim.example.com,O=kim organization", issuing, [issuing]),
                "ip-client": (["ip.example.com"], ["10.0.0.8"], "CN=10.0.0.8", root, [])}
    for name, (dns, ips, subject, issuer, intermediates) in expected.items():
        rec = store.find_cert(name)
        leaf, *chain = x509.load_pem_x509_certificates(rec.cert_path.read_bytes())
        assert (rec.dns_names, rec.ip_addresses) == parse.sans_of(leaf) == (dns, ips), name
        assert rec.subject == leaf.subject.rfc4514_string() == subject
        assert rec.serial == parse.serial_hex(leaf)
        assert (rec.not_before, rec.not_after) == (leaf.not_valid_before_utc, leaf.not_valid_after_utc)
        assert rec.key_fingerprint == keys.public_key_fingerprint(leaf.public_key())
        assert chain == intermediates and x509.load_pem_x509_certificates(rec.ca_path.read_bytes()) == [root]
        # Each issuer's own key identifier, whichever issuer signed last.
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
        assert aki == issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment is (name == "ip-client")
        assert isinstance(leaf.public_key(), rsa.RSAPublicKey) is (name == "ip-client")
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert [o._name for o in eku] == (["clientAuth"] if name == "ip-client" else ["serverAuth"])
