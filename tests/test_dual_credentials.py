"""RSA+ECDSA pairs (``credentialNames``) and CA-only credentials (``caCertCredentialName``) on a real
Envoy run by ``kimpki gateway serve``, checked by three TLS clients: Python's ``ssl`` (``kimpki
verify --key-algorithm``), Node's ``tls`` and the JDK, each offering only one algorithm's TLS 1.2
cipher suites and each expected to receive the certificate of that algorithm.

The gateway (one port, told apart by SNI):

    kim.example.com   SIMPLE  credentialNames [kim-credential, kim-credential-rsa]
    mtls.example.com  MUTUAL  credentialNames [mtls-credential, mtls-credential-rsa],
                              caCertCredentialName mtls-clients-cacert (a CA-only Secret)
    cm.example.com    MUTUAL  credentialName cm-credential, caCertCredentialName configmap://istio-system/cm-clients
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import Kimpki, assert_one_line_error, wait_until
from tests.kubeapi.fixtures import *  # noqa: F401,F403  (kube_api, kube_env)
from tests.test_verify_envoy import ServedGateway

PEERS = Path(__file__).resolve().parent / "peers"  # the Node and JDK clients the TLS tests share


def _serial(d: dict) -> str:
    return d["serial"].lstrip("0")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("dual")
    (root / "work").mkdir()
    k = Kimpki(root / "home", root / "work")
    # An RSA root: the JDK's RSA-only client (RSA signature schemes only) must be able to check the chain.
    k.ok("ca", "init", "example.com", "--org", "example Inc.", "--key-type", "rsa-2048")
    certs = {h: k.json("issue", h, "--dual") for h in ("kim.example.com", "mtls.example.com")}
    cm = k.json("issue", "cm.example.com")
    client = k.json("issue", "--client", "kim-client.example.com")
    folder = root / "manifests"
    folder.mkdir()

    def write(name: str, *args: str) -> None:
        (folder / f"{name}.yaml").write_text(k.ok(*args, "--dry-run", "-o", "yaml").out)

    write("kim", "secret", "create", "kim-credential", "--cert", "kim.example.com", "--dual")
    write("mtls", "secret", "create", "mtls-credential", "--cert", "mtls.example.com", "--dual")
    write("mtls-ca", "secret", "create", "mtls-clients-cacert", "--ca-only", "--ca", "example.com")
    write("cm", "secret", "create", "cm-credential", "--cert", "cm.example.com")
    write("cm-ca", "secret", "create", "cm-clients", "--ca-only", "--config-map", "--format", "tls")
    (folder / "gateway.yaml").write_text(k.ok(
        "gateway", "render", "--name", "dual-gateway", "--no-virtual-service",
        "--host", "kim.example.com", "--credential", "kim-credential,kim-credential-rsa", "--mode", "SIMPLE",
        "--host", "mtls.example.com", "--credential", "mtls-credential,mtls-credential-rsa", "--mode", "MUTUAL",
        "--host", "cm.example.com", "--credential", "cm-credential", "--mode", "MUTUAL",
        "--ca-credential", "", "--ca-credential", "mtls-clients-cacert",
        "--ca-credential", "configmap://istio-system/cm-clients").out)
    gw = ServedGateway(k, folder, servers=1)  # the port; the other servers' lines are checked below

    def serving() -> int:
        return sum(line.startswith("serving ") for line in gw.stdout)

    try:
        # An unserved server (its warning is on stderr) would leave one line missing.
        wait_until(lambda: serving() == 3 or gw.proc.poll() is not None, "gateway serve to list its 3 servers")
        assert serving() == 3, "".join(gw.stdout + gw.stderr)
        yield type("Site", (), dict(k=k, folder=folder, gw=gw, port=gw.port, certs=certs, cm=cm, client=client,
                                    ca=str(k.home / "cas" / "example.com" / "ca.crt")))
    finally:
        gw.stop()


def test_render_writes_credential_names_and_ca_credential(site):
    gw = yaml.safe_load((site.folder / "gateway.yaml").read_text())
    tls = [s["tls"] for s in gw["spec"]["servers"]]
    assert tls[0] == {"mode": "SIMPLE", "credentialNames": ["kim-credential", "kim-credential-rsa"]}
    assert tls[1]["credentialNames"] == ["mtls-credential", "mtls-credential-rsa"]
    assert tls[1]["caCertCredentialName"] == "mtls-clients-cacert" and "credentialName" not in tls[1]
    assert tls[2]["caCertCredentialName"] == "configmap://istio-system/cm-clients"
    # Istio's rules: at most two names; a CA credential only for MUTUAL.
    assert_one_line_error(site.k("gateway", "render", "--host", "a.example", "--credential", "a,b,c"), 2,
                          "at most 2 credentialNames")
    assert_one_line_error(site.k("gateway", "render", "--host", "a.example", "--credential", "a",
                                 "--ca-credential", "x-cacert"), 2, "caCertCredentialName is for MUTUAL")


def test_pair_secrets_name_each_other(site):
    docs = list(yaml.safe_load_all((site.folder / "kim.yaml").read_text()))
    docs = docs[0]["items"] if docs[0].get("kind") == "List" else docs
    by_name = {d["metadata"]["name"]: d for d in docs}
    assert set(by_name) == {"kim-credential", "kim-credential-rsa"}
    ann = {n: d["metadata"]["annotations"] for n, d in by_name.items()}
    assert ann["kim-credential"]["kimpki.io/pair"] == "kim-credential-rsa"
    assert ann["kim-credential-rsa"]["kimpki.io/pair"] == "kim-credential"
    assert ann["kim-credential-rsa"]["kimpki.io/store-name"] == "kim.example.com-rsa"


@pytest.mark.parametrize("alg,name", [("ecdsa", "ECDSA P-256"), ("rsa", "RSA 2048")])
@pytest.mark.parametrize("host", ["kim.example.com", "mtls.example.com"])
def test_verify_each_algorithm_gets_its_certificate(site, host, alg, name):
    extra = ["--client", "kim-client.example.com"] if host.startswith("mtls") else []
    d = site.k.json("verify", host, "--connect", f"127.0.0.1:{site.port}", "--ca", "example.com",
                    "--key-algorithm", alg, *extra)
    assert d["ok"] and d["key_algorithm"] == name and d["client_key_algorithm"] == alg
    assert d["tls_version"] == "TLSv1.2"
    want = site.certs[host] if alg == "ecdsa" else site.certs[host]["pair"]
    assert d["served_chain"][0]["serial"] == want["serial"]
    assert "key_algorithm" in [c["name"] for c in d["checks"] if c["ok"]]
    if extra:  # the CA from the CA-only Secret: the client certificate accepted, none refused
        assert {"client_certificate_accepted", "client_certificate_demanded"} <= {c["name"] for c in d["checks"]}


def test_verify_all_checks_both_halves(site):
    rows = site.k.json("verify", "--all", "--connect", f"127.0.0.1:{site.port}")
    algs = {(r["host"], r["key_algorithm"]) for r in rows["items"]} if isinstance(rows, dict) else \
        {(r["host"], r["key_algorithm"]) for r in rows}
    assert {("kim.example.com", "ECDSA P-256"), ("kim.example.com", "RSA 2048")} <= algs


def test_configmap_ca_credential(site):
    d = site.k.json("verify", "cm.example.com", "--connect", f"127.0.0.1:{site.port}", "--ca", "example.com",
                    "--client", "kim-client.example.com")
    assert d["ok"], d["message"]


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
@pytest.mark.parametrize("cipher,kind,half", [("ECDHE-ECDSA-AES128-GCM-SHA256", "EC", None),
                                              ("ECDHE-RSA-AES128-GCM-SHA256", "RSA", "pair")])
def test_node_client_gets_its_algorithm(site, cipher, kind, half):
    out = subprocess.run(["node", str(PEERS / "tls_client.js"), "127.0.0.1", str(site.port), "kim.example.com",
                          site.ca, "--ciphers", cipher], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    want = site.certs["kim.example.com"] if half is None else site.certs["kim.example.com"][half]
    assert json.loads(out.stdout) == {"ok": True, "status": 200, "version": "TLSv1.2", "key": kind,
                                      "serial": _serial(want)}


@pytest.mark.skipif(shutil.which("java") is None, reason="java is not installed")
def test_jdk_client_gets_its_algorithm(site):
    seen = {}
    # Envoy picks the ECDSA certificate for any client whose signature_algorithms list ECDSA, whatever
    # its cipher suites (the JDK lists them by default): an RSA-only JDK client says so there too.
    for suite, schemes in (("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", []),
                           ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                            ["-Djdk.tls.client.SignatureSchemes=rsa_pss_rsae_sha256,rsa_pkcs1_sha256"])):
        out = subprocess.run(["java", f"-Dkimpki.cipherSuite={suite}", *schemes, str(PEERS / "TlsClient.java"),
                              "127.0.0.1", str(site.port), "kim.example.com", site.ca],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        ok, status, version, kind, serial = out.stdout.split()
        assert (ok, status, version) == ("ok", "200", "TLSv1.2"), out.stdout
        seen[kind] = serial
    cert = site.certs["kim.example.com"]
    assert seen == {"EC": _serial(cert), "RSA": _serial(cert["pair"])}


def _copy_pair(site, tmp_path: Path) -> Path:
    folder = tmp_path / "m"
    folder.mkdir()
    for f in ("kim.yaml", "gateway.yaml", "mtls-ca.yaml"):
        shutil.copy(site.folder / f, folder / f)
    return folder


def _served(folder: Path) -> dict[str, str]:
    from cryptography import x509

    out = {}
    for f in folder.glob("*.yaml"):
        for d in yaml.safe_load_all(f.read_text()):
            for doc in (d.get("items") if d.get("kind") == "List" else [d]):
                if doc.get("kind") == "Secret" and "cert" in (doc.get("data") or {}):
                    cert = x509.load_pem_x509_certificate(base64.b64decode(doc["data"]["cert"]))
                    out[doc["metadata"]["name"]] = format(cert.serial_number, "x")
    return out


def test_rotate_one_name_rotates_both(site, tmp_path):
    folder = _copy_pair(site, tmp_path)
    before = _served(folder)
    d = site.k.json("rotate", "kim-credential-rsa", "--manifests", folder)
    after = _served(folder)
    assert d["secret"] == "kim-credential-rsa" and d["pair"]["secret"] == "kim-credential"
    assert after["kim-credential"] != before["kim-credential"]
    assert after["kim-credential-rsa"] != before["kim-credential-rsa"]
    assert after["kim-credential"] == d["pair"]["new_serial"]


def test_renew_renews_both_when_one_is_due(kimpki, tmp_path):
    kimpki.ok("ca", "init", "example.com")
    kimpki.ok("issue", "pair.example.com")
    # The RSA half alone is short-lived: with --renew-before 95% it is due (5 minutes of backdating
    # are 7% of its 65 minutes), while its 90-day ECDSA partner is not.
    kimpki.ok("issue", "pair.example.com", "--key-type", "rsa-2048", "--name", "pair.example.com-rsa",
              "--days", "1h")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "pair.yaml").write_text(kimpki.ok("secret", "create", "pair-credential", "--cert", "pair.example.com",
                                                "--dual", "--dry-run", "-o", "yaml").out)
    before = _served(folder)
    d = kimpki.json("renew", "--manifests", folder, "--renew-before", "95%")
    actions = {r["secret"]: r["action"] for r in d["results"]}
    assert actions == {"pair-credential": "renewed", "pair-credential-rsa": "renewed"}, d
    after = _served(folder)
    assert all(after[n] != before[n] for n in before)


def test_revoke_revokes_both_halves(kimpki):
    kimpki.ok("ca", "init", "example.com")
    kimpki.ok("issue", "rv.example.com", "--dual", "--key-type", "rsa-2048")
    d = kimpki.json("revoke", "rv.example.com", "--reason", "keyCompromise")
    assert d["pair"]["name"] == "rv.example.com-ecdsa" and not d["pair"]["already_revoked"]
    states = {r["name"]: r["state"] for r in kimpki.json("list")["items"]}
    assert states["rv.example.com"] == states["rv.example.com-ecdsa"] == "revoked"


def test_ca_rotate_widens_and_retire_narrows_the_ca_only_secret(site, tmp_path):
    k = Kimpki(tmp_path / "home", tmp_path)
    k.ok("ca", "init", "rot.example")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "ca.yaml").write_text(k.ok("secret", "create", "rot-cacert", "--ca-only", "--ca", "rot.example",
                                         "--dry-run", "-o", "yaml").out)

    def bundle() -> tuple[str, int]:
        doc = yaml.safe_load((folder / "ca.yaml").read_text())
        return doc["metadata"]["annotations"]["kimpki.io/ca"], base64.b64decode(doc["data"]["cacert"]).count(b"BEGIN")

    assert bundle() == ("rot.example", 1)
    d = k.json("ca", "rotate", "rot.example", "--manifests", folder)
    assert [w["secret"] for w in d["widened"]] == ["rot-cacert"]
    assert bundle() == ("rot.example", 2)
    k.ok("ca", "retire", "rot.example", "--manifests", folder)
    assert bundle() == (d["successor"], 1)


def test_ca_only_refuses_a_name_istio_reads_as_a_certificate(kimpki):
    kimpki.ok("ca", "init", "example.com")
    assert_one_line_error(kimpki("secret", "create", "clients", "--ca-only"), 2, "-cacert")
    assert_one_line_error(kimpki("secret", "create", "x", "--config-map"), 2, "--ca-only")


def test_check_findings(site, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    k = site.k
    k.ok("issue", "two.example.com")
    k.ok("issue", "two.example.com", "--name", "two-b")
    for name, cert in (("two-a", "two.example.com"), ("two-b", "two-b")):
        (folder / f"{name}.yaml").write_text(k.ok("secret", "create", name, "--cert", cert, "--dry-run",
                                                  "-o", "yaml").out)
    gw = yaml.safe_load(k.ok("gateway", "render", "--name", "g", "--no-virtual-service",
                             "--host", "two.example.com", "--credential", "two-a,two-b", "--mode", "SIMPLE",
                             "--host", "x.example.com", "--credential", "two-a", "--mode", "MUTUAL",
                             "--ca-credential", "missing-cacert").out)
    # A third server with two certificate sources (CEL allows credentialNames beside file paths).
    third = json.loads(json.dumps(gw["spec"]["servers"][0]))
    third["hosts"], third["port"]["name"] = ["three.example.com"], "https-three"
    third["tls"].update(serverCertificate="/etc/istio/ingressgateway-certs/tls.crt",
                        privateKey="/etc/istio/ingressgateway-certs/tls.key")
    gw["spec"]["servers"].append(third)
    (folder / "gw.yaml").write_text(yaml.safe_dump(gw))
    res = k("check", "-f", folder, "--json")
    assert res.code == 1
    codes = {(f["server"], f["code"]) for f in res.json["findings"] if f["code"]}
    assert ("https-two", "KIM0020") in codes
    assert ("https-x", "KIM0021") in codes
    assert ("https-three", "KIM0019") in codes
    # The dual site passes the same checks.
    ok = k.json("check", "-f", site.folder)
    assert not [f for f in ok["findings"] if f["code"] in ("KIM0019", "KIM0020", "KIM0021")]


POLICY = """\
apiVersion: kimpki.io/v1alpha1
kind: Target
metadata: {name: local}
spec: {manifests: out}
---
apiVersion: kimpki.io/v1alpha1
kind: CertificateAuthority
metadata: {name: pol.example}
spec: {org: pol Inc.}
---
apiVersion: kimpki.io/v1alpha1
kind: Certificate
metadata: {name: shop.example.com}
spec: {hosts: [shop.example.com], ca: pol.example, dual: %(dual)s}
---
apiVersion: kimpki.io/v1alpha1
kind: Credential
metadata: {name: shop-credential}
spec: {certificate: shop.example.com, mode: MUTUAL, dual: true}
---
apiVersion: kimpki.io/v1alpha1
kind: Credential
metadata: {name: %(ca_name)s}
spec: {caOnly: true, clientCA: pol.example}
---
apiVersion: kimpki.io/v1alpha1
kind: Gateway
metadata: {name: shop-gateway}
spec:
  servers:
  - {credential: shop-credential, caCredential: shop-clients-cacert}
"""


def test_policy_dual_credential_and_ca_only(kimpki, tmp_path):
    (tmp_path / "out").mkdir()
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY % {"dual": "true", "ca_name": "shop-clients-cacert"})
    d = kimpki.json("apply", "-f", policy)
    made = {(a["kind"], a["name"]) for a in d["actions"]}
    assert {("Certificate", "shop.example.com"), ("Certificate", "shop.example.com-rsa"),
            ("Secret", "shop-credential"), ("Secret", "shop-credential-rsa"),
            ("Secret", "shop-clients-cacert")} <= made
    gw = yaml.safe_load((tmp_path / "out" / "shop-gateway.gateway.yaml").read_text())
    assert gw["spec"]["servers"][0]["tls"] == {"mode": "MUTUAL", "credentialNames": ["shop-credential",
                                                                                     "shop-credential-rsa"],
                                               "caCertCredentialName": "shop-clients-cacert"}
    ca = yaml.safe_load((tmp_path / "out" / "shop-clients-cacert.yaml").read_text())
    assert ca["metadata"]["annotations"]["kimpki.io/role"] == "ca-only" and "key" not in ca["data"]
    assert kimpki.json("apply", "-f", policy)["actions"] == []
    assert kimpki.json("check", "-f", tmp_path / "out")["ok"]


@pytest.mark.parametrize("dual,ca_name,needle", [
    ("false", "shop-clients-cacert", "spec.dual needs certificate shop.example.com to be dual too"),
    ("true", "shop-clients", "must end in -cacert"),
])
def test_policy_refuses_a_pair_without_a_dual_certificate_and_a_ca_only_name(kimpki, tmp_path, dual, ca_name,
                                                                             needle):
    (tmp_path / "out").mkdir()
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY % {"dual": dual, "ca_name": ca_name})
    assert_one_line_error(kimpki("plan", "-f", policy), 2, needle)


def test_cluster_pair_configmap_ca_check_and_rotate(kube_env, kimpki, tmp_path):
    """The same through the API stand-in: both Secrets and the CA ConfigMap written in place,
    ``check`` reading the ConfigMap a Gateway names (KIM0021 when it is missing), and ``rotate``
    of one half rotating both in the cluster."""
    kimpki.ok("ca", "init", "example.com")
    kimpki.ok("issue", "cl.example.com", "--dual")
    d = kimpki.json("secret", "create", "cl-credential", "--cert", "cl.example.com", "--dual", "--mutual")
    assert [s["name"] for s in d["secrets"]] == ["cl-credential", "cl-credential-rsa"]
    assert d["credential_names"] == ["cl-credential", "cl-credential-rsa"]
    cm = kimpki.json("secret", "create", "cl-clients", "--ca-only", "--config-map")
    assert (cm["kind"], cm["action"], cm["ca_cert_credential_name"]) == \
        ("ConfigMap", "created", "configmap://istio-system/cl-clients")
    stored = kube_env.get_object("configmaps", "istio-system", "cl-clients")
    assert "BEGIN CERTIFICATE" in stored["data"]["cacert"]
    for name, ca in (("cl-gateway", "configmap://istio-system/cl-clients"),
                     ("gone-gateway", "configmap://istio-system/gone")):
        rendered = kimpki.ok("gateway", "render", "--name", name, "--no-virtual-service", "--host", "cl.example.com",
                             "--credential", "cl-credential,cl-credential-rsa", "--mode", "MUTUAL",
                             "--ca-credential", ca).out
        kimpki.ok("gateway", "apply", "-f", "-", input=rendered)
    res = kimpki("check", "--json")
    codes = {(f["gateway"], f["code"]) for f in res.json["findings"] if f["code"]}
    assert codes == {("istio-system/gone-gateway", "KIM0021")}, res.json["findings"]
    before = {n: kube_env.get_object("secrets", "istio-system", n)["metadata"]["annotations"]["kimpki.io/serial"]
              for n in ("cl-credential", "cl-credential-rsa")}
    r = kimpki.json("rotate", "cl-credential-rsa")
    after = {n: kube_env.get_object("secrets", "istio-system", n)["metadata"]["annotations"]["kimpki.io/serial"]
             for n in ("cl-credential", "cl-credential-rsa")}
    assert after == {"cl-credential-rsa": r["new_serial"], "cl-credential": r["pair"]["new_serial"]}
    assert all(after[n] != before[n] for n in before)
