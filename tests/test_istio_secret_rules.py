"""Istio's own expectations for credential Secrets, replayed on kimpki's readers and on Envoy.

The cases are re-expressed from Istio's test table, not kimpki's idea of it: istio/istio
``pilot/pkg/credentials/kube/secrets_test.go`` (``TestSecretsController``: generic and tls key
sets, the ``-cacert`` Secret's precedence, empty values, wrong keys, OCSP staple and CRL keys)
and the rules its cases exercise in ``pilot/pkg/credentials/kube/secrets.go``
(``ExtractCertInfo``: ``cert``/``key`` before ``tls.crt``/``tls.key``, a key set counts only
when both values are non-empty; ``ExtractRoot``: ``cacert`` (with ``crl``) before ``ca.crt``
(with ``ca.crl``); ``GetCaCert``: Secret ``X-cacert`` when it exists, with no fallback, else
``X``). Istio's table uses placeholder strings; here every value is a real certificate, key or
CRL, so that which one was picked can be seen, and served.

Each case is a credential name as a Gateway's ``credentialName`` and the Secrets present; what
Istio does with it: the certificate served (or none), and for MUTUAL the CA (and CRL) client
certificates are checked against (or not served). Replayed on:

* the local gateway's reader (:func:`kimpki.localgw.manifests.resolve`), SIMPLE and MUTUAL;
* ``kimpki check -f`` (its own reading of the same rules): an error exactly where Istio refuses;
* a real Envoy (``kimpki gateway serve``) judged by ``kimpki verify``: for every MUTUAL case,
  a client certificate from the CA Istio picks is accepted and one from the CA it passes over is
  refused; a client revoked by the CRL Istio picks is refused; the served serial is the leaf
  Istio picks.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from kimpki.localgw.manifests import parse_manifests, resolve
from tests.conftest import Kimpki
from tests.localgw_pki import Pair, gateway_yaml, https_server, make_ca, make_leaf

NS = "istio-system"


@dataclass(frozen=True)
class Case:
    """One credential name and the Secrets present ({Secret name: {data key: value label}});
    what Istio serves: ``cert`` (a leaf label, or None: not served at all) and, for MUTUAL,
    ``ca`` and ``crl`` (CA labels; ``ca`` None: a MUTUAL server is not served)."""

    name: str
    secrets: dict[str, dict[str, str]]
    cert: str | None
    ca: str | None
    crl: str | None = None
    source: str = "TestSecretsController"
    passed_over: tuple[str, ...] = field(default=())  # CAs present that Istio must not trust
    namespace: str = NS


CASES = [
    # TestSecretsController, case by case.
    Case("generic", {"generic": {"cert": "leaf", "key": "leaf.key"}}, "leaf", None),
    Case("generic-mtls", {"generic-mtls": {"cert": "leaf", "key": "leaf.key", "cacert": "ca-a"}}, "leaf", "ca-a"),
    Case("generic-mtls-split", {"generic-mtls-split": {"cert": "leaf", "key": "leaf.key"},
                                "generic-mtls-split-cacert": {"cacert": "ca-b"}}, "leaf", "ca-b"),
    # A -cacert Secret named as a credential: it has no certificate of its own.
    Case("generic-mtls-split-cacert", {"generic-mtls-split-cacert": {"cacert": "ca-b"}}, None, None),
    # "The -cacert secret has precedence": over the cacert key of the credential itself.
    Case("overlap", {"overlap": {"cert": "leaf", "key": "leaf.key", "cacert": "ca-a"},
                     "overlap-cacert": {"cacert": "ca-b"}}, "leaf", "ca-b", passed_over=("ca-a",)),
    # An OCSP staple beside tls.crt/tls.key changes nothing about what is served (no CA: not MUTUAL).
    Case("tls", {"tls": {"tls.crt": "leaf", "tls.key": "leaf.key", "tls.ocsp-staple": "staple"}}, "leaf", None),
    Case("tls-mtls", {"tls-mtls": {"tls.crt": "leaf", "tls.key": "leaf.key", "ca.crt": "ca-a"}}, "leaf", "ca-a"),
    Case("tls-mtls-crl", {"tls-mtls-crl": {"tls.crt": "leaf", "tls.key": "leaf.key", "ca.crt": "ca-a",
                                           "ca.crl": "crl-a"}}, "leaf", "ca-a", "crl-a"),
    Case("tls-mtls-split", {"tls-mtls-split": {"tls.crt": "leaf", "tls.key": "leaf.key"},
                            "tls-mtls-split-cacert": {"ca.crt": "ca-b"}}, "leaf", "ca-b"),
    Case("tls-mtls-split-crl", {"tls-mtls-split-crl": {"tls.crt": "leaf", "tls.key": "leaf.key"},
                                "tls-mtls-split-crl-cacert": {"ca.crt": "ca-b", "ca.crl": "crl-b"}},
         "leaf", "ca-b", "crl-b"),
    # "secret wrong-namespace/generic not found": a Secret of that name in another namespace only.
    Case("generic-elsewhere", {"generic-elsewhere": {"cert": "leaf", "key": "leaf.key", "cacert": "ca-a"}},
         None, None, namespace="default"),
    Case("empty-cert", {"empty-cert": {"tls.crt": "", "tls.key": "leaf.key"}}, None, None),
    Case("wrong-keys", {"wrong-keys": {"foo-bar": "leaf", "tls.key": "leaf.key"}}, None, None),
    # The precedence rules of secrets.go that the table's cases rest on.
    Case("both-key-sets", {"both-key-sets": {"cert": "leaf", "key": "leaf.key", "tls.crt": "other-leaf",
                                             "tls.key": "other-leaf.key", "cacert": "ca-a"}},
         "leaf", "ca-a", source="ExtractCertInfo"),
    Case("empty-generic", {"empty-generic": {"cert": "", "key": "", "tls.crt": "leaf", "tls.key": "leaf.key",
                                             "ca.crt": "ca-a"}}, "leaf", "ca-a", source="ExtractCertInfo"),
    Case("both-ca-keys", {"both-ca-keys": {"cert": "leaf", "key": "leaf.key", "cacert": "ca-a", "crl": "crl-a",
                                           "ca.crt": "ca-b", "ca.crl": "crl-b"}},
         "leaf", "ca-a", "crl-a", source="ExtractRoot", passed_over=("ca-b",)),
    Case("empty-cacert", {"empty-cacert": {"cert": "leaf", "key": "leaf.key", "cacert": "", "ca.crt": "ca-b"}},
         "leaf", "ca-b", source="ExtractRoot"),
    Case("generic-crl", {"generic-crl": {"cert": "leaf", "key": "leaf.key", "cacert": "ca-a", "crl": "crl-a"}},
         "leaf", "ca-a", "crl-a", source="ExtractRoot"),
    # GetCaCert: an existing X-cacert without a CA key is an error, with no fallback to X's cacert.
    Case("cacert-without-ca", {"cacert-without-ca": {"cert": "leaf", "key": "leaf.key", "cacert": "ca-a"},
                               "cacert-without-ca-cacert": {"foo": "ca-b"}}, "leaf", None, source="GetCaCert"),
]
CASE_IDS = [c.name for c in CASES]


def host(case: Case) -> str:
    return f"{case.name}.example.com"


def make_crl(ca: Pair, revoked_serial: int) -> bytes:
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    now = datetime.now(timezone.utc)
    revoked = (x509.RevokedCertificateBuilder().serial_number(revoked_serial)
               .revocation_date(now - timedelta(minutes=5)).build())
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
           .last_update(now - timedelta(minutes=5)).next_update(now + timedelta(days=1))
           .add_revoked_certificate(revoked).sign(ca_key, hashes.SHA256()))
    return crl.public_bytes(serialization.Encoding.PEM)


def make_staple(ca: Pair, leaf: Pair) -> bytes:
    """A good OCSP response for ``leaf``: Istio passes it through, and Envoy refuses a secret whose
    staple is not a successful response for its certificate, so a placeholder would not do."""
    from kimpki.pki.revocation import build_ocsp_response

    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    now = datetime.now(timezone.utc)
    return build_ocsp_response(x509.load_pem_x509_certificate(leaf.cert.read_bytes()), ca_cert, ca_key, revoked=None,
                               this_update=now - timedelta(minutes=5), next_update=now + timedelta(days=1))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Real certificates: a CA for the servers, two client CAs (a, b) each with a client and a
    revoked client and a CRL naming the revoked one, and a leaf (and a second one) per case."""
    d = tmp_path_factory.mktemp("istio-rules")
    server_ca = make_ca(d, "servers.example.com")
    out = {"server-ca": server_ca, "dir": d}
    for x in ("a", "b"):
        ca = make_ca(d, f"clients-{x}.example.com")
        out[f"ca-{x}"] = ca
        out[f"client-{x}"] = make_leaf(d, ca, f"client-{x}.example.com", client=True)
        out[f"revoked-{x}"] = make_leaf(d, ca, f"revoked-{x}.example.com", client=True)
        out[f"crl-{x}"] = make_crl(ca, out[f"revoked-{x}"].serial)
    for case in CASES:
        out[case.name] = make_leaf(d, server_ca, host(case))
        if any("other-leaf" in data.values() for data in case.secrets.values()):
            out[case.name + "/other"] = make_leaf(d, server_ca, host(case), tag="-other")
    return out


def value(pki: dict, case: Case, label: str) -> bytes:
    """The bytes a label stands for in ``case``."""
    if label == "":
        return b""
    if label == "staple":
        return make_staple(pki["server-ca"], pki[case.name])
    if label.startswith("crl-"):
        return pki[label]
    leaf = pki[case.name + "/other"] if label.startswith("other-leaf") else pki[case.name]
    if label.endswith(".key"):
        return leaf.key.read_bytes()
    if label.startswith("ca-"):
        return pki[label].cert.read_bytes()
    return leaf.cert.read_bytes()


def secret_docs(pki: dict, case: Case) -> list[dict]:
    return [{"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
             "metadata": {"name": name, "namespace": case.namespace},
             "data": {k: base64.b64encode(value(pki, case, v)).decode() for k, v in data.items()}}
            for name, data in case.secrets.items()]


def gateway_doc(mode: str, cases: list[Case]) -> dict:
    return yaml.safe_load(gateway_yaml(f"rules-{mode.lower()}", [
        https_server(host(c), f"https-{i}", mode, c.name) for i, c in enumerate(cases)]))


def manifests_text(pki: dict, mode: str, cases: list[Case]) -> str:
    docs = [d for c in cases for d in secret_docs(pki, c)] + [gateway_doc(mode, cases)]
    return yaml.safe_dump_all(docs, sort_keys=False)


# -- the local gateway's reader -----------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["SIMPLE", "MUTUAL"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_the_local_gateway_reads_a_credential_as_istio_does(pki, case, mode):
    r = resolve(parse_manifests([("rules.yaml", manifests_text(pki, mode, [case]))]))
    served = case.cert is not None and (mode == "SIMPLE" or case.ca is not None)
    if not served:
        assert r.plans == () and len(r.warnings) == 1, (r.plans, r.warnings)
        assert "not served" in r.warnings[0] and case.name in r.warnings[0], r.warnings
        return
    assert r.warnings == (), r.warnings
    (plan,) = r.plans
    (cert,) = plan.certificates
    assert cert.cert_pem.encode() == value(pki, case, case.cert), f"{case.source}: the wrong certificate"
    assert cert.key_pem.encode() == value(pki, case, case.cert + ".key")
    # The staple travels with the tls key set it sits beside (Istio's ocsp_staple).
    assert (cert.ocsp_staple is not None) == ("tls.ocsp-staple" in case.secrets[case.name]), case.source
    if mode == "SIMPLE":
        assert plan.ca is None
        return
    assert plan.ca.ca_pem.encode() == value(pki, case, case.ca), f"{case.source}: the wrong CA"
    assert (plan.ca.crl_pem.encode() if plan.ca.crl_pem else None) == (pki[case.crl] if case.crl else None)


# -- kimpki check ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["SIMPLE", "MUTUAL"])
def test_kimpki_check_refuses_exactly_what_istio_refuses(kimpki, pki, mode):
    folder = kimpki.cwd / "deploy"
    folder.mkdir()
    (folder / "rules.yaml").write_text(manifests_text(pki, mode, CASES))
    res = kimpki("check", "-f", folder, "--json")
    assert res.code == 1, (res.code, res.err)  # some of Istio's cases are refusals
    report = res.json
    errors = {f["host"] for f in report["findings"] if f["status"] == "error"}
    refused = {host(c) for c in CASES if c.cert is None or (mode == "MUTUAL" and c.ca is None)}
    assert errors == refused, (sorted(errors - refused), sorted(refused - errors))
    if mode == "SIMPLE":
        return
    # And it reads the CA Istio picks: the ca_present finding names its subject.
    ca_found = {f["host"]: f["detail"] for f in report["findings"] if f["check"] == "ca_present" and f["status"] == "ok"}
    for case in MUTUAL_CASES:
        assert f"CN=clients-{case.ca[-1]}.example.com" in ca_found[host(case)], (case.name, ca_found[host(case)])
        for other in case.passed_over:
            assert f"CN=clients-{other[-1]}.example.com" not in ca_found[host(case)], case.name


# -- Envoy, judged by kimpki verify ------------------------------------------------------------------------

MUTUAL_CASES = [c for c in CASES if c.cert is not None and c.ca is not None]


@pytest.fixture(scope="module")
def gateway(pki, tmp_path_factory):
    """`kimpki gateway serve` on every case as a MUTUAL server (real Envoy, file-based SDS)."""
    from types import SimpleNamespace

    base = tmp_path_factory.mktemp("istio-rules-gateway")
    k = Kimpki(base / "home", base)
    folder = base / "deploy"
    folder.mkdir()
    (folder / "rules.yaml").write_text(manifests_text(pki, "MUTUAL", CASES))
    proc = subprocess.Popen([sys.executable, "-m", "kimpki", "gateway", "serve", "-f", folder, "--port", "0"],
                            env=k.env, cwd=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        while port is None:
            line = proc.stdout.readline()
            if not line:
                proc.wait(30)
                pytest.fail(f"gateway serve ended ({proc.returncode}) before it served anything: {proc.stderr.read()}")
            if line.startswith("serving "):
                port = int(line.rsplit(":", 1)[1])
        log = []
        while "ready in" not in (line := proc.stderr.readline()):
            assert line, f"gateway serve ended before it was ready: {''.join(log)}"
            log.append(line)
        yield SimpleNamespace(kimpki=k, port=port)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def verify(gateway, pki, case: Case, client: str) -> dict:
    c = pki[client]
    res = gateway.kimpki("verify", host(case), "--connect", f"127.0.0.1:{gateway.port}",
                         "--cacert", pki["server-ca"].cert, "--cert", c.cert, "--key", c.key, "--mode", "mutual",
                         "--json")
    d = res.json
    assert res.code == (0 if d["ok"] else 1), (res.code, res.err)
    return d


@pytest.mark.parametrize("case", MUTUAL_CASES, ids=[c.name for c in MUTUAL_CASES])
def test_envoy_trusts_the_ca_istio_picks_and_serves_the_leaf_it_picks(gateway, pki, case):
    trusted = case.ca.split("-")[1]  # "ca-a" → "a"
    d = verify(gateway, pki, case, f"client-{trusted}")
    assert d["ok"], d["message"]
    served = int(d["served_chain"][0]["serial"], 16)
    assert served == pki[case.name].serial, f"{case.source}: Envoy serves the wrong certificate"
    other = "b" if trusted == "a" else "a"
    d = verify(gateway, pki, case, f"client-{other}")
    assert d["reason"] == "client_certificate_refused", d
    if case.crl is not None:
        d = verify(gateway, pki, case, f"revoked-{trusted}")
        assert d["reason"] == "client_certificate_revoked", d
    else:
        # Without a CRL the same CA's other client is just as good.
        d = verify(gateway, pki, case, f"revoked-{trusted}")
        assert d["ok"], d["message"]
