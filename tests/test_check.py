"""``kimpki check``: the real CLI against the stand-in API server (and offline on manifest files),
with certificates issued by kimpki itself."""

from __future__ import annotations

import base64
import copy
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from tests.conftest import Result, assert_one_line_error
from tests.kubeapi.fixtures import *  # noqa: F401,F403  (kube_api, kube_env, kube_client)

from kimpki.istio import contract as c
from kimpki.ops import check

NS = c.DEFAULT_NAMESPACE
NOW = datetime.now(timezone.utc)


# --------------------------------------------------------------------------- certificates
@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """PEM bytes issued in-process by kimpki (CA example.com, as in the seed)."""
    from kimpki.ops import authority, issuing
    from kimpki.pki import keys
    from kimpki.store import Store

    store = Store.open(tmp_path_factory.mktemp("home"))
    authority.init_ca(store, "example.com", org="example Inc.", common_name=None, key_type=keys.DEFAULT_KEY_TYPE,
                      days=365, passphrase=None, parent=None, parent_passphrase=authority.no_passphrase, now=NOW)

    def leaf(*hosts, name=None, **kw):
        r = issuing.issue(store, list(hosts), name=name, now=NOW, passphrase=authority.no_passphrase, **kw)
        return {"cert": r.record.cert_path.read_bytes(), "key": r.record.key_path.read_bytes(),
                "ca": r.record.ca_path.read_bytes()}

    return {
        "kim": leaf("kim.example.com"),
        "kim-new": leaf("kim-new.example.com"),
        "wild": leaf("*.example.com", name="wild"),
        "expired": leaf("kim.example.com", name="kim-expired", not_before=NOW - timedelta(days=40),
                        not_after=NOW - timedelta(days=3)),
        "short": leaf("kim.example.com", name="kim-short", days=5),
    }


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def generic_secret(name: str, cert: bytes, key: bytes, ca: bytes | None = None, ns: str | None = NS) -> dict:
    """As ``kubectl create secret generic NAME --from-file=key=... --from-file=cert=...``."""
    data = {"cert": b64(cert), "key": b64(key)}
    if ca is not None:
        data["cacert"] = b64(ca)
    meta = {"name": name}
    if ns:
        meta["namespace"] = ns
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque", "data": data}


def tls_secret(name: str, cert: bytes, key: bytes, ns: str | None = NS) -> dict:
    """As ``kubectl create secret tls NAME --cert ... --key ...``."""
    meta = {"name": name}
    if ns:
        meta["namespace"] = ns
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "kubernetes.io/tls",
            "data": {"tls.crt": b64(cert), "tls.key": b64(key)}}


def ca_secret(name: str, ca: bytes, key: str = "cacert", ns: str | None = NS) -> dict:
    meta = {"name": name}
    if ns:
        meta["namespace"] = ns
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque", "data": {key: b64(ca)}}


def server(port_name: str, mode: str, host: str, *, credential: str | None = None, files: bool = False) -> dict:
    tls = {"mode": mode}
    if credential:
        tls["credentialName"] = credential
    if files:
        tls["serverCertificate"] = f"{c.FILE_MOUNTED_CERTS_PATH}/tls.crt"
        tls["privateKey"] = f"{c.FILE_MOUNTED_CERTS_PATH}/tls.key"
    return {"port": {"number": 443, "name": port_name, "protocol": "HTTPS"}, "tls": tls, "hosts": [host]}


def seed_gateways() -> list[dict]:
    """The seed's variants: SDS SIMPLE kim.example.com, SDS MUTUAL kim-new.example.com (one Gateway
    applied without -n, so in "default"), and the file-mounted SIMPLE Gateway of the earlier steps."""
    return [
        {"apiVersion": "networking.istio.io/v1alpha3", "kind": "Gateway",
         "metadata": {"name": "kim-gateway", "namespace": "default"},
         "spec": {"selector": {"istio": "ingressgateway"},
                  "servers": [server("https-kim", "SIMPLE", "kim.example.com", credential="kim-credential"),
                              server("https-kim-new", "MUTUAL", "kim-new.example.com",
                                     credential="kim-new-credential"),
                              {"port": {"number": 80, "name": "http", "protocol": "HTTP"},
                               "hosts": ["kim.example.com"], "tls": {"httpsRedirect": True}}]}},
        {"apiVersion": "networking.istio.io/v1alpha3", "kind": "Gateway",
         "metadata": {"name": "kim-file-gateway", "namespace": NS},
         "spec": {"selector": {"istio": "ingressgateway"},
                  "servers": [server("https", "SIMPLE", "kim.example.com", files=True)]}},
    ]


def good_secrets(pki) -> list[dict]:
    return [
        generic_secret("kim-credential", pki["kim"]["cert"], pki["kim"]["key"]),
        generic_secret("kim-new-credential", pki["kim-new"]["cert"], pki["kim-new"]["key"], ca=pki["kim"]["ca"]),
        tls_secret(c.FILE_MOUNTED_CERTS_SECRET, pki["kim"]["cert"], pki["kim"]["key"]),
    ]


def replace_secret(secrets: list[dict], new: dict | None, name: str | None = None) -> list[dict]:
    name = name or new["metadata"]["name"]
    out = [s for s in secrets if s["metadata"]["name"] != name]
    return out + ([new] if new is not None else [])


def seed(srv, secrets: list[dict], gateways: list[dict] | None = None) -> None:
    for obj in (gateways if gateways is not None else seed_gateways()) + secrets:
        srv.put_object(copy.deepcopy(obj))


def run_check(srv, capsys, *args) -> Result:
    """The real entry point, in-process (fast): ``kimpki check --kubeconfig ... --json``."""
    from kimpki.cli.main import main

    with pytest.raises(SystemExit) as ei:
        main(["check", "--kubeconfig", srv.kubeconfig_path, *map(str, args)])
    out, err = capsys.readouterr()
    return Result(ei.value.code, out, err)


def problems(res: Result) -> list[tuple]:
    return [(f["gateway"], f["credential"], f["check"], f["code"]) for f in res.json["findings"] if f["status"] != "ok"]


# --------------------------------------------------------------------------- the real CLI, as a user runs it
def test_all_good_passes_through_the_real_cli(kube_api, kimpki, pki):
    seed(kube_api, good_secrets(pki))
    res = kimpki("check", "--kubeconfig", kube_api.kubeconfig_path)
    assert res.code == 0, res.err + res.out
    assert res.err == ""
    header = res.out.splitlines()[0].split()
    assert header == ["GATEWAY", "SERVER", "HOST", "CREDENTIAL", "CHECK", "STATUS", "DETAIL"]
    assert "default/kim-gateway" in res.out and "istio-system/kim-file-gateway" in res.out
    assert res.out.strip().splitlines()[-1].startswith("all credentials OK (3 TLS servers in 2 Gateways")
    data = kimpki.json("check", "--kubeconfig", kube_api.kubeconfig_path)
    assert data["ok"] is True and data["summary"]["errors"] == 0 and data["summary"]["servers"] == 3
    f = data["findings"][0]
    assert set(f) == {"gateway", "server", "port", "host", "credential", "check", "status", "code", "reason",
                      "detail", "not_after", "days_left"}
    checks = {(x["gateway"], x["server"], x["check"]) for x in data["findings"]}
    assert ("default/kim-gateway", "https-kim-new", "ca_present") in checks
    assert ("istio-system/kim-file-gateway", "https", "host_covered") in checks
    ca = [x for x in data["findings"] if x["check"] == "ca_present"][0]
    assert "kim-new-credential[cacert]" in ca["detail"]


def test_missing_secret_fails_through_the_real_cli(kube_api, kimpki, pki):
    seed(kube_api, replace_secret(good_secrets(pki), None, "kim-credential"))
    res = kimpki("check", "--kubeconfig", kube_api.kubeconfig_path)
    assert res.code == 1, res.err + res.out
    assert "ERROR IST0101" in res.out and "Secret kim-credential not found in namespace istio-system" in res.out
    assert "1 error, 0 warnings" in res.out


def test_unreachable_cluster_is_a_one_line_error(kube_api, kimpki, tmp_path):
    cfg = yaml.safe_load(Path(kube_api.kubeconfig_path).read_text())
    cfg["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
    (tmp_path / "kc").write_text(yaml.safe_dump(cfg))
    res = kimpki("check", "--kubeconfig", tmp_path / "kc")
    assert_one_line_error(res, 1, "cannot reach the Kubernetes API at https://127.0.0.1:1: connection refused")
    res = kimpki("check", "--kubeconfig", tmp_path / "nope")
    assert_one_line_error(res, 1, "kubeconfig file")


# --------------------------------------------------------------------------- each failure alone
@pytest.mark.parametrize("case", ["missing", "expired", "key_mismatch", "host_not_covered", "mutual_without_ca",
                                  "cacert_secret_without_ca", "file_mounted_missing", "wrong_keys"])
def test_each_problem_fails_with_its_code(kube_api, capsys, pki, case):
    secrets = good_secrets(pki)
    expect = {
        "missing": (None, "kim-credential", ("default/kim-gateway", "kim-credential", "credential_found", "IST0101")),
        "expired": (generic_secret("kim-credential", pki["expired"]["cert"], pki["expired"]["key"]), None,
                    ("default/kim-gateway", "kim-credential", "expiry", "IST0161")),
        "key_mismatch": (generic_secret("kim-credential", pki["kim"]["cert"], pki["kim-new"]["key"]), None,
                         ("default/kim-gateway", "kim-credential", "key_matches", "KIM0001")),
        "host_not_covered": (generic_secret("kim-credential", pki["kim-new"]["cert"], pki["kim-new"]["key"]), None,
                             ("default/kim-gateway", "kim-credential", "host_covered", "KIM0002")),
        "mutual_without_ca": (generic_secret("kim-new-credential", pki["kim-new"]["cert"], pki["kim-new"]["key"]),
                              None, ("default/kim-gateway", "kim-new-credential", "ca_present", "KIM0003")),
        "cacert_secret_without_ca": (ca_secret("kim-new-credential-cacert", pki["kim"]["ca"], key="ca.pem"), None,
                                     ("default/kim-gateway", "kim-new-credential-cacert", "ca_present", "KIM0003")),
        "file_mounted_missing": (None, c.FILE_MOUNTED_CERTS_SECRET,
                                 ("istio-system/kim-file-gateway",
                                  f"{c.FILE_MOUNTED_CERTS_SECRET} (mounted)",
                                  "credential_found", "IST0101")),
        "wrong_keys": (ca_secret("kim-credential", pki["kim"]["cert"], key="tls.cert"), None,
                       ("default/kim-gateway", "kim-credential", "credential_valid", "IST0161")),
    }[case]
    new, drop, wanted = expect
    secrets = replace_secret(secrets, new, drop)
    seed(kube_api, secrets)
    res = run_check(kube_api, capsys, "--json")
    assert res.code == 1, res.out + res.err
    assert res.json["ok"] is False
    assert problems(res) == [wanted], problems(res)
    bad = [f for f in res.json["findings"] if f["status"] == "error"][0]
    assert bad["reason"] == check.CODES[wanted[3]]
    if case == "expired":
        assert bad["days_left"] < 0 and "expired on" in bad["detail"] and "3 days ago" in bad["detail"]
    if case == "host_not_covered":
        assert bad["host"] == "kim.example.com" and "kim-new.example.com" in bad["detail"]
    if case == "cacert_secret_without_ca":
        assert "Istio does not fall back to Secret kim-new-credential" in bad["detail"]


def test_cacert_secret_takes_precedence_and_wildcards_cover_one_label(kube_api, capsys, pki):
    secrets = replace_secret(good_secrets(pki),
                             generic_secret("kim-new-credential", pki["wild"]["cert"], pki["wild"]["key"]))
    secrets.append(ca_secret("kim-new-credential-cacert", pki["kim"]["ca"], key="ca.crt"))
    seed(kube_api, secrets)
    res = run_check(kube_api, capsys, "--json")
    assert res.code == 0, res.out
    ca = [f for f in res.json["findings"] if f["check"] == "ca_present"][0]
    assert ca["credential"] == "kim-new-credential-cacert" and "kim-new-credential-cacert[ca.crt]" in ca["detail"]
    host = [f for f in res.json["findings"] if f["check"] == "host_covered" and f["server"] == "https-kim-new"][0]
    assert host["detail"] == "covered by DNS name *.example.com"


def test_expiring_soon_warns_but_passes(kube_api, capsys, pki):
    seed(kube_api, replace_secret(good_secrets(pki),
                                  generic_secret("kim-credential", pki["short"]["cert"], pki["short"]["key"])))
    res = run_check(kube_api, capsys, "--json")
    assert res.code == 0
    warn = [f for f in res.json["findings"] if f["status"] == "warning"]
    assert [(f["credential"], f["code"], f["reason"]) for f in warn] == [
        ("kim-credential", "KIM0004", "CertificateExpiringSoon")]
    assert res.json["summary"]["warnings"] == 1 and res.json["ok"] is True
    res = run_check(kube_api, capsys, "--warn-days", "3", "--json")
    assert res.code == 0 and res.json["summary"]["warnings"] == 0


def test_gateway_namespace_and_forbidden_cluster_wide_list(kube_api, capsys, pki):
    seed(kube_api, good_secrets(pki))
    res = run_check(kube_api, capsys, "--gateway-namespace", NS, "--json")
    assert res.code == 0 and {f["gateway"] for f in res.json["findings"]} == {"istio-system/kim-file-gateway"}
    kube_api.deny("list", "gateways", namespace="")  # cluster-wide list only
    res = run_check(kube_api, capsys, "--json")
    assert res.code == 0 and {f["gateway"] for f in res.json["findings"]} == {"istio-system/kim-file-gateway"}
    assert "cannot list Gateways in all namespaces" in res.err
    assert res.json["notes"]


def test_older_istio_versions_and_no_istio_at_all(kube_api, capsys, pki):
    seed(kube_api, good_secrets(pki))
    # an Istio that serves only v1beta1/v1alpha3: the v1 list is a plain 404
    kube_api.fail("GET", "gateways", status=404, times=1)
    res = run_check(kube_api, capsys, "--json")
    assert res.code == 0 and res.json["summary"]["servers"] == 3
    assert [r.path for r in kube_api.requests if "gateways" in r.path][-2:] == [
        "/apis/networking.istio.io/v1/gateways", "/apis/networking.istio.io/v1beta1/gateways"]
    kube_api.fail("GET", "gateways", status=404, times=3)
    res = run_check(kube_api, capsys)
    assert_one_line_error(res, 1, f"the Kubernetes API at {kube_api.url} serves no Istio Gateways",
                          "is Istio installed?")


def test_secrets_fetched_by_name_when_list_is_forbidden(kube_api, capsys, pki):
    seed(kube_api, good_secrets(pki))
    kube_api.deny("list", "secrets")
    res = run_check(kube_api, capsys, "--json")
    assert res.code == 0, res.out + res.err
    gets = [r for r in kube_api.calls("GET", "secrets") if r["name"]]
    assert {r["name"] for r in gets} >= {"kim-credential", "kim-new-credential", "kim-new-credential-cacert"}


def test_forbidden_secret_read_is_one_line(kube_api, capsys, pki):
    seed(kube_api, good_secrets(pki))
    kube_api.deny(["list", "get"], "secrets")
    res = run_check(kube_api, capsys)
    assert_one_line_error(res, 1, 'cannot get secrets in namespace "istio-system"', 'verbs ["get"]')


# --------------------------------------------------------------------------- offline: -f
def write_manifests(directory: Path, gateways: list[dict], secrets: list[dict]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "gateway.yaml").write_text(yaml.safe_dump_all(gateways))
    for s in secrets:
        (directory / f"{s['metadata']['name']}.yaml").write_text(yaml.safe_dump(s))
    return directory


def test_offline_manifests(kimpki, pki, tmp_path):
    # the Secrets as `kubectl create secret ... --dry-run=client -o yaml` writes them: no namespace
    secrets = [dict(s, metadata={"name": s["metadata"]["name"]}) for s in good_secrets(pki)]
    good = write_manifests(tmp_path / "good", seed_gateways(), secrets)
    res = kimpki("check", "-f", good)
    assert res.code == 0, res.out + res.err
    assert "all credentials OK (3 TLS servers in 2 Gateways" in res.out

    bad = write_manifests(tmp_path / "bad", seed_gateways(), replace_secret(
        secrets, generic_secret("kim-credential", pki["expired"]["cert"], pki["expired"]["key"], ns=None)))
    res = kimpki("check", "-f", bad, "--json")
    data = res.json
    assert res.code == 1 and data["ok"] is False, res.err
    assert [(f["credential"], f["code"]) for f in data["findings"] if f["status"] == "error"] == [
        ("kim-credential", "IST0161")]
    res = kimpki("check", "-f", bad / "gateway.yaml", "-f", bad / "kim-new-credential.yaml", "--json")
    assert res.code == 1
    assert ("default/kim-gateway", "kim-credential", "credential_found", "IST0101") in problems(res)
    res = kimpki("check", "-f", tmp_path / "nope")
    assert_one_line_error(res, 2, "no such manifest file or folder")
    res = kimpki("check", "-f", good, "--kubeconfig", "x")
    assert res.code == 2


def test_certificate_whose_key_does_not_read_is_an_invalid_credential(kimpki, pki, tmp_path):
    """cryptography parses a certificate's key when it is first read: one off its curve (a bit of
    y flipped) is a credential Istio cannot use, not an internal error when the key is compared."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(pki["kim"]["cert"])
    point = cert.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    der = cert.public_bytes(serialization.Encoding.DER).replace(point, point[:-1] + bytes([point[-1] ^ 1]))
    pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE-----\n"
    secrets = replace_secret(good_secrets(pki), generic_secret("kim-credential", pem, pki["kim"]["key"], ns=None))
    res = kimpki("check", "-f", write_manifests(tmp_path / "bent", seed_gateways(), secrets), "--json")
    assert res.code == 1 and "internal error" not in res.err, res.err
    assert [(f["credential"], f["check"], f["code"]) for f in res.json["findings"] if f["status"] == "error"] == [
        ("kim-credential", "credential_valid", "IST0161")]


def test_offline_file_mounted_through_a_deployment_mount(pki, tmp_path):
    """The seed's bookinfo step: a third Secret mounted by patching the gateway Deployment."""
    from kimpki.localgw.manifests import load_manifests

    gw = {"apiVersion": "networking.istio.io/v1alpha3", "kind": "Gateway", "metadata": {"name": "bookinfo-gateway"},
          "spec": {"servers": [{"port": {"number": 443, "name": "https-bookinfo", "protocol": "HTTPS"},
                                "tls": {"mode": "SIMPLE",
                                        "serverCertificate": "/etc/istio/ingressgateway-bookinfo-certs/tls.crt",
                                        "privateKey": "/etc/istio/ingressgateway-bookinfo-certs/tls.key"},
                                "hosts": ["kim.example.com"]}]}}
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "istio-ingressgateway", "namespace": NS},
           "spec": {"template": {"spec": {
               "containers": [{"name": "istio-proxy", "volumeMounts": [
                   {"name": "ingressgateway-bookinfo-certs", "mountPath": "/etc/istio/ingressgateway-bookinfo-certs"}]}],
               "volumes": [{"name": "ingressgateway-bookinfo-certs",
                            "secret": {"secretName": "istio-ingressgateway-bookinfo-certs"}}]}}}}
    d = write_manifests(tmp_path / "m", [gw, dep], [tls_secret("istio-ingressgateway-bookinfo-certs",
                                                               pki["kim"]["cert"], pki["kim"]["key"])])
    m = load_manifests([d])
    rep = check.analyse(m.gateways, m.secrets, namespace=m.namespace, mounts=m.mounts, now=NOW)
    assert rep.ok and rep.servers == 1
    assert rep.findings[0].credential == "istio-ingressgateway-bookinfo-certs (mounted)"
    assert "/etc/istio/ingressgateway-bookinfo-certs/tls.crt" in rep.findings[0].detail
    # without the Deployment the path is in no known mount
    rep = check.analyse(m.gateways, m.secrets, namespace=NS, now=NOW)
    assert not rep.ok and rep.findings[0].code == "KIM0005"


# --------------------------------------------------------------------------- pure pieces
@pytest.mark.parametrize("san,host,covered", [
    ("kim.example.com", "kim.example.com", True),
    ("KIM.example.com", "kim.example.com.", True),
    ("*.example.com", "kim.example.com", True),
    ("*.example.com", "a.kim.example.com", False),
    ("*.example.com", "example.com", False),
    ("*.example.com", "*.example.com", True),
    ("kim.example.com", "*.example.com", False),
    ("*.kim.example.com", "*.example.com", False),
    ("bücher.example", "xn--bcher-kva.example", True),
])
def test_name_covers(san, host, covered):
    assert check.name_covers(san, host) is covered


def test_seed_openssl_certificate_without_san_is_reported(tmp_path):
    """The seed's `openssl req` + `openssl x509 -req -set_serial 0` certificate has only a CN."""
    def openssl(*a):
        subprocess.run(["openssl", *a], cwd=tmp_path, check=True, capture_output=True)

    openssl("req", "-x509", "-sha256", "-nodes", "-days", "365", "-newkey", "rsa:2048", "-subj",
            "/O=example Inc./CN=example.com", "-keyout", "example.com.key", "-out", "example.com.crt")
    openssl("req", "-out", "kim.example.com.csr", "-newkey", "rsa:2048", "-nodes", "-keyout", "kim.example.com.key",
            "-subj", "/CN=kim.example.com/O=kim organization")
    openssl("x509", "-req", "-days", "365", "-CA", "example.com.crt", "-CAkey", "example.com.key", "-set_serial", "0",
            "-in", "kim.example.com.csr", "-out", "kim.example.com.crt")
    sec = generic_secret("kim-credential", (tmp_path / "kim.example.com.crt").read_bytes(),
                         (tmp_path / "kim.example.com.key").read_bytes())
    rep = check.analyse([check.gateway_from_api(seed_gateways()[0])], [check.secret_from_api(sec)],
                        namespace=NS, now=NOW)
    host = [f for f in rep.findings if f.check == "host_covered" and f.credential == "kim-credential"][0]
    assert host.status == "error" and host.code == "KIM0002"
    assert host.detail == ("the certificate has no DNS subjectAltName (only the subject CN kim.example.com, "
                           "which clients ignore)")
    valid = [f for f in rep.findings if f.check == "credential_valid" and f.credential == "kim-credential"][0]
    assert valid.status == "warning" and valid.code == "KIM0006" and "serial number is not positive" in valid.detail


def test_check_help_is_listed_without_importing_kubernetes():
    r = subprocess.run([sys.executable, "-m", "kimpki", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "check" in r.stdout and "Analyse gateway credentials" in r.stdout
    code = ("import sys\nfrom kimpki.cli.main import main\n"
            "try:\n    main(['check', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'kubernetes' not in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "IST0101" in r.stdout and "--warn-days" in r.stdout


def test_every_code_is_documented_once_in_order(kimpki):
    """``check --help`` and the module's table list every code ``CODES`` names; numbers have no gaps."""
    import re

    from kimpki.ops import check

    numbers = [int(code[3:]) for code in check.CODES if code.startswith("KIM")]
    assert numbers == list(range(1, len(numbers) + 1))
    help_text = kimpki("check", "--help").out
    for code, reason in check.CODES.items():
        assert len(re.findall(rf"^\s+{code}\s", help_text, re.M)) == 1, code
        assert f"``{code}`` {reason}" in check.__doc__, code
