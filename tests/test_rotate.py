"""`kimpki rotate`: a new key and certificate for a credential Secret, written in place.

Against the stand-in API server (every key set and form, --new-ca, refusals, request counts,
injected faults and the resumed re-run), a folder of manifests (one document rewritten), a
SIGKILL at each step of the store write, and a real Envoy gateway that must not fail one
handshake while the credential it serves is rotated."""

from __future__ import annotations

import base64
import fnmatch
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from kimpki.pki import keys
from kimpki.store import Store
from tests.conftest import WAIT_CEILING, Kimpki, assert_one_line_error, openssl
from tests.istio_helpers import decoded
from tests.kubeapi.fixtures import *  # noqa: F401,F403

NS = "istio-system"


# -- a store with CAs and certificates, made once and copied into each test's home ---------------

@pytest.fixture(scope="module")
def template_home(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("template")
    k = Kimpki(base / "home", base)
    k.ok("ca", "init", "example.com", "--org", "example Inc.")
    k.ok("ca", "init", "example-2026", "--org", "example Inc.")
    k.ok("issue", "kim.example.com", "--org", "kim organization")
    k.ok("issue", "kim-new.example.com", "--org", "kim organization")
    k.ok("issue", "--client", "kim-client.example.com")
    return k.home


@pytest.fixture
def home(kimpki, template_home) -> Kimpki:
    shutil.copytree(template_home, kimpki.home, symlinks=True)
    return kimpki


@pytest.fixture
def cli(kube_env, home) -> Kimpki:
    """The CLI with a ready store, pointed at the stand-in API server."""
    home.env["KUBECONFIG"] = kube_env.kubeconfig_path
    home.env["KUBECACHEDIR"] = str(home.cwd / "kube-cache")
    return home


def create_secret(home: Path, srv, name: str | None, cert: str, **spec) -> None:
    """What 'kimpki secret create NAME --cert CERT ...' does, in-process (set-up only: each CLI
    start that talks to a cluster costs a second of imports)."""
    from datetime import datetime, timezone

    from kimpki.istio.credential import CredentialSpec
    from kimpki.ops.credentials import deployment_record, prepare, publish
    from kimpki.ops.places import ClusterPlace

    store = Store.open(home)
    try:
        prepared = prepare(store, cert, CredentialSpec(name=name, namespace=NS, **spec), now=datetime.now(timezone.utc))
        with ClusterPlace.connect(kubeconfig=srv.kubeconfig_path) as place:
            publish(place, prepared)
        with store.locked():
            for s in prepared.secrets:
                store.record_deployment(prepared.record.id, deployment_record(s, context=None, kubeconfig=None))
    finally:
        store.close()


def live(srv, name: str) -> dict:
    obj = srv.get_object("secrets", NS, name)
    assert obj is not None, f"Secret {name} is gone"
    return obj


def leaf_and_key(secret: dict) -> tuple[x509.Certificate, keys.PrivateKey]:
    data = decoded(secret)
    cert_pem = data.get("cert") or data["tls.crt"]
    key_pem = data.get("key") or data["tls.key"]
    return x509.load_pem_x509_certificates(cert_pem)[0], keys.load_key(key_pem)


def served_serial_of(secret: dict) -> str:
    return format(leaf_and_key(secret)[0].serial_number, "x")


def spki(cert: x509.Certificate) -> str:
    return keys.public_key_fingerprint(cert.public_key())


def store_state(home: Path, name: str = "kim.example.com") -> dict[str, list[str]]:
    """Serials by state (current / previous / pending) for one certificate name."""
    store = Store.open(home)
    try:
        out: dict[str, list[str]] = {}
        for rec in store.list_certs(include_history=True):
            if rec.name == name:
                out.setdefault(rec.state, []).append(rec.serial)
        return out
    finally:
        store.close()


def ca_pem(home: Path, ca: str) -> bytes:
    return (home / "cas" / ca / "ca.crt").read_bytes()


# -- in a cluster ----------------------------------------------------------------------------------

def test_rotate_replaces_key_and_certificate_in_place(kube_env, cli):
    created = cli.json("secret", "create", "kim-credential", "--cert", "kim.example.com")
    before = live(kube_env, "kim-credential")
    old_cert, _ = leaf_and_key(before)
    kube_env.clear_requests()

    d = cli.json("rotate", "kim-credential")
    assert d["action"] == "rotated" and d["secret"] == "kim-credential" and d["namespace"] == NS
    assert d["certificate"] == "kim.example.com" and d["hosts"] == ["kim.example.com"] and d["ca"] == "example.com"
    assert d["old_serial"] == created["serial"] == served_serial_of(before)
    assert d["old_not_after"] == created["not_after"]
    assert d["new_serial"] != d["old_serial"] and d["new_not_after"] >= d["old_not_after"]
    assert d["secrets"] == [{"name": "kim-credential", "action": "updated"}]
    assert d["place"] == f"cluster {kube_env.url}" and d["warnings"] == []

    after = live(kube_env, "kim-credential")
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    new_cert, new_key = leaf_and_key(after)
    assert served_serial_of(after) == d["new_serial"]
    assert spki(new_cert) != spki(old_cert)  # a new key, not the old one re-certified
    assert keys.key_matches(new_key, new_cert.public_key())
    assert new_cert.subject == old_cert.subject and new_cert.issuer == old_cert.issuer
    ann = after["metadata"]["annotations"]
    assert ann["kimpki.io/serial"] == d["new_serial"] and ann["kimpki.io/not-after"] == d["new_not_after"]
    assert after["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kimpki"
    # The same lifetime as before (90 days), and the chain verifies with openssl.
    assert (new_cert.not_valid_after_utc - new_cert.not_valid_before_utc) == \
           (old_cert.not_valid_after_utc - old_cert.not_valid_before_utc)
    (cli.cwd / "leaf.pem").write_bytes(decoded(after)["cert"])
    openssl("verify", "-CAfile", cli.home / "cas" / "example.com" / "ca.crt", cli.cwd / "leaf.pem")

    # Requests: one read, then the PUT guarded by its resourceVersion. Never a DELETE, never a POST.
    sent = [(r["method"], r["resource"], r["name"]) for r in kube_env.calls()]
    assert sent == [("GET", "secrets", "kim-credential"), ("PUT", "secrets", "kim-credential")], sent
    assert {m for m, _, _ in sent} <= {"GET", "PUT"}
    print(f"\nrequests for one SIMPLE rotation: {len(sent)} ({', '.join(m for m, _, _ in sent)})")

    state = store_state(cli.home)
    assert state == {"previous": [d["old_serial"]], "current": [d["new_serial"]]}
    store = Store.open(cli.home)
    assert {"kind": "Secret", "namespace": NS, "name": "kim-credential"} in \
        store.get_cert("kim.example.com").deployed_to
    store.close()
    assert os.readlink(cli.home / "certs" / "kim.example.com" / "current") == f"versions/{d['new_serial']}"

    # Text output names both serials; a second rotation moves on again.
    res = cli.ok("rotate", "kim-credential")
    assert res.out.startswith(f"secret/kim-credential rotated in namespace {NS} (cluster {kube_env.url})")
    assert f"old: serial {d['new_serial']}" in res.out
    assert kube_env.calls("DELETE") == [] and kube_env.calls("POST") == []


@pytest.mark.parametrize("form,keys_in_main,ca_secret_key", [
    (["--format", "tls"], {"tls.crt", "tls.key"}, None),
    (["--mutual"], {"cert", "key", "cacert"}, None),
    (["--mutual", "--format", "tls"], {"tls.crt", "tls.key", "ca.crt"}, None),
    (["--mutual", "--ca-secret"], {"cert", "key"}, "cacert"),
    (["--mutual", "--ca-secret", "--format", "tls"], {"tls.crt", "tls.key"}, "ca.crt"),
])
def test_every_key_set_and_form_keeps_its_shape(kube_env, cli, form, keys_in_main, ca_secret_key):
    create_secret(cli.home, kube_env, "kim-credential", "kim.example.com", format="tls" if "tls" in form else "generic",
                  mutual="--mutual" in form, ca_secret="--ca-secret" in form)
    before = live(kube_env, "kim-credential")
    ca_before = kube_env.get_object("secrets", NS, "kim-credential-cacert")
    d = cli.json("rotate", "kim-credential")
    after = live(kube_env, "kim-credential")
    assert set(after["data"]) == keys_in_main and after["type"] == before["type"]
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert served_serial_of(after) == d["new_serial"] != d["old_serial"]
    assert spki(leaf_and_key(after)[0]) != spki(leaf_and_key(before)[0])
    for k in ("format", "mode", "delivery"):
        assert after["metadata"]["annotations"][f"kimpki.io/{k}"] == before["metadata"]["annotations"][f"kimpki.io/{k}"]
    if "--mutual" in form and ca_secret_key is None:
        ca_key = "cacert" if "cacert" in keys_in_main else "ca.crt"
        assert decoded(after)[ca_key] == ca_pem(cli.home, "example.com")
        assert ca_before is None and kube_env.get_object("secrets", NS, "kim-credential-cacert") is None
    if ca_secret_key:
        # NAME-cacert is kept (same object) and updated with the credential it belongs to.
        ca_after = live(kube_env, "kim-credential-cacert")
        assert ca_after["metadata"]["uid"] == ca_before["metadata"]["uid"]
        assert decoded(ca_after) == {ca_secret_key: ca_pem(cli.home, "example.com")}
        assert ca_after["metadata"]["annotations"]["kimpki.io/serial"] == d["new_serial"]
        assert [s["name"] for s in d["secrets"]] == ["kim-credential", "kim-credential-cacert"]
        # The CA Secret is written before the credential.
        assert int(ca_after["metadata"]["resourceVersion"]) < int(after["metadata"]["resourceVersion"])
    assert kube_env.calls("DELETE") == [] and len(kube_env.calls("POST")) == (2 if ca_secret_key else 1)


def test_file_mounted_rotation_keeps_the_other_ca_files(kube_env, cli):
    kube_env.put_object({"apiVersion": "v1", "kind": "Secret",
                         "metadata": {"name": "istio-ingressgateway-ca-certs", "namespace": NS,
                                      "labels": {"app.kubernetes.io/managed-by": "kimpki"}},
                         "type": "Opaque", "data": {"bookinfo.com.crt": base64.b64encode(b"bookinfo").decode()}})
    create_secret(cli.home, kube_env, None, "kim.example.com", format="tls", file_mounted=True, mutual=True)
    certs_before = live(kube_env, "istio-ingressgateway-certs")
    d = cli.json("rotate", "istio-ingressgateway-certs")
    assert [s["name"] for s in d["secrets"]] == ["istio-ingressgateway-certs", "istio-ingressgateway-ca-certs"]
    certs = live(kube_env, "istio-ingressgateway-certs")
    assert certs["type"] == "kubernetes.io/tls" and set(certs["data"]) == {"tls.crt", "tls.key"}
    assert certs["metadata"]["uid"] == certs_before["metadata"]["uid"]
    assert served_serial_of(certs) == d["new_serial"] != d["old_serial"]
    cas = decoded(live(kube_env, "istio-ingressgateway-ca-certs"))
    assert cas == {"bookinfo.com.crt": b"bookinfo", "example.com.crt": ca_pem(cli.home, "example.com")}

    # To another CA: the gateway reads the file its Gateway names (example.com.crt), so that file
    # gets the new CA; bookinfo's file stays.
    d = cli.json("rotate", "istio-ingressgateway-certs", "--new-ca", "example-2026")
    assert d["ca"] == "example-2026"
    cas = decoded(live(kube_env, "istio-ingressgateway-ca-certs"))
    assert cas == {"bookinfo.com.crt": b"bookinfo", "example.com.crt": ca_pem(cli.home, "example-2026")}
    assert leaf_and_key(live(kube_env, "istio-ingressgateway-certs"))[0].issuer.rfc4514_string() == \
        "CN=example-2026,O=example Inc."


def test_file_mounted_rotation_keeps_a_custom_ca_file_name(kube_env, cli):
    """--ca-file-name is recorded (kimpki.io/ca-file-name): rotations, also to another CA, keep
    writing the file the Gateway's caCertificates names."""
    create_secret(cli.home, kube_env, None, "kim.example.com", format="tls", file_mounted=True, mutual=True,
                  ca_file_name="kim-clients.pem")
    ann = live(kube_env, "istio-ingressgateway-certs")["metadata"]["annotations"]
    assert ann["kimpki.io/ca-file-name"] == "kim-clients.pem"
    for args in ([], ["--new-ca", "example-2026"]):
        cli.json("rotate", "istio-ingressgateway-certs", *args)
    cas = decoded(live(kube_env, "istio-ingressgateway-ca-certs"))
    assert cas == {"kim-clients.pem": ca_pem(cli.home, "example-2026")}
    ann = live(kube_env, "istio-ingressgateway-certs")["metadata"]["annotations"]
    assert ann["kimpki.io/ca-file-name"] == "kim-clients.pem" and ann["kimpki.io/ca"] == "example-2026"


def test_new_ca_moves_issuer_and_published_ca(kube_env, cli):
    create_secret(cli.home, kube_env, "kim-new-credential", "kim-new.example.com", mutual=True)
    d = cli.json("rotate", "kim-new-credential", "--new-ca", "example-2026")
    assert d["ca"] == "example-2026" and d["action"] == "rotated"
    after = live(kube_env, "kim-new-credential")
    cert, _ = leaf_and_key(after)
    assert cert.issuer.rfc4514_string() == "CN=example-2026,O=example Inc."
    assert decoded(after)["cacert"] == ca_pem(cli.home, "example-2026")
    assert after["metadata"]["annotations"]["kimpki.io/ca"] == "example-2026"
    store = Store.open(cli.home)
    assert store.get_cert("kim-new.example.com").ca == "example-2026"
    store.close()
    # The next rotation stays with the new CA.
    d2 = cli.json("rotate", "kim-new-credential")
    assert d2["ca"] == "example-2026"
    assert leaf_and_key(live(kube_env, "kim-new-credential"))[0].issuer == cert.issuer
    # --dry-run says what would happen and changes nothing.
    rv = live(kube_env, "kim-new-credential")["metadata"]["resourceVersion"]
    dry = cli.json("rotate", "kim-new-credential", "--dry-run", "--new-ca", "example.com")
    assert dry["action"] == "would rotate" and dry["new_serial"] is None and dry["ca"] == "example.com"
    assert dry["old_serial"] == d2["new_serial"]
    assert live(kube_env, "kim-new-credential")["metadata"]["resourceVersion"] == rv
    assert "pending" not in store_state(cli.home, "kim-new.example.com")


def test_refusals_are_one_line_and_write_nothing(kube_env, cli):
    create_secret(cli.home, kube_env, "kim-credential", "kim.example.com", mutual=True, ca_secret=True)
    assert_one_line_error(cli("rotate", "nope"), 1, "no Secret nope in namespace istio-system (cluster ")
    assert_one_line_error(cli("rotate", "kim-credential-cacert"), 1,
                          "holds only the CA bundle of kim-credential; rotate kim-credential")
    assert_one_line_error(cli("rotate", "kim-credential", "--new-ca", "nope"), 1, "no CA named 'nope'")

    # A Secret kimpki did not write (kubectl create secret): nothing to rebuild it from, even with --force.
    kube_env.put_object({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "foreign", "namespace": NS},
                         "type": "Opaque", "data": {"cert": "b2xk", "key": "b2xk"}})
    assert_one_line_error(cli("rotate", "foreign", "--force"), 1, "was not written by kimpki", "nothing to rebuild")

    # Annotations stripped (label kept): kimpki cannot tell what to rotate it for.
    stripped = live(kube_env, "kim-credential")
    stripped["metadata"]["annotations"] = {"note": "someone cleaned up"}
    kube_env.put_object(stripped)
    assert_one_line_error(cli("rotate", "kim-credential"), 1, "carries kimpki's label but none of its kimpki.io/* "
                          "annotations", "kimpki secret create kim-credential")
    assert kube_env.calls("PUT") == [] and "pending" not in store_state(cli.home)


def test_an_unlabelled_secret_needs_force(kube_env, cli):
    create_secret(cli.home, kube_env, "kim-credential", "kim.example.com")
    obj = live(kube_env, "kim-credential")
    obj["metadata"]["labels"] = {"team": "mesh"}  # someone took it out of kimpki's hands
    kube_env.put_object(obj)
    assert_one_line_error(cli("rotate", "kim-credential"), 1, "no longer manages it", "give --force")
    assert kube_env.calls("PUT") == []
    d = cli.json("rotate", "kim-credential", "--force")
    after = live(kube_env, "kim-credential")
    assert served_serial_of(after) == d["new_serial"]
    assert after["metadata"]["labels"] == {"team": "mesh", "app.kubernetes.io/managed-by": "kimpki"}
    assert after["metadata"]["uid"] == obj["metadata"]["uid"]


@pytest.mark.parametrize("args,needle", [
    ([], "Missing argument 'NAME'"),
    (["kim-credential", "--days", "0"], "--days"),
    (["kim-credential", "--days", "banana"], "--days"),
    (["kim-credential", "--key-type", "rsa-1024"], "--key-type"),
    (["kim-credential", "--manifests", "/nonexistent/folder"], "no such manifests folder"),
    (["kim-credential", "--manifests", ".", "--kubeconfig", "kc"], "give one or the other"),
    (["kim-credential", "--bogus"], "No such option"),
])
def test_usage_errors_exit_2(kimpki, args, needle):
    assert_one_line_error(kimpki("rotate", *args), 2, needle)


def test_help_has_examples(kimpki):
    out = kimpki.ok("rotate", "--help").out
    assert "kimpki rotate kim-credential --manifests ./deploy" in out and "--new-ca" in out
    assert "Exit codes: 0 rotated, 1 failed" in out


# -- faults: the old Secret keeps serving, the pending certificate finishes the job ---------------

@pytest.mark.parametrize("fault,says", [
    (500, "is untouched and still serves the old certificate"),
    ("drop", "holds either the old certificate or the new one"),
])
def test_a_failed_update_keeps_the_old_secret_and_the_rerun_resumes(kube_env, cli, fault, says):
    create_secret(cli.home, kube_env, "kim-credential", "kim.example.com")
    before = live(kube_env, "kim-credential")
    old_serial = served_serial_of(before)
    kube_env.fail(method="PUT", resource="secrets", name="kim-credential", status=fault)
    res = cli("rotate", "kim-credential", "--json")
    assert_one_line_error(res, 1, says, "kept as pending in the store: run the same command again to finish")
    assert res.out == ""
    pending = store_state(cli.home)["pending"]
    assert len(pending) == 1 and f"(serial {pending[0]})" in res.err
    # The Secret is exactly what it was (data and resourceVersion); the store still says old.
    kept = live(kube_env, "kim-credential")
    assert kept["data"] == before["data"] and kept["metadata"] == before["metadata"]
    assert store_state(cli.home)["current"] == [old_serial]
    assert os.readlink(cli.home / "certs" / "kim.example.com" / "current") == f"versions/{old_serial}"

    out = cli.ok("rotate", "kim-credential").out.splitlines()
    assert out[0].endswith("(finished with the certificate an earlier run left pending)")
    assert out[1].startswith(f"  old: serial {old_serial},") and out[2].startswith(f"  new: serial {pending[0]},")
    assert out[-1] == "  secret/kim-credential: updated"
    assert served_serial_of(live(kube_env, "kim-credential")) == pending[0]
    assert store_state(cli.home) == {"previous": [old_serial], "current": [pending[0]]}


def test_a_lost_answer_after_the_update_landed_is_finished_by_the_rerun(kube_env, cli):
    create_secret(cli.home, kube_env, "kim-credential", "kim.example.com")
    old_serial = served_serial_of(live(kube_env, "kim-credential"))
    kube_env.fail(method="PUT", resource="secrets", name="kim-credential", status="drop-after")
    res = cli("rotate", "kim-credential")
    assert_one_line_error(res, 1, "closed before it answered", "holds either the old certificate or the new one")
    (pending,) = store_state(cli.home)["pending"]
    # The update did land: the gateway already gets the new certificate; the store does not know yet.
    landed = live(kube_env, "kim-credential")
    assert served_serial_of(landed) == pending
    assert store_state(cli.home)["current"] == [old_serial]

    kube_env.clear_requests()
    d = cli.json("rotate", "kim-credential")
    assert d["action"] == "resumed" and d["new_serial"] == pending
    assert d["old_serial"] == old_serial  # what the rotation replaced, not what the Secret shows now
    assert d["secrets"] == [{"name": "kim-credential", "action": "unchanged"}]
    assert kube_env.calls("PUT") == []  # nothing left to write: only the store is told
    assert live(kube_env, "kim-credential")["metadata"]["resourceVersion"] == landed["metadata"]["resourceVersion"]
    assert store_state(cli.home) == {"previous": [old_serial], "current": [pending]}


def test_an_api_timeout_fails_within_the_timeout_and_changes_nothing(kube_env, cli):
    create_secret(cli.home, kube_env, "kim-credential", "kim.example.com")
    before = live(kube_env, "kim-credential")
    # The answer would come after 10 minutes; the run's own ceiling (60 s) ends the test first if
    # rotate waited for it instead of giving up at its 1 s timeout.
    kube_env.fail(method="GET", resource="secrets", name="kim-credential", status="delay", delay=600)
    res = cli("rotate", "kim-credential", env={"KIMPKI_KUBE_TIMEOUT": "1"}, timeout=WAIT_CEILING)
    assert_one_line_error(res, 1, "did not answer get secrets \"kim-credential\"", "within 1 s")
    assert live(kube_env, "kim-credential") == before
    assert store_state(cli.home) == {"current": [served_serial_of(before)]}
    assert kube_env.calls("PUT") == []


# -- a folder of manifests ---------------------------------------------------------------------------

HEADER = "# Deployed by hand; kimpki rotates the Secret below.\n"
CONFIGMAP = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes, namespace: istio-system}  # not a Secret\n" \
            "data: {owner: mesh-team}\n"


def secret_yaml(k: Kimpki, *args: str) -> str:
    return k.ok("secret", "create", *args, "--dry-run", "-o", "yaml").out


def doc_secret(text: str, name: str) -> dict:
    (doc,) = [d for d in yaml.safe_load_all(text) if d and d.get("kind") == "Secret" and d["metadata"]["name"] == name]
    return doc


def test_manifests_rotation_rewrites_only_that_document(home):
    folder = home.cwd / "deploy"
    folder.mkdir()
    gateway = home.ok("gateway", "render", "--host", "kim-new.example.com", "--credential", "kim-new-credential",
                      "--mode", "mutual", "-o", "yaml").out
    before = HEADER + gateway + "---\n# the MUTUAL credential\n"
    secret = secret_yaml(home, "kim-new-credential", "--cert", "kim-new.example.com", "--mutual")
    after = "# end of the credential\n---\n" + CONFIGMAP
    f = folder / "kim-new.yaml"
    f.write_text(before + secret + after)
    f.chmod(0o640)
    other = folder / "kim-credential.yaml"
    other.write_text(secret_yaml(home, "kim-credential", "--cert", "kim.example.com"))
    other_bytes = other.read_bytes()
    old = doc_secret(f.read_text(), "kim-new-credential")

    d = home.json("rotate", "kim-new-credential", "--manifests", folder)
    assert d["action"] == "rotated" and d["place"] == f"manifests {folder}" and d["namespace"] == NS
    text = f.read_text()
    assert text.startswith(before) and text.endswith(after)
    new = doc_secret(text, "kim-new-credential")
    assert served_serial_of(new) == d["new_serial"] != d["old_serial"] == served_serial_of(old)
    assert spki(leaf_and_key(new)[0]) != spki(leaf_and_key(old)[0])
    assert decoded(new)["cacert"] == decoded(old)["cacert"]
    assert stat.S_IMODE(f.stat().st_mode) == 0o600  # it holds a private key: 0600 whoever made it 0640
    assert other.read_bytes() == other_bytes
    assert sorted(p.name for p in folder.iterdir()) == ["kim-credential.yaml", "kim-new.yaml"]
    store = Store.open(home.home)
    assert {"kind": "Secret", "namespace": NS, "name": "kim-new-credential", "manifests": str(folder.resolve())} \
        in store.get_cert("kim-new.example.com").deployed_to
    store.close()


def test_manifests_kubectl_style_secret_and_duplicates(home):
    folder = home.cwd / "deploy"
    folder.mkdir()
    text = secret_yaml(home, "kim-credential", "--cert", "kim.example.com")
    # As 'kubectl create secret ... --dry-run=client -o yaml' writes it: no namespace.
    kubectl_style = text.replace(f"  namespace: {NS}\n", "")
    assert "namespace:" not in kubectl_style
    (folder / "kim.yaml").write_text(kubectl_style)
    d = home.json("rotate", "kim-credential", "--manifests", folder)
    rotated = yaml.safe_load((folder / "kim.yaml").read_text())
    assert "namespace" not in rotated["metadata"] and served_serial_of(rotated) == d["new_serial"]

    # The same name in two files: refused (exit 2, one line), unless -n picks the copy that names it.
    (folder / "staging.yaml").write_text(text.replace(f"namespace: {NS}", "namespace: staging"))
    res = home("rotate", "kim-credential", "--manifests", folder)
    assert_one_line_error(res, 2, "Secret kim-credential appears 2 times", "kim.yaml#1, staging.yaml#1",
                          "give its namespace (-n)")
    kim_before = (folder / "kim.yaml").read_bytes()
    d = home.json("rotate", "kim-credential", "--manifests", folder, "-n", "staging")
    assert d["namespace"] == "staging"
    assert served_serial_of(yaml.safe_load((folder / "staging.yaml").read_text())) == d["new_serial"]
    assert (folder / "kim.yaml").read_bytes() == kim_before
    assert_one_line_error(home("rotate", "nope", "--manifests", folder), 1, f"no Secret nope (manifests {folder})")


# -- SIGKILL at every step of the store write ---------------------------------------------------------

# The steps of one rotation into a manifests folder, in order, as the store's write functions name
# them (kimpki.store.fs.kill_point, "STEP PARENT/NAME"): (what, KIMPKI_TEST_KILL_AT pattern, what
# the inventory holds afterwards: nothing new / the new version "pending" / "promoted" to current,
# which serial the manifest serves: "old" or "new", where the `current` link points: "old" or "new").
KILL_STEPS = [
    ("new version directory made", "mkdir versions/*", "nothing", "old", "old"),
    ("new key complete in a temporary file", "temp */cert.key", "nothing", "old", "old"),
    ("new key in place (cert.key)", "placed */cert.key", "nothing", "old", "old"),
    ("certificate in place (cert.crt)", "placed */cert.crt", "nothing", "old", "old"),
    ("CA certificate in place; inventory commit next", "placed */ca.crt", "nothing", "old", "old"),
    ("pending recorded; new manifest in a temporary file", "temp deploy/kim.yaml", "pending", "old", "old"),
    ("manifest replaced; not promoted yet", "placed deploy/kim.yaml", "pending", "new", "old"),
    # The link follows the committed inventory: killed before it moved, the next run repairs it.
    ("promoted; current link made beside the old one", "temp kim.example.com/current", "promoted", "new", "old"),
    ("promoted; current link moved", "placed kim.example.com/current", "promoted", "new", "new"),
]


@pytest.mark.parametrize("what,kill_at,inventory_holds,served,linked", KILL_STEPS, ids=[s[1] for s in KILL_STEPS])
def test_sigkill_at_each_step_leaves_a_readable_store_and_a_rerun_finishes(home, what, kill_at, inventory_holds,
                                                                          served, linked):
    from datetime import datetime, timezone

    from kimpki.ops.inspecting import inventory

    folder = home.cwd / "deploy"
    folder.mkdir()
    (folder / "kim.yaml").write_text(secret_yaml(home, "kim-credential", "--cert", "kim.example.com"))
    cert_dir = home.home / "certs" / "kim.example.com"
    versions = cert_dir / "versions"
    store = Store.open(home.home)
    old = store.get_cert("kim.example.com")
    store.close()
    old_key = old.key_path.read_bytes()
    before_dirs = set(os.listdir(versions))

    # The store's own kill point: the process SIGKILLs itself at exactly this step.
    marker = home.cwd / "killed-at"
    res = home("rotate", "kim-credential", "--manifests", folder,
               env={"KIMPKI_TEST_KILL_AT": kill_at, "KIMPKI_TEST_KILL_MARKER": str(marker)})
    assert res.code == -signal.SIGKILL, (what, res.code, res.err)
    (landed,) = marker.read_text().splitlines()  # one kill, at the step asked for
    step, where = landed.split(" ", 1)
    assert f"{step} {where}" == landed and fnmatch.fnmatchcase(landed, kill_at), landed
    new_dirs = set(os.listdir(versions)) - before_dirs
    assert len(new_dirs) == 1, new_dirs  # the kill came during the new version's write, not before
    (new_serial,) = new_dirs
    if kill_at.startswith("mkdir"):
        assert where == f"versions/{new_serial}", landed
    elif kill_at.endswith(("cert.key", "cert.crt", "ca.crt")):
        assert where.startswith(new_serial + "/"), (landed, new_serial)

    # The store is readable and consistent; the old key is intact.
    store = Store.open(home.home)
    rows = inventory(store, datetime.now(timezone.utc), include_history=True)
    store.close()
    states = {r["serial"]: r["version"] for r in rows if r["name"] == "kim.example.com"}
    expected = {"nothing": {old.serial: "current"},
                "pending": {old.serial: "current", new_serial: "pending"},
                "promoted": {old.serial: "previous", new_serial: "current"}}[inventory_holds]
    assert states == expected, (what, states)
    assert old.key_path.read_bytes() == old_key and stat.S_IMODE(old.key_path.stat().st_mode) == 0o600
    target = (cert_dir / "current").resolve().name
    assert target == (new_serial if linked == "new" else old.serial), what
    linked_dir = cert_dir / "versions" / target
    linked_cert = x509.load_pem_x509_certificates((linked_dir / "cert.crt").read_bytes())[0]
    assert keys.key_matches(keys.load_key((linked_dir / "cert.key").read_bytes()), linked_cert.public_key())
    # The manifest serves either the old certificate or the complete new one, with its key.
    manifest = yaml.safe_load((folder / "kim.yaml").read_text())
    cert, key = leaf_and_key(manifest)
    assert keys.key_matches(key, cert.public_key())
    assert served_serial_of(manifest) == (new_serial if served == "new" else old.serial), what

    # kimpki gc (what the next run's first mutation does too) removes what the inventory does not
    # name and points `current` at the inventory's current version.
    gc = home.json("gc")
    assert [Path(o).name for o in gc["orphans"]] == ([new_serial] if inventory_holds == "nothing" else []), gc
    stale_link = inventory_holds == "promoted" and linked == "old"
    assert [Path(x).name for x in gc["repaired_links"]] == (["current"] if stale_link else []), gc
    current_serial = new_serial if inventory_holds == "promoted" else old.serial
    assert (cert_dir / "current").resolve().name == current_serial

    # A re-run finishes the job: with the pending certificate when the inventory has it, else
    # (nothing recorded, or the rotation was complete) it rotates afresh.
    d = home.json("rotate", "kim-credential", "--manifests", folder)
    assert d["old_serial"] == current_serial
    if inventory_holds == "pending":
        assert (d["action"], d["new_serial"]) == ("resumed", new_serial), what
    else:
        assert d["action"] == "rotated" and d["new_serial"] not in (old.serial, new_serial), what
    assert served_serial_of(yaml.safe_load((folder / "kim.yaml").read_text())) == d["new_serial"]
    assert (cert_dir / "current").resolve().name == d["new_serial"]
    assert store_state(home.home)["current"] == [d["new_serial"]]
    assert d["new_serial"] in [r["serial"] for r in home.json("list", "--all")["items"]]


# -- zero downtime: a real Envoy gateway serves through the rotation ---------------------------------

class Handshakes:
    """``threads`` clients doing TLS handshakes (verified against the CA, SNI ``host``) and a
    GET /health on each connection, continuously, recording the serial served or the failure."""

    def __init__(self, port: int, host: str, cafile: Path, client: tuple[Path, Path] | None, threads: int = 4):
        self.port, self.host = port, host
        self.ctx = ssl.create_default_context(cafile=str(cafile))
        if client:
            self.ctx.load_cert_chain(*map(str, client))
        self.serials: list[int] = []
        self.timed: list[tuple[float, float, int]] = []  # (started, finished, serial) per connection
        self.failures: list[str] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self.request = f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()

    def _once(self) -> int:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms delayed-ACK stalls
            with self.ctx.wrap_socket(raw, server_hostname=self.host) as tls:
                serial = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number
                tls.sendall(self.request)  # MUTUAL over TLS 1.3: the server judges the client certificate now
                answer = self._response(tls)
        if not answer.startswith(b"HTTP/1.1 200") or not answer.endswith(b'{"status":"UP"}'):
            raise AssertionError(f"unexpected answer {answer[:80]!r}")
        return serial

    @staticmethod
    def _response(tls: ssl.SSLSocket) -> bytes:
        # Read exactly one response and hang up: Envoy waits for the client to close first
        # (delayed close), so reading until EOF would cost a second per connection.
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = tls.recv(4096)
            if not chunk:
                return answer
            answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length and (chunk := tls.recv(4096)):
            body += chunk
        return head + b"\r\n\r\n" + body

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                started = time.monotonic()
                serial = self._once()
                self.timed.append((started, time.monotonic(), serial))
                self.serials.append(serial)
            except Exception as e:  # noqa: BLE001 - every failure is counted and shown
                self.failures.append(f"{type(e).__name__}: {e}")

    def start(self) -> "Handshakes":
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(10)

    def wait(self, condition, timeout: float, what: str) -> float:
        t0 = time.monotonic()
        while not condition():
            assert time.monotonic() - t0 < timeout, f"{what} within {timeout} s"
            assert not self.failures, self.failures[:3]
            time.sleep(0.01)
        return time.monotonic() - t0


def process_started(pid: int) -> int:
    """The process's start time (clock ticks since boot): a restarted Envoy would differ."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


@pytest.fixture(scope="module")
def gateway(template_home, tmp_path_factory):
    """`kimpki gateway serve` (real Envoy, SDS from kimpki) on a manifests folder that holds
    kim-credential (SIMPLE) and kim-new-credential (MUTUAL) as kimpki writes them."""
    from types import SimpleNamespace

    base = tmp_path_factory.mktemp("gateway")
    k = Kimpki(base / "home", base)
    shutil.copytree(template_home, k.home, symlinks=True)
    folder = base / "deploy"
    folder.mkdir()
    (folder / "kim-credential.yaml").write_text(secret_yaml(k, "kim-credential", "--cert", "kim.example.com"))
    (folder / "kim-new-credential.yaml").write_text(
        secret_yaml(k, "kim-new-credential", "--cert", "kim-new.example.com", "--mutual"))
    (folder / "gateway.yaml").write_text(k.ok(
        "gateway", "render", "--name", "kim-gateway", "--host", "kim.example.com", "--credential", "kim-credential",
        "--host", "kim-new.example.com", "--credential", "kim-new-credential", "--mode", "simple", "--mode", "mutual",
        "-o", "yaml").out)
    proc = subprocess.Popen([sys.executable, "-m", "kimpki", "gateway", "serve", "-f", folder, "--port", "0"],
                            env=k.env, cwd=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().rsplit(":", 1)[1])
        while "ready in" not in (line := proc.stderr.readline()):
            assert line, "gateway serve ended before it was ready"
        envoy = int(line.split("Envoy pid ")[1].split(",")[0])
        yield SimpleNamespace(kimpki=k, folder=folder, port=port, envoy=envoy, proc=proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("name,host,mutual", [
    ("kim-credential", "kim.example.com", False),
    ("kim-new-credential", "kim-new.example.com", True),
])
def test_zero_downtime_while_rotating_behind_a_live_gateway(gateway, name, host, mutual):
    k, port = gateway.kimpki, gateway.port
    envoy_started = process_started(gateway.envoy)
    client = None
    if mutual:
        store = Store.open(k.home)
        rec = store.get_cert("kim-client.example.com")
        store.close()
        client = (rec.cert_path, rec.key_path)
    load = Handshakes(port, host, k.home / "cas" / "example.com" / "ca.crt", client).start()
    try:
        load.wait(lambda: len(load.serials) >= 40, WAIT_CEILING, "the first handshakes")
        old = set(load.serials)
        assert len(old) == 1
        during = len(load.serials)
        d = k.json("rotate", name, "--manifests", gateway.folder)
        during = len(load.serials) - during
        new = int(d["new_serial"], 16)
        assert int(d["old_serial"], 16) in old and new not in old
        took = load.wait(lambda: new in load.serials, WAIT_CEILING, "the new certificate served")
        seen = len(load.serials)
        load.wait(lambda: load.serials[seen:].count(new) >= 40, WAIT_CEILING, "handshakes with the new certificate")
    finally:
        load.stop()
    assert load.failures == [], f"{len(load.failures)} failed handshakes, e.g. {load.failures[:3]}"
    assert gateway.proc.poll() is None
    assert process_started(gateway.envoy) == envoy_started  # the same Envoy process: hot-reloaded
    assert set(load.serials) == old | {new}
    # Once the new certificate has been served, the old one is not any more: every connection that
    # started after a connection with the new certificate finished got the new one.
    first_new_done = min(done for _, done, serial in load.timed if serial == new)
    assert {serial for started, _, serial in load.timed if started > first_new_done} == {new}
    print(f"\n{host} ({'MUTUAL' if mutual else 'SIMPLE'}): {len(load.serials)} handshakes + GET /health by "
          f"{len(load.threads)} threads, 0 failed ({during} while kimpki rotate ran); new serial served "
          f"{took:.2f} s after rotate returned; Envoy pid {gateway.envoy} unchanged")


def test_mutual_credential_from_an_intermediate_keeps_publishing_the_root(home):
    """A MUTUAL credential for a certificate from an intermediate CA publishes the root (Envoy
    needs a self-signed trust anchor), and a rotation keeps publishing the root."""
    home.ok("ca", "init", "example-issuing", "--parent", "example.com")
    home.ok("issue", "inter.example.com", "--ca", "example-issuing")
    folder = home.cwd / "deploy"
    folder.mkdir()
    (folder / "inter.yaml").write_text(secret_yaml(home, "inter-credential", "--cert", "inter.example.com",
                                                   "--mutual"))
    root_pem = (home.home / "cas" / "example.com" / "ca.crt").read_bytes()

    def published() -> tuple[str, bytes]:
        s = doc_secret((folder / "inter.yaml").read_text(), "inter-credential")
        return s["metadata"]["annotations"]["kimpki.io/ca"], base64.b64decode(s["data"]["cacert"])

    assert published() == ("example.com", root_pem)
    d = home.json("rotate", "inter-credential", "--manifests", folder)
    assert d["ca"] == "example.com" and d["new_serial"] != d["old_serial"]
    assert published() == ("example.com", root_pem)
    # Still issued by the intermediate, served with it.
    s = doc_secret((folder / "inter.yaml").read_text(), "inter-credential")
    chain = x509.load_pem_x509_certificates(base64.b64decode(s["data"]["cert"]))
    assert len(chain) == 2 and chain[1].subject.rfc4514_string().endswith("CN=example-issuing")
