"""CRLs for file-mounted gateways (issue 13): kimpki writes the CRLs of the client trust beside the
CA file in ``istio-ingressgateway-ca-certs`` (``root.example.crt`` → ``root.example.crl``), renders
``tls.caCrl`` naming that file (Istio >= 1.22), republishes it on ``revoke`` and ``renew``, and
``kimpki gateway serve`` hands it to a real Envoy as Istio does: a ``filename`` data source in the
default validation context. ``kimpki check`` reports a ``caCrl`` naming a missing file (KIM0011)
and a CRL file no ``caCrl`` names (KIM0012).

    root.example ─┬─ issuing.example ─┬─ kim.example.com, *.kim.example.com   (server)
                  │                   ├─ a.example.com   (client, revoked before the start)
                  │                   ├─ b.example.com   (client, never revoked)
                  │                   └─ c.example.com   (client, revoked while serving)
                  └─ r.example.com    (client issued by the root itself)

Envoy's rule, on the real binary: with a CRL given, every CA of a client's chain needs one (the
root's included, for the root itself); with the intermediate's CRL missing its clients fail, with
the root's missing every client fails.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.conftest import Kimpki, assert_one_line_error, wait_until
from tests.test_crl_envoy import started
from tests.test_verify_envoy import ServedGateway
from tests.kubeapi.fixtures import kube_api  # noqa: F401  (a fixture)
from tests.tlspeers import assert_curl_refused

FILES_HOST = "files.kim.example.com"
PEM_CRL = b"-----BEGIN X509 CRL-----"


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def secret_data(folder: Path, name: str) -> dict[str, bytes]:
    for f in sorted(folder.glob("*.yaml")):
        for d in docs(f):
            if d.get("kind") == "Secret" and d["metadata"]["name"] == name:
                return {k: base64.b64decode(v) for k, v in d["data"].items()}
    raise AssertionError(f"no Secret {name} in {folder}")


def crl_issuers(pem: bytes) -> list[str]:
    from cryptography import x509

    return sorted(x509.load_pem_x509_crl(PEM_CRL + p).issuer.rfc4514_string() for p in pem.split(PEM_CRL)[1:])


def file_mounted_manifests(k: Kimpki, folder: Path, *render: str) -> None:
    folder.mkdir()
    (folder / "credential.yaml").write_text(k.ok(
        "secret", "create", "--file-mounted", "--cert", "kim.example.com", "--mutual", "--dry-run", "-o", "yaml").out)
    (folder / "gateway.yaml").write_text(k.ok(
        "gateway", "render", "--name", "files-gateway", "--host", FILES_HOST, "--file-mounted", "--mode", "MUTUAL",
        "--ca-file-name", "root.example.crt", *render, "-o", "yaml").out)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("crl-files")
    (root / "work").mkdir()
    k = Kimpki(root / "home", root / "work")
    k.ok("ca", "init", "root.example")
    k.ok("ca", "init", "issuing.example", "--parent", "root.example")
    k.ok("issue", "kim.example.com", "*.kim.example.com", "--ca", "issuing.example")
    for client in ("a", "b", "c"):
        k.ok("issue", "--client", f"{client}.example.com", "--ca", "issuing.example")
    k.ok("issue", "--client", "r.example.com", "--ca", "root.example")
    k.ok("revoke", "a.example.com", "--reason", "keyCompromise")  # both CRLs exist from here on
    return SimpleNamespace(k=k, root=root)


@pytest.fixture(scope="module")
def site(pki):
    manifests = pki.root / "files"
    file_mounted_manifests(pki.k, manifests, "--crl")
    gw = ServedGateway(pki.k, manifests, 1)
    try:
        yield SimpleNamespace(k=pki.k, gw=gw, port=gw.port, manifests=manifests)
    finally:
        code = gw.stop()
    assert code == 0, "".join(gw.stderr)


def verify(k: Kimpki, port: int, host: str, client: str):
    return k("verify", host, "--connect", f"127.0.0.1:{port}", "--ca", "root.example", "--client", client,
             "--mode", "mutual", "--json")


def curl(k: Kimpki, port: int, host: str, client: str) -> subprocess.CompletedProcess:
    cert = k.home / "certs" / client / "current"
    return subprocess.run(["curl", "-sS", "--max-time", "5", "--resolve", f"{host}:{port}:127.0.0.1",
                           "--cacert", k.home / "cas" / "root.example" / "ca.crt",
                           "--cert", cert / "cert.crt", "--key", cert / "cert.key",
                           f"https://{host}:{port}/health"], capture_output=True, timeout=15)


# ---------------------------------------------------------------------------------------------
# What kimpki writes and renders
# ---------------------------------------------------------------------------------------------

def test_the_ca_certs_secret_carries_every_crl_beside_the_ca_file_and_the_gateway_names_it(site):
    data = secret_data(site.manifests, "istio-ingressgateway-ca-certs")
    assert set(data) == {"root.example.crt", "root.example.crl"}
    assert crl_issuers(data["root.example.crl"]) == ["CN=issuing.example", "CN=root.example"]
    (gateway,) = [d for d in docs(site.manifests / "gateway.yaml") if d["kind"] == "Gateway"]
    tls = gateway["spec"]["servers"][0]["tls"]
    assert tls["caCertificates"] == "/etc/istio/ingressgateway-ca-certs/root.example.crt"
    assert tls["caCrl"] == "/etc/istio/ingressgateway-ca-certs/root.example.crl"
    d = site.k.json("check", "-f", site.manifests)
    assert d["ok"] and [f["status"] for f in d["findings"] if f["check"] == "ca_crl"] == ["ok"]


def test_render_crl_refusals(pki):
    k = pki.k
    assert_one_line_error(k("gateway", "render", "--host", "kim.example.com", "--credential", "kim", "--crl"), 2,
                          "--crl is for --file-mounted MUTUAL and OPTIONAL_MUTUAL servers")
    assert_one_line_error(k("gateway", "render", "--host", "kim.example.com", "--file-mounted", "--crl"), 2,
                          "caCrl) is for file-mounted MUTUAL and OPTIONAL_MUTUAL servers")
    out = k.ok("gateway", "render", "--host", "kim.example.com", "--file-mounted", "--mode", "OPTIONAL_MUTUAL",
               "--ca-file-name", "root.example.crt", "--crl", "-o", "json").json
    (gw,) = [o for o in out.get("items", [out]) if o["kind"] == "Gateway"]
    assert gw["spec"]["servers"][0]["tls"]["caCrl"] == "/etc/istio/ingressgateway-ca-certs/root.example.crl"


def test_istio_refuses_ca_crl_with_a_credential_or_simple():
    from kimpki.istio.gateway import validate_gateway

    def gateway(tls: dict) -> dict:
        return {"kind": "Gateway", "spec": {"servers": [
            {"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["a.example"], "tls": tls}]}}

    crl = "/etc/istio/ingressgateway-ca-certs/x.crl"
    assert any("caCrl is not supported with credentialName" in p
               for p in validate_gateway(gateway({"mode": "MUTUAL", "credentialName": "x", "caCrl": crl})))
    assert any("caCrl is not supported with SIMPLE" in p for p in validate_gateway(gateway(
        {"mode": "SIMPLE", "serverCertificate": "/c", "privateKey": "/k", "caCrl": crl})))
    assert validate_gateway(gateway({"mode": "MUTUAL", "serverCertificate": "/c", "privateKey": "/k",
                                     "caCertificates": "/etc/istio/ingressgateway-ca-certs/x.crt",
                                     "caCrl": crl})) == []


def test_envoy_gets_the_ca_crl_as_istio_gives_it(site):
    """Istio (pilot/pkg/security/model ApplyToCommonTLSContext) puts caCrl into the default
    validation context as a filename, beside the SDS root; kimpki's copy is named by its hash."""
    from kimpki.localgw import envoy_config as ec
    from kimpki.localgw.manifests import load_manifests, resolve

    (plan,) = resolve(load_manifests([site.manifests])).plans
    assert plan.ca_crl.path == "/etc/istio/ingressgateway-ca-certs/root.example.crl"
    (listener,) = ec.listeners([plan], {443: 8443}, "127.0.0.1")
    ctx = listener["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
    combined = ctx["combined_validation_context"]
    assert combined["default_validation_context"]["crl"] == {"filename": plan.ca_crl.path}
    assert combined["validation_context_sds_secret_config"]["name"] == "file-root:" \
        "/etc/istio/ingressgateway-ca-certs/root.example.crt"
    assert "crl" not in ec.secret_resources([plan])["file-root:/etc/istio/ingressgateway-ca-certs/root.example.crt"][
        "validation_context"]


def test_gateway_serve_leaves_out_a_server_whose_crl_file_is_missing(site, tmp_path):
    """Envoy cannot build a listener whose caCrl file is missing: that server is reported and
    left out, as Istio's gateway would fail it, and the others are served."""
    import shutil

    from kimpki.localgw.manifests import load_manifests, resolve

    folder = tmp_path / "missing"
    shutil.copytree(site.manifests, folder)
    text = (folder / "credential.yaml").read_text()
    documents = [d for d in yaml.safe_load_all(text) if d]
    del documents[1]["data"]["root.example.crl"]
    (folder / "credential.yaml").write_text(yaml.safe_dump_all(documents))
    res = resolve(load_manifests([folder]))
    assert res.plans == ()
    (warning,) = res.warnings
    assert f"server {FILES_HOST}" in warning and "not served" in warning
    assert "/etc/istio/ingressgateway-ca-certs/root.example.crl: Secret istio-ingressgateway-ca-certs" in warning
    assert "has no key root.example.crl" in warning


# ---------------------------------------------------------------------------------------------
# On a real Envoy
# ---------------------------------------------------------------------------------------------

def test_a_revoked_client_is_refused_and_others_of_both_levels_accepted(site):
    for client in ("b.example.com", "r.example.com"):  # both CRLs delivered: both levels accepted
        res = verify(site.k, site.port, FILES_HOST, client)
        assert res.code == 0, res.out + res.err
    res = verify(site.k, site.port, FILES_HOST, "a.example.com")
    assert_one_line_error(res, 1, "client_certificate_revoked")
    assert_curl_refused(curl(site.k, site.port, FILES_HOST, "a.example.com"), "certificate revoked")


def test_revoke_republishes_the_file_into_the_running_gateway(site):
    envoy = started(site.gw.envoy_pid)
    assert verify(site.k, site.port, FILES_HOST, "c.example.com").code == 0
    d = site.k.json("revoke", "c.example.com", "--manifests", site.manifests)
    assert d["republished"] == [{"namespace": "istio-system", "secret": "istio-ingressgateway-ca-certs",
                                 "credential": "istio-ingressgateway-certs", "action": "updated",
                                 "file_mounted": True}]
    wait_until(lambda: verify(site.k, site.port, FILES_HOST, "c.example.com").json["reason"]
               == "client_certificate_revoked", "c.example.com refused")
    assert verify(site.k, site.port, FILES_HOST, "b.example.com").code == 0
    assert started(site.gw.envoy_pid) == envoy and site.gw.proc.poll() is None  # the same Envoy, reloaded
    again = site.k.json("revoke", "c.example.com", "--manifests", site.manifests)
    assert [r["action"] for r in again["republished"]] == ["unchanged"]


@pytest.fixture(scope="module")
def partial(pki):
    """One gateway whose client trusts each miss one CRL, for both forms: SDS (``crl`` in the
    credential) and file-mounted (``caCrl``). kimpki refuses to write a partial set, so the CRL
    values are replaced by hand here."""
    k = pki.k
    crls = {ca: (k.home / "cas" / ca / "crl.pem").read_bytes() for ca in ("root.example", "issuing.example")}
    folder = pki.root / "partial"
    folder.mkdir()
    servers, documents = [], []
    for missing, kept in (("root", "issuing.example"), ("issuing", "root.example")):
        name = f"sds-no-{missing}"
        (secret,) = [d for d in yaml.safe_load_all(k.ok(
            "secret", "create", name, "--cert", "kim.example.com", "--mutual", "--dry-run", "-o", "yaml").out) if d]
        secret["data"]["crl"] = base64.b64encode(crls[kept]).decode()
        documents.append(secret)
        servers.append({"port": {"number": 443, "name": name, "protocol": "HTTPS"}, "hosts": [f"{name}.kim.example.com"],
                        "tls": {"mode": "MUTUAL", "credentialName": name}})
    credential = [d for d in yaml.safe_load_all(k.ok(
        "secret", "create", "--file-mounted", "--cert", "kim.example.com", "--mutual", "--dry-run", "-o",
        "yaml").out) if d]
    certs, ca_certs = credential
    root_pem = base64.b64decode(ca_certs["data"]["root.example.crt"])
    ca_certs["data"] = {}
    for missing, kept in (("root", "issuing.example"), ("issuing", "root.example")):
        name = f"files-no-{missing}"
        ca_certs["data"][f"{name}.crt"] = base64.b64encode(root_pem).decode()
        ca_certs["data"][f"{name}.crl"] = base64.b64encode(crls[kept]).decode()
        servers.append({"port": {"number": 443, "name": name, "protocol": "HTTPS"}, "hosts": [f"{name}.kim.example.com"],
                        "tls": {"mode": "MUTUAL", "serverCertificate": "/etc/istio/ingressgateway-certs/tls.crt",
                                "privateKey": "/etc/istio/ingressgateway-certs/tls.key",
                                "caCertificates": f"/etc/istio/ingressgateway-ca-certs/{name}.crt",
                                "caCrl": f"/etc/istio/ingressgateway-ca-certs/{name}.crl"}})
    documents += [certs, ca_certs, {"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                                    "metadata": {"name": "partial", "namespace": "istio-system"},
                                    "spec": {"selector": {"istio": "ingressgateway"}, "servers": servers}}]
    (folder / "all.yaml").write_text(yaml.safe_dump_all(documents))
    gw = ServedGateway(k, folder, len(servers))
    try:
        yield SimpleNamespace(k=k, port=gw.port)
    finally:
        code = gw.stop()
    assert code == 0, "".join(gw.stderr)


@pytest.mark.parametrize("form", ["sds", "files"])
@pytest.mark.parametrize("missing, client, accepted", [
    ("issuing", "b.example.com", False),  # the intermediate's CRL missing: its clients fail
    ("issuing", "r.example.com", True),   # ... a chain without the intermediate has every CRL it needs
    ("root", "b.example.com", False),     # the root's CRL missing: every client fails
    ("root", "r.example.com", False),
])
def test_envoy_refuses_every_chain_that_misses_a_crl(partial, form, missing, client, accepted):
    host = f"{form}-no-{missing}.kim.example.com"
    res = verify(partial.k, partial.port, host, client)
    if accepted:
        assert res.code == 0, res.out + res.err
    else:
        assert res.code == 1 and res.json["reason"] == "client_certificate_refused", res.out + res.err
        assert curl(partial.k, partial.port, host, client).returncode != 0


# ---------------------------------------------------------------------------------------------
# check, renew, and a home without the revocation state
# ---------------------------------------------------------------------------------------------

def test_check_reports_a_missing_crl_file_and_an_unused_one(pki, tmp_path):
    k = pki.k
    folder = tmp_path / "check"
    file_mounted_manifests(k, folder, "--crl")
    ca_certs = folder / "credential.yaml"
    text = ca_certs.read_text()
    documents = [d for d in yaml.safe_load_all(text) if d]
    del documents[1]["data"]["root.example.crl"]
    ca_certs.write_text(yaml.safe_dump_all(documents))
    res = k("check", "-f", folder, "--json")
    assert res.code == 1
    (finding,) = [f for f in res.json["findings"] if f["check"] == "ca_crl"]
    assert finding["code"] == "KIM0011" and finding["reason"] == "CaCrlMissing" and finding["status"] == "error"
    assert "has no key root.example.crl" in finding["detail"]

    ca_certs.write_text(text)  # the CRL file is back, but the Gateway does not name it
    (folder / "gateway.yaml").write_text(k.ok(
        "gateway", "render", "--name", "files-gateway", "--host", FILES_HOST, "--file-mounted", "--mode", "MUTUAL",
        "--ca-file-name", "root.example.crt", "-o", "yaml").out)
    res = k("check", "-f", folder, "--json")
    assert res.code == 0
    (finding,) = [f for f in res.json["findings"] if f["check"] == "ca_crl"]
    assert (finding["code"], finding["status"]) == ("KIM0012", "warning")
    assert "add caCrl: /etc/istio/ingressgateway-ca-certs/root.example.crl" in finding["detail"]


def test_renew_republishes_the_crl_file(pki, tmp_path):
    from datetime import datetime, timedelta, timezone

    from kimpki.ops import revoking
    from kimpki.ops.authority import no_passphrase
    from kimpki.store import Store

    k = pki.k
    folder = tmp_path / "renew"
    file_mounted_manifests(k, folder, "--crl")
    store = Store.open(k.home)
    try:  # the root's CRL signed 5 days ago with 7 days' validity: inside its last third
        revoking.current_crl(store, "root.example", now=datetime.now(timezone.utc) - timedelta(days=5),
                             passphrase=no_passphrase, refresh=True)
    finally:
        store.close()
    before = secret_data(folder, "istio-ingressgateway-ca-certs")["root.example.crl"]
    d = k.json("renew", "--manifests", folder)
    assert d["crls_signed"] == ["root.example"] and d["errors"] == []
    assert [(r["secret"], r["action"]) for r in d["crls_republished"]] == [("istio-ingressgateway-ca-certs", "updated")]
    after = secret_data(folder, "istio-ingressgateway-ca-certs")
    assert after["root.example.crl"] != before and crl_issuers(after["root.example.crl"]) == [
        "CN=issuing.example", "CN=root.example"]


def test_a_home_without_the_revocation_state_does_not_drop_the_crl_file(pki, tmp_path):
    import shutil

    k = pki.k
    folder = tmp_path / "other"
    file_mounted_manifests(k, folder, "--crl")
    before = (folder / "credential.yaml").read_text()
    other = Kimpki(tmp_path / "other-home", k.cwd)
    for ca in ("root.example",):
        shutil.copy(k.home / "cas" / ca / "ca.key", tmp_path / f"{ca}.key")
        other.ok("ca", "import", ca, "--cert", k.home / "cas" / ca / "ca.crt", "--key", tmp_path / f"{ca}.key")
    other.ok("issue", "kim.example.com", "--ca", "root.example")
    res = other("secret", "create", "--file-mounted", "--cert", "kim.example.com", "--mutual", "--dry-run",
                "-o", "json")
    assert res.code == 0 and "root.example.crl" not in json.dumps(res.json)  # no revocation state: no CRL
    assert_one_line_error(other("rotate", "istio-ingressgateway-certs", "--manifests", folder), 1,
                          "carries CRLs, but this kimpki home has no revocation state for CA 'root.example'")
    assert (folder / "credential.yaml").read_text() == before


def test_apply_renders_ca_crl_once_the_trust_uses_revocation(kimpki, tmp_path):
    """A policy's file-mounted MUTUAL Gateway gets caCrl when the CA Secret carries the CRL file."""
    import shutil

    from tests.conftest import ROOT

    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", policies, ignore=shutil.ignore_patterns("out"))
    creds = policies / "credentials.yaml"
    creds.write_text(creds.read_text().replace("  certificate: bookinfo.com\n  delivery: file-mounted\n",
                                               "  certificate: bookinfo.com\n  delivery: file-mounted\n"
                                               "  mode: MUTUAL\n"))

    def bookinfo_tls() -> dict:
        (gw,) = [d for d in docs(policies / "out" / "bookinfo-gateway.gateway.yaml") if d["kind"] == "Gateway"]
        return gw["spec"]["servers"][0]["tls"]

    kimpki.ok("apply", "-f", policies)
    assert bookinfo_tls()["caCertificates"] == "/etc/istio/ingressgateway-ca-certs/example.com.crt"
    assert "caCrl" not in bookinfo_tls()  # no revocation yet: no CRL file, no caCrl (Envoy would refuse it)
    kimpki.ok("revoke", "kim-client", "--manifests", policies / "out")
    kimpki.ok("apply", "-f", policies)
    assert bookinfo_tls()["caCrl"] == "/etc/istio/ingressgateway-ca-certs/example.com.crl"
    assert kimpki.json("check", "-f", policies / "out")["ok"]



def test_revoke_in_a_cluster_updates_only_the_crl_file_and_says_to_restart(kimpki, kube_api):
    """In a cluster, only the CRL file of istio-ingressgateway-ca-certs changes (another CA file
    beside it stays); a gateway pod reads caCrl when it builds the listener: kimpki says so."""
    k, kc = kimpki, ["--kubeconfig", kube_api.kubeconfig_path]
    k.ok("ca", "init", "solo.example")
    k.ok("issue", "kim.example.com", "--ca", "solo.example")
    k.ok("issue", "--client", "a.example.com", "--ca", "solo.example")
    k.ok("issue", "--client", "b.example.com", "--ca", "solo.example")
    k.ok("revoke", "a.example.com")
    k.ok("secret", "create", "--file-mounted", "--cert", "kim.example.com", "--mutual", *kc)
    k.ok("secret", "create", "istio-ingressgateway-other-certs", "--file-mounted", "--cert", "kim.example.com",
         "--mutual", "--ca-file-name", "other.crt", *kc)
    old = kube_api.get_object("secrets", "istio-system", "istio-ingressgateway-ca-certs")
    assert sorted(old["data"]) == ["other.crl", "other.crt", "solo.example.crl", "solo.example.crt"]
    res = k.ok("revoke", "b.example.com", "-n", "istio-system", *kc, "--json")
    assert sorted((r["credential"], r["secret"], r["action"]) for r in res.json["republished"]) == [
        ("istio-ingressgateway-certs", "istio-ingressgateway-ca-certs", "updated"),
        ("istio-ingressgateway-other-certs", "istio-ingressgateway-ca-certs", "updated")]
    assert "restart the gateway pods" in res.err and "rollout restart deployment istio-ingressgateway" in res.err
    new = kube_api.get_object("secrets", "istio-system", "istio-ingressgateway-ca-certs")
    changed = sorted(key for key in new["data"] if new["data"][key] != old["data"][key])
    assert changed == ["other.crl", "solo.example.crl"]
    assert len(base64.b64decode(new["data"]["solo.example.crl"])) > len(base64.b64decode(old["data"]["solo.example.crl"]))
