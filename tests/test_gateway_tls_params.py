"""Istio's server TLS fields beyond SIMPLE/MUTUAL (issue 15): OPTIONAL_MUTUAL, subjectAltNames,
min/maxProtocolVersion, cipherSuites, ecdhCurves, through ``gateway render`` (the real CLI),
``policies/`` Gateways, ``check`` (KIM0015-KIM0017) and the Envoy configuration ``gateway serve``
builds from them, pinned against Istio's own golden outputs (pilot/pkg/networking/core/
gateway_test.go). What real Envoy and real clients make of them: tests/test_gateway_tls_params_envoy.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from kimpki.istio import contract as c
from kimpki.localgw import envoy_config as ec
from kimpki.localgw.manifests import parse_manifests, resolve
from tests.conftest import assert_one_line_error
from tests.localgw_pki import gateway_yaml, generic_secret_yaml, https_server, make_ca, make_leaf, tls_secret_yaml

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "example.com")
    return {"ca": ca, "kim": make_leaf(d, ca, "kim.example.com")}


def contexts(pki, *servers) -> list[dict]:
    """The DownstreamTlsContext of each server, in order, as ``gateway serve`` gives them to Envoy."""
    kim, ca = pki["kim"], pki["ca"]
    docs = (generic_secret_yaml("mutual", {"key": kim.key, "cert": kim.cert, "cacert": ca.cert})
            + "---\n" + tls_secret_yaml(c.FILE_MOUNTED_CERTS_SECRET, kim) + "---\n"
            + gateway_yaml("gw", list(servers)))
    r = resolve(parse_manifests([("m.yaml", docs)]))
    assert not r.warnings, r.warnings
    (listener,) = ec.listeners(r.plans, {443: 8443}, "127.0.0.1")
    return [fc["transport_socket"]["typed_config"] for fc in listener["filter_chains"]]


FILE_CERT = {"serverCertificate": f"{c.FILE_MOUNTED_CERTS_PATH}/tls.crt",
             "privateKey": f"{c.FILE_MOUNTED_CERTS_PATH}/tls.key"}
SANS = ["subject.name.a.com", "subject.name.b.com"]


def typed(*names) -> list[dict]:
    return [{"san_type": t, "matcher": {"exact": n}} for n in names for t in ("DNS", "URI", "EMAIL", "IP_ADDRESS")]


def test_envoy_tls_context_as_istio_builds_it(pki):
    """Each case is one of Istio's golden DownstreamTlsContexts (gateway_test.go), in Envoy's typed form."""
    optional, mutual, simple_sans, file_simple_sans, params = contexts(
        pki,
        https_server("a.example.com", "a", "OPTIONAL_MUTUAL", "mutual", subjectAltNames=SANS),
        https_server("b.example.com", "b", "MUTUAL", "mutual", verifyCertificateSpki=["c3BraQ=="],
                     verifyCertificateHash=["AB:CD"]),
        https_server("c.example.com", "c", "SIMPLE", "mutual", subjectAltNames=SANS),
        https_server("d.example.com", "d", "SIMPLE", subjectAltNames=SANS, **FILE_CERT),
        https_server("e.example.com", "e", "SIMPLE", "mutual", minProtocolVersion="TLS_AUTO",
                     maxProtocolVersion="TLSV1_2", ecdhCurves=["P-384", "X25519"],
                     cipherSuites=["FOO", "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384", "-ALL"]))
    # OPTIONAL_MUTUAL: the client is validated (combined context, the -cacert secret) but not required.
    assert optional["require_client_certificate"] is False
    combined = optional["common_tls_context"]["combined_validation_context"]
    assert combined["default_validation_context"] == {"match_typed_subject_alt_names": typed(*SANS)}
    assert combined["validation_context_sds_secret_config"]["name"] == "kubernetes://mutual-cacert"
    # MUTUAL: required; certificate pins beside the CA.
    assert mutual["require_client_certificate"] is True
    assert mutual["common_tls_context"]["combined_validation_context"]["default_validation_context"] == {
        "verify_certificate_spki": ["c3BraQ=="], "verify_certificate_hash": ["AB:CD"]}
    # SIMPLE with credentialName and SANs: a validation context of SAN matchers alone (Envoy refuses it).
    assert simple_sans["require_client_certificate"] is False
    assert simple_sans["common_tls_context"]["validation_context"] == {"match_typed_subject_alt_names": typed(*SANS)}
    # SIMPLE file-mounted: SANs ignored (ApplyToCommonTLSContext validates no client).
    assert not {"validation_context", "combined_validation_context"} & set(file_simple_sans["common_tls_context"])
    # tls_params: TLS_AUTO leaves Envoy's default; unknown and repeated cipher suites dropped
    # (FilterCipherSuites), OpenSSL expressions kept; curves as given.
    assert params["common_tls_context"]["tls_params"] == {
        "ecdh_curves": ["P-384", "X25519"], "cipher_suites": ["ECDHE-ECDSA-AES256-GCM-SHA384", "-ALL"],
        "tls_maximum_protocol_version": "TLSv1_2"}
    assert "tls_params" not in optional["common_tls_context"]  # nothing given: Envoy's TLS 1.2 floor


# --------------------------------------------------------------------------- gateway render

def render(kimpki, *args) -> dict:
    out = kimpki.ok("gateway", "render", "--no-virtual-service", "-o", "json", *args).out
    obj = json.loads(out)
    return obj["items"][0] if "items" in obj else obj


def test_render_expresses_every_field_and_validates_it(kimpki):
    gw = render(kimpki, "--host", "kim.example.com", "--credential", "kim-credential", "--mode", "mutual",
                "--host", "www.example.com", "--credential", "www-credential", "--mode", "SIMPLE",
                "--subject-alt-name", "kim-client.example.com,spiffe://example.com/ns/a",
                "--subject-alt-name", "10.0.0.7", "--min-protocol-version", "TLSV1_3",
                "--max-protocol-version", "tlsv1_3", "--cipher-suite", "ECDHE-ECDSA-AES256-GCM-SHA384",
                "--ecdh-curve", "X25519", "--ecdh-curve", "P-256", "--validate")
    mutual, simple = (s["tls"] for s in gw["spec"]["servers"])
    assert mutual == {"mode": "MUTUAL", "credentialName": "kim-credential",
                        "subjectAltNames": ["kim-client.example.com", "spiffe://example.com/ns/a", "10.0.0.7"],
                        "minProtocolVersion": "TLSV1_3", "maxProtocolVersion": "TLSV1_3",
                        "cipherSuites": ["ECDHE-ECDSA-AES256-GCM-SHA384"], "ecdhCurves": ["X25519", "P-256"]}
    assert "subjectAltNames" not in simple and simple["minProtocolVersion"] == "TLSV1_3"
    optional = render(kimpki, "--host", "kim.example.com", "--credential", "kim-credential", "--mode",
                      "optional_mutual")
    assert optional["spec"]["servers"][0]["tls"] == {"mode": "OPTIONAL_MUTUAL", "credentialName": "kim-credential"}
    # File-mounted OPTIONAL_MUTUAL reads its CA file like MUTUAL.
    fm = render(kimpki, "--host", "bookinfo.com", "--file-mounted", "--mode", "OPTIONAL_MUTUAL",
                "--ca-file-name", "example.com.crt")
    assert fm["spec"]["servers"][0]["tls"]["caCertificates"] == f"{c.FILE_MOUNTED_CA_PATH}/example.com.crt"


@pytest.mark.parametrize("args, needle", [
    (["--subject-alt-name", "kim-client.example.com"], "give --mode MUTUAL or --mode OPTIONAL_MUTUAL"),
    (["--min-protocol-version", "TLSV1_3", "--max-protocol-version", "TLSV1_2"],
     "minProtocolVersion TLSV1_3 is above maxProtocolVersion TLSV1_2"),
    (["--cipher-suite", "TLS_AES_128_GCM_SHA256"], "not a cipher suite Istio knows"),
    (["--ecdh-curve", "secp256k1"], "not a curve Istio knows"),
    (["--mode", "MUTUAL", "--subject-alt-name", " , "], "--subject-alt-name must not be empty"),
    (["--mode", "OPTIONAL_MUTUAL", "--subject-alt-name", "a.example.com"],
     "subjectAltNames on an OPTIONAL_MUTUAL server make Envoy require a client certificate: it behaves as MUTUAL"),
])
def test_render_refuses_what_istio_would_drop_or_envoy_reject(kimpki, args, needle):
    res = kimpki("gateway", "render", "--host", "kim.example.com", "--credential", "kim-credential", *args)
    assert_one_line_error(res, 2, needle)
    assert res.out == ""


def test_render_refuses_file_mounted_optional_mutual_without_its_ca_file(kimpki):
    res = kimpki("gateway", "render", "--host", "kim.example.com", "--file-mounted", "--mode", "OPTIONAL_MUTUAL")
    assert_one_line_error(res, 2, "a file-mounted OPTIONAL_MUTUAL server needs the CA file's name")


def test_gateway_apply_refuses_simple_servers_with_subject_alt_names(kimpki, tmp_path):
    gw = tmp_path / "gw.yaml"
    gw.write_text(gateway_yaml("gw", [https_server("kim.example.com", "https", "SIMPLE", "kim-credential",
                                                   subjectAltNames=["a.example.com"])]))
    res = kimpki("gateway", "apply", "-f", gw, "--dry-run")
    assert_one_line_error(res, 2, "subjectAltNames pin client certificates", "SAN-based verification")


# --------------------------------------------------------------------------- policies

@pytest.fixture
def policies(tmp_path) -> Path:
    d = tmp_path / "policies"
    shutil.copytree(REPO / "policies", d, ignore=shutil.ignore_patterns("out"))
    return d


def set_server(policies: Path, index: int, extra: str) -> None:
    """Add fields (YAML lines, 6-space indented) to the index-th server of kim-gateway."""
    p = policies / "gateways.yaml"
    lines = p.read_text().splitlines(keepends=True)
    at = [i for i, line in enumerate(lines) if line.lstrip().startswith("- credential:")][index]
    lines.insert(at + 1, extra)
    p.write_text("".join(lines))


@pytest.mark.parametrize("extra, tls", [
    ("      mode: OPTIONAL_MUTUAL\n      minProtocolVersion: TLSV1_3\n      maxProtocolVersion: TLS_AUTO\n"
     "      cipherSuites: [ECDHE-ECDSA-AES256-GCM-SHA384]\n      ecdhCurves: [X25519]\n",
     {"mode": "OPTIONAL_MUTUAL", "minProtocolVersion": "TLSV1_3", "maxProtocolVersion": "TLS_AUTO",
      "cipherSuites": ["ECDHE-ECDSA-AES256-GCM-SHA384"], "ecdhCurves": ["X25519"]}),
    ("      subjectAltNames: [kim-client.example.com, spiffe://example.com/client]\n",  # the credential's MUTUAL
     {"mode": "MUTUAL", "subjectAltNames": ["kim-client.example.com", "spiffe://example.com/client"]}),
])
def test_policy_gateway_server_fields(kimpki, policies, extra, tls):
    set_server(policies, 1, extra)
    kimpki.ok("apply", "-f", policies)
    docs = list(yaml.safe_load_all((policies / "out" / "kim-gateway.gateway.yaml").read_text()))
    simple, mutual = (s["tls"] for s in docs[0]["spec"]["servers"])
    assert simple == {"mode": "SIMPLE", "credentialName": "kim-credential"}
    assert mutual == {"credentialName": "kim-new-credential", **tls}
    # The credential is the MUTUAL one, CA included: OPTIONAL_MUTUAL needs nothing else.
    secret = yaml.safe_load((policies / "out" / "kim-new-credential.yaml").read_text())
    assert c.GENERIC_CA in secret["data"]


@pytest.mark.parametrize("index, extra, needle", [
    (0, "      mode: OPTIONAL_MUTUAL\n", "an OPTIONAL_MUTUAL server checks client certificates against a CA: "
                                          "credential kim-credential has mode SIMPLE"),
    (1, "      mode: optional\n", "spec.servers[1].mode must be one of SIMPLE, MUTUAL, OPTIONAL_MUTUAL"),
    (1, "      minProtocolVersion: TLSV1_4\n", "spec.servers[1].minProtocolVersion must be one of TLS_AUTO"),
    (0, "      subjectAltNames: [kim-client.example.com]\n", "they need mode MUTUAL or OPTIONAL_MUTUAL"),
    (1, "      minProtocolVersion: TLSV1_3\n      maxProtocolVersion: TLSV1_2\n", "is above maxProtocolVersion"),
    (1, "      cipherSuites: [NOPE]\n", "not a cipher suite Istio knows"),
    (1, "      mode: OPTIONAL_MUTUAL\n      subjectAltNames: [kim-client.example.com]\n", "it behaves as MUTUAL"),
])
def test_policy_gateway_server_field_errors_name_file_and_line(kimpki, policies, index, extra, needle):
    set_server(policies, index, extra)
    res = kimpki("plan", "-f", policies)
    assert_one_line_error(res, 2, needle, "gateways.yaml:")


# --------------------------------------------------------------------------- check

def test_check_findings_for_the_tls_fields(kimpki, pki, tmp_path):
    kim, ca = pki["kim"], pki["ca"]
    (tmp_path / "secrets.yaml").write_text(
        generic_secret_yaml("plain", {"key": kim.key, "cert": kim.cert}) + "---\n"
        + generic_secret_yaml("mutual", {"key": kim.key, "cert": kim.cert, "cacert": ca.cert}) + "---\n"
        + tls_secret_yaml(c.FILE_MOUNTED_CERTS_SECRET, kim))
    (tmp_path / "gw.yaml").write_text(gateway_yaml("gw", [
        https_server("kim.example.com", "no-ca", "OPTIONAL_MUTUAL", "plain"),
        https_server("kim.example.com", "with-ca", "OPTIONAL_MUTUAL", "mutual"),
        https_server("kim.example.com", "optional-pinned", "OPTIONAL_MUTUAL", "mutual",
                     subjectAltNames=["a.example.com"]),
        https_server("kim.example.com", "sans-sds", "SIMPLE", "plain", subjectAltNames=["a.example.com"]),
        https_server("kim.example.com", "sans-file", "SIMPLE", subjectAltNames=["a.example.com"], **FILE_CERT),
        https_server("kim.example.com", "range", "MUTUAL", "mutual", minProtocolVersion="TLSV1_3",
                     maxProtocolVersion="TLSV1_2"),
        https_server("kim.example.com", "mutual-no-ca", "MUTUAL", "plain"),
    ]))
    res = kimpki("check", "-f", tmp_path, "--json", "--warn-days", "1")  # the test leaves live 2 days
    assert res.code == 1, res.err
    found = {(f["server"], f["code"], f["status"], f["reason"]) for f in res.json["findings"] if f["code"]}
    assert found == {
        ("no-ca", "KIM0016", "error", "OptionalMutualWithoutCa"),
        ("sans-sds", "KIM0015", "error", "SubjectAltNamesWithoutClientCheck"),
        ("sans-file", "KIM0015", "warning", "SubjectAltNamesWithoutClientCheck"),
        ("range", "KIM0017", "error", "ProtocolVersionRange"),
        ("optional-pinned", "KIM0018", "warning", "OptionalMutualRequiresCertificate"),
        ("mutual-no-ca", "KIM0003", "error", "MutualWithoutCa"),  # MUTUAL keeps its own code
    }
    details = {f["server"]: f["detail"] for f in res.json["findings"] if f["code"]}
    assert "Envoy rejects" in details["sans-sds"] and "ignores them" in details["sans-file"]
    assert "checks the client certificates presented, so it needs a CA" in details["no-ca"]
    text = kimpki("check", "-f", tmp_path)
    assert "ERROR KIM0016" in text.out and "WARNING KIM0015" in text.out


# --------------------------------------------------------------------------- verify's usage errors

@pytest.mark.parametrize("args, needle", [
    (["kim.example.com", "--tls-version", "1.2", "--min-tls", "1.3"], "--tls-version 1.2 is below --min-tls 1.3"),
    (["--all", "--min-tls", "1.3"], "give no HOST, --ca, --cacert, --client, --cert, --key, --mode, --tls-version"),
    (["--all", "--tls-version", "1.2"], "--min-tls or --key-algorithm with it"),
    (["kim.example.com", "--mode", "optional"], "'optional' is not one of"),
])
def test_verify_tls_options_usage_errors(kimpki, args, needle):
    assert_one_line_error(kimpki("verify", *args, "--connect", "127.0.0.1:1"), 2, needle)


def test_verify_takes_istios_spelling_of_the_mode(kimpki):
    res = kimpki("verify", "kim.example.com", "--mode", "OPTIONAL_MUTUAL", "--connect", "127.0.0.1:1", "--json")
    assert res.code == 1 and res.json["mode"] == "optional-mutual" and res.json["reason"] == "connection_refused"
