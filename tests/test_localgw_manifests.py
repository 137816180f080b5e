"""Istio's credential rules as the local gateway applies them: pure resolution, no Envoy."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from kimpki.errors import UsageError
from kimpki.istio import contract as c
from kimpki.localgw import envoy_config as ec
from kimpki.localgw.manifests import DEFAULT_MOUNTS, load_manifests, mount_for, parse_manifests, resolve
from tests.localgw_pki import (b64, deployment_with_secret_volume, gateway_yaml, generic_secret_yaml, https_server,
                               make_ca, make_leaf, tls_secret_yaml)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "example.com")
    other_ca = make_ca(d, "other.example.com")
    client_ca = make_ca(d, "clients.example.com")
    return {
        "ca": ca, "other_ca": other_ca, "client_ca": client_ca,
        "kim": make_leaf(d, ca, "kim.example.com"),
        "kim2": make_leaf(d, ca, "kim.example.com", tag="-2"),
        "bookinfo": make_leaf(d, ca, "bookinfo.com"),
    }


def plans_of(*docs: str):
    r = resolve(parse_manifests([("test.yaml", "---\n".join(docs))]))
    return {p.hosts[0]: p for p in r.plans}, list(r.warnings)


def gw(*servers, name="kim-gateway"):
    return gateway_yaml(name, list(servers))


def cert_of(plan) -> str:
    return plan.certificates[0].cert_pem


# -- kubectl's Secret format -----------------------------------------------------------------

def test_secret_writers_match_kubectl_dry_run_output(pki, tmp_path):
    kim, ca = pki["kim"], pki["ca"]
    generic = subprocess.run(
        ["kubectl", "create", "secret", "generic", "kim-credential", f"--from-file=key={kim.key}",
         f"--from-file=cert={kim.cert}", f"--from-file=cacert={ca.cert}", "--dry-run=client", "-o", "yaml"],
        capture_output=True, text=True, check=True).stdout
    assert generic == generic_secret_yaml("kim-credential", {"key": kim.key, "cert": kim.cert, "cacert": ca.cert})
    tls = subprocess.run(
        ["kubectl", "create", "secret", "tls", "kim-tls", f"--cert={kim.cert}", f"--key={kim.key}",
         "-n", "istio-system", "--dry-run=client", "-o", "yaml"],
        capture_output=True, text=True, check=True).stdout
    assert tls == tls_secret_yaml("kim-tls", kim, namespace="istio-system")


# -- SDS key sets ----------------------------------------------------------------------------

def test_generic_keys_win_over_tls_keys_when_both_present(pki):
    kim, kim2 = pki["kim"], pki["kim2"]
    secret = generic_secret_yaml("both", {c.GENERIC_KEY: kim.key, c.GENERIC_CERT: kim.cert,
                                          c.TLS_KEY: kim2.key, c.TLS_CERT: kim2.cert})
    plans, warnings = plans_of(secret, gw(https_server("kim.example.com", "https", credential="both")))
    assert warnings == []
    p = plans["kim.example.com"]
    assert cert_of(p) == kim.cert.read_text()
    assert p.certificates[0].resource_name == "kubernetes://both"
    assert "(cert, key)" in p.certificates[0].origin


def test_tls_keys_used_when_generic_set_is_incomplete_and_type_is_ignored(pki):
    kim, kim2 = pki["kim"], pki["kim2"]
    # A generic Secret (no type) holding a TLS key set plus a lone "cert": the TLS set is used.
    secret = generic_secret_yaml("tlsish", {c.GENERIC_CERT: kim.cert, c.TLS_KEY: kim2.key, c.TLS_CERT: kim2.cert})
    # A kubernetes.io/tls Secret holding generic keys: the type is never checked.
    typed = tls_secret_yaml("typed", kim).replace("tls.crt:", "cert:").replace("tls.key:", "key:")
    plans, warnings = plans_of(secret, typed,
                               gw(https_server("a.example.com", "https-a", credential="tlsish"),
                                  https_server("b.example.com", "https-b", credential="typed")))
    assert warnings == []
    assert cert_of(plans["a.example.com"]) == kim2.cert.read_text()
    assert cert_of(plans["b.example.com"]) == kim.cert.read_text()


def test_missing_secret_missing_keys_and_bad_pem_leave_the_server_unserved_with_a_warning(pki):
    kim, kim2 = pki["kim"], pki["kim2"]
    no_keys = generic_secret_yaml("no-keys", {"tls.cert": kim.cert})
    mismatch = generic_secret_yaml("mismatch", {"cert": kim.cert, "key": kim2.key})
    bad = "apiVersion: v1\nkind: Secret\nmetadata: {name: bad}\nstringData: {cert: hello, key: world}\n"
    good = tls_secret_yaml("good", kim)
    plans, warnings = plans_of(no_keys, mismatch, bad, good, gw(
        https_server("missing.example.com", "https-missing", credential="nope"),
        https_server("nokeys.example.com", "https-nokeys", credential="no-keys"),
        https_server("mismatch.example.com", "https-mismatch", credential="mismatch"),
        https_server("bad.example.com", "https-bad", credential="bad"),
        https_server("kim.example.com", "https", credential="good")))
    assert list(plans) == ["kim.example.com"]
    assert len(warnings) == 4
    missing, nokeys, mism, badpem = warnings
    assert missing.startswith("server missing.example.com (Gateway istio-system/kim-gateway, port 443 https-missing)")
    assert missing.endswith("not served: Secret nope not found")
    assert "nokeys.example.com" in nokeys and "neither keys cert and key nor tls.crt and tls.key" in nokeys
    assert "(it has: tls.cert)" in nokeys
    assert "mismatch.example.com" in mism and "does not match the certificate" in mism
    assert "bad.example.com" in badpem and "holds no PEM certificate" in badpem


# -- MUTUAL: where the CA comes from -----------------------------------------------------------

def test_cacert_secret_wins_over_keys_in_the_credential(pki):
    kim, ca, client_ca = pki["kim"], pki["ca"], pki["client_ca"]
    cred = generic_secret_yaml("kim-credential", {"key": kim.key, "cert": kim.cert, "cacert": ca.cert})
    cacert = generic_secret_yaml(c.cacert_secret_name("kim-credential"), {"cacert": client_ca.cert})
    plans, warnings = plans_of(cred, cacert, gw(https_server("kim.example.com", "https", "MUTUAL", "kim-credential")))
    assert warnings == []
    p = plans["kim.example.com"]
    assert p.ca.ca_pem == client_ca.cert.read_text()
    assert p.ca.resource_name == "kubernetes://kim-credential-cacert"
    assert p.ca.origin == "Secret kim-credential-cacert (cacert)"


def test_cacert_secret_without_ca_keys_does_not_fall_back(pki):
    kim, ca = pki["kim"], pki["ca"]
    cred = generic_secret_yaml("kim-credential", {"key": kim.key, "cert": kim.cert, "cacert": ca.cert})
    empty = generic_secret_yaml("kim-credential-cacert", {"ca.pem": ca.cert})
    plans, warnings = plans_of(cred, empty, gw(https_server("kim.example.com", "https", "MUTUAL", "kim-credential")))
    assert plans == {}
    assert len(warnings) == 1
    assert "kim.example.com" in warnings[0]
    assert "Secret kim-credential-cacert exists but has neither cacert nor ca.crt" in warnings[0]
    assert "does not fall back" in warnings[0]


def test_cacert_key_preferred_over_ca_crt_and_ca_crt_used_alone(pki):
    kim, ca, other = pki["kim"], pki["ca"], pki["other_ca"]
    both = generic_secret_yaml("both", {"key": kim.key, "cert": kim.cert, "cacert": ca.cert, "ca.crt": other.cert})
    only = tls_secret_yaml("only", kim).replace("kind: Secret", f"  ca.crt: {b64(other.cert)}\nkind: Secret")
    plans, warnings = plans_of(both, only, gw(
        https_server("a.example.com", "https-a", "MUTUAL", "both"),
        https_server("b.example.com", "https-b", "OPTIONAL_MUTUAL", "only")))
    assert warnings == []
    assert plans["a.example.com"].ca.ca_pem == ca.cert.read_text()
    assert plans["b.example.com"].ca.ca_pem == other.cert.read_text()
    assert plans["b.example.com"].ca.origin == "Secret only (ca.crt)"


def test_mutual_without_any_ca_is_unserved_and_simple_ignores_ca(pki):
    kim = pki["kim"]
    cred = tls_secret_yaml("kim-credential", kim)
    broken_ca = generic_secret_yaml("kim-credential-cacert", {"other": kim.key})
    plans, warnings = plans_of(cred, gw(https_server("kim.example.com", "https", "MUTUAL", "kim-credential")))
    assert plans == {} and "needs a CA" in warnings[0] and "no Secret kim-credential-cacert" in warnings[0]
    plans, warnings = plans_of(cred, broken_ca, gw(https_server("kim.example.com", "https", "SIMPLE", "kim-credential")))
    assert warnings == [] and plans["kim.example.com"].ca is None



# -- file-mounted servers --------------------------------------------------------------------

def test_default_mount_paths_map_to_the_legacy_secrets():
    assert mount_for("/etc/istio/ingressgateway-certs/tls.crt", DEFAULT_MOUNTS) == (c.FILE_MOUNTED_CERTS_SECRET, "tls.crt")
    assert mount_for(f"{c.FILE_MOUNTED_CA_PATH}/ca-chain.cert.pem", DEFAULT_MOUNTS) == (
        c.FILE_MOUNTED_CA_SECRET, "ca-chain.cert.pem")
    with pytest.raises(LookupError, match="not in a mounted Secret volume"):
        mount_for("/etc/somewhere/tls.crt", DEFAULT_MOUNTS)


def test_file_mounted_legacy_secrets_simple_and_mutual(pki):
    kim, ca = pki["kim"], pki["ca"]
    certs = tls_secret_yaml(c.FILE_MOUNTED_CERTS_SECRET, kim, namespace="istio-system")
    cas = generic_secret_yaml(c.FILE_MOUNTED_CA_SECRET, {"example.com.crt": ca.cert}, namespace="istio-system")
    server = https_server("kim.example.com", "https", "MUTUAL",
                          serverCertificate=f"{c.FILE_MOUNTED_CERTS_PATH}/tls.crt",
                          privateKey=f"{c.FILE_MOUNTED_CERTS_PATH}/tls.key",
                          caCertificates=f"{c.FILE_MOUNTED_CA_PATH}/example.com.crt")
    plans, warnings = plans_of(certs, cas, gw(server))
    assert warnings == []
    p = plans["kim.example.com"]
    assert cert_of(p) == kim.cert.read_text()
    assert p.certificates[0].resource_name == (f"file-cert:{c.FILE_MOUNTED_CERTS_PATH}/tls.crt"
                                               f"~{c.FILE_MOUNTED_CERTS_PATH}/tls.key")
    assert p.ca.ca_pem == ca.cert.read_text() and p.ca.resource_name.startswith("file-root:")
    assert p.credential == f"Secret {c.FILE_MOUNTED_CERTS_SECRET} mounted at {c.FILE_MOUNTED_CERTS_PATH}"


def test_file_mounted_through_a_deployment_volume(pki):
    book = pki["bookinfo"]
    mount = "/etc/istio/ingressgateway-bookinfo-certs"
    secret = tls_secret_yaml("istio-ingressgateway-bookinfo-certs", book)
    deploy = deployment_with_secret_volume("istio-ingressgateway-bookinfo-certs", mount, "bookinfo-certs")
    server = https_server("bookinfo.com", "https-bookinfo", serverCertificate=f"{mount}/tls.crt",
                          privateKey=f"{mount}/tls.key")
    plans, warnings = plans_of(secret, deploy, gw(server, name="bookinfo-gateway"))
    assert warnings == []
    assert cert_of(plans["bookinfo.com"]) == book.cert.read_text()
    # Without the Deployment, the path is under no mount: unserved, with the reason.
    plans, warnings = plans_of(secret, gw(server, name="bookinfo-gateway"))
    assert plans == {}
    assert "bookinfo.com" in warnings[0] and f"{mount}/tls.crt is not in a mounted Secret volume" in warnings[0]


def test_deployment_patch_items_projection_and_missing_key(pki):
    book = pki["bookinfo"]
    patch = yaml.safe_dump({"spec": {"template": {"spec": {
        "containers": [{"name": "istio-proxy", "volumeMounts": [{"name": "v", "mountPath": "/certs/"}]}],
        "volumes": [{"name": "v", "secret": {"secretName": "book", "items": [
            {"key": "tls.crt", "path": "server.pem"}, {"key": "tls.key", "path": "server-key.pem"}]}}]}}}})
    secret = tls_secret_yaml("book", book)
    ok = https_server("bookinfo.com", "https-a", serverCertificate="/certs/server.pem", privateKey="/certs/server-key.pem")
    unprojected = https_server("b.bookinfo.com", "https-b", serverCertificate="/certs/tls.crt",
                               privateKey="/certs/server-key.pem")
    plans, warnings = plans_of(secret, patch, gw(ok, unprojected))
    assert list(plans) == ["bookinfo.com"]
    assert "does not project a file tls.crt" in warnings[0]
    no_key = https_server("bookinfo.com", "https", serverCertificate=f"{c.FILE_MOUNTED_CERTS_PATH}/tls.crt",
                          privateKey=f"{c.FILE_MOUNTED_CERTS_PATH}/key.pem")
    plans, warnings = plans_of(tls_secret_yaml(c.FILE_MOUNTED_CERTS_SECRET, book), gw(no_key))
    assert plans == {} and "has no key key.pem (it has: tls.crt, tls.key)" in warnings[0]


# -- hosts, ports, documents -------------------------------------------------------------------

def test_hosts_wildcards_namespaces_and_duplicates(pki):
    cred = tls_secret_yaml("cred", pki["kim"])
    gw1 = gw({"port": {"number": 443, "name": "https", "protocol": "HTTPS"},
              "tls": {"mode": "SIMPLE", "credentialName": "cred"},
              "hosts": ["istio-system/kim.example.com", "./*.apps.example.com"]},
             {"port": {"number": 443, "name": "https-any", "protocol": "HTTPS"},
              "tls": {"mode": "SIMPLE", "credentialName": "cred"}, "hosts": ["*"]})
    gw2 = gw(https_server("kim.example.com", "https-dup", credential="cred"), name="second")
    r = resolve(parse_manifests([("a.yaml", cred + "---\n" + gw1 + "---\n" + gw2)]))
    first, anyhost = r.plans
    assert first.server_names == ("kim.example.com", "*.apps.example.com")
    assert anyhost.server_names == () and anyhost.hosts == ("*",)
    assert len(r.warnings) == 1 and "Gateway istio-system/second" in r.warnings[0]
    assert "already taken by server kim.example.com, *.apps.example.com" in r.warnings[0]


def test_unsupported_modes_and_protocols_are_reported(pki):
    cred = tls_secret_yaml("cred", pki["kim"])
    doc = gw({"port": {"number": 443, "name": "https", "protocol": "HTTPS"},
              "tls": {"credentialName": "cred"}, "hosts": ["a.example.com"]},
             {"port": {"number": 15443, "name": "tls", "protocol": "TLS"},
              "tls": {"mode": "AUTO_PASSTHROUGH"}, "hosts": ["*.local"]},
             {"port": {"number": 31400, "name": "tcp", "protocol": "TCP"}, "hosts": ["*"]},
             {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"],
              "tls": {"httpsRedirect": True}})
    plans, warnings = plans_of(cred, doc)
    assert [p.mode for p in plans.values()] == ["PLAIN"] and plans["*"].https_redirect
    assert "tls.mode PASSTHROUGH (the default when tls.mode is omitted) is not supported" in warnings[0]
    assert "AUTO_PASSTHROUGH" in warnings[1] and "protocol TCP" in warnings[2]


def test_loading_folders_lists_and_other_kinds(pki, tmp_path):
    (tmp_path / "secret.yaml").write_text(tls_secret_yaml("cred", pki["kim"]))
    (tmp_path / "gw.yml").write_text(gw(https_server("kim.example.com", "https", credential="cred")) +
                                     "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n"
                                     "metadata: {name: vs}\nspec: {hosts: ['*']}\n")
    (tmp_path / "notes.txt").write_text("not: [yaml")
    lst = {"apiVersion": "v1", "kind": "List", "items": [yaml.safe_load(tls_secret_yaml("listed", pki["kim"]))]}
    (tmp_path / "list.json").write_text(json.dumps(lst))
    m = load_manifests([tmp_path])
    assert sorted(s.name for s in m.secrets) == ["cred", "listed"]
    assert [g.name for g in m.gateways] == ["kim-gateway"] and m.ignored == ("VirtualService/vs",)
    assert [p.hosts for p in resolve(m).plans] == [("kim.example.com",)]
    (tmp_path / "broken.yaml").write_text("kind: [unclosed")
    with pytest.raises(UsageError, match=r"broken.yaml:1: not valid YAML: "):
        load_manifests([tmp_path])
    with pytest.raises(UsageError, match="no such manifest file or folder"):
        load_manifests([tmp_path / "nope"])


# -- Envoy configuration (pure) -----------------------------------------------------------------

def test_envoy_config_for_mutual_and_simple_servers(pki):
    kim, ca = pki["kim"], pki["ca"]
    cred = generic_secret_yaml("kim-credential", {"key": kim.key, "cert": kim.cert, "cacert": ca.cert})
    r = resolve(parse_manifests([("x", cred + "---\n" + gw(
        https_server("kim.example.com", "https", "SIMPLE", "kim-credential"),
        https_server("*.example.com", "https-mtls", "MUTUAL", "kim-credential", minProtocolVersion="TLSV1_3")))]))
    secrets = ec.secret_resources(r.plans)
    assert set(secrets) == {"kubernetes://kim-credential", "kubernetes://kim-credential-cacert"}
    assert secrets["kubernetes://kim-credential"]["@type"] == ec.SECRET_TYPE
    assert secrets["kubernetes://kim-credential"]["tls_certificate"]["private_key"]["inline_string"] == kim.key.read_text()
    assert secrets["kubernetes://kim-credential-cacert"]["validation_context"]["trusted_ca"]["inline_string"] == ca.cert.read_text()

    ports, warnings = ec.map_ports([443, 80, 8443], {443: 9443})
    assert ports == {443: 9443, 8443: 8443} and "Gateway port 80 not served" in warnings[0]

    (listener,) = ec.listeners(r.plans, {443: 9443}, "127.0.0.1")
    assert listener["name"] == "gateway_443"
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9443}
    assert listener["listener_filters"][0]["name"] == "envoy.filters.listener.tls_inspector"
    simple, mutual = listener["filter_chains"]
    assert simple["filter_chain_match"] == {"server_names": ["kim.example.com"]}
    assert mutual["filter_chain_match"] == {"server_names": ["*.example.com"]}
    sctx = simple["transport_socket"]["typed_config"]
    mctx = mutual["transport_socket"]["typed_config"]
    assert sctx["require_client_certificate"] is False and mctx["require_client_certificate"] is True
    assert sctx["common_tls_context"]["alpn_protocols"] == ["h2", "http/1.1"]
    combined = mctx["common_tls_context"]["combined_validation_context"]  # as Istio builds it, pins or not
    assert combined["default_validation_context"] == {}
    sds = combined["validation_context_sds_secret_config"]
    assert sds["name"] == "kubernetes://kim-credential-cacert"
    assert sds["sds_config"] == {"ads": {}, "resource_api_version": "V3"}  # the SDS server, not a file
    assert "PRIVATE KEY" not in json.dumps(listener)
    assert mctx["common_tls_context"]["tls_params"] == {"tls_minimum_protocol_version": "TLSv1_3"}
    hcm = simple["filters"][0]["typed_config"]
    assert hcm["codec_type"] == "AUTO"
    vh = hcm["route_config"]["virtual_hosts"][0]
    assert vh["response_headers_to_add"][0]["header"] == {"key": "x-kimpki-gateway", "value": "kim-gateway/https"}

    boot = ec.bootstrap(ec.WatchedFile("/w/lds/lds.json", "/w/lds"), "/w/sds.sock")
    assert boot["node"]["id"] and boot["node"]["cluster"]
    (sds_cluster,) = boot["static_resources"]["clusters"]
    assert boot["dynamic_resources"]["ads_config"]["grpc_services"] == [
        {"envoy_grpc": {"cluster_name": sds_cluster["name"]}}]
    endpoint = sds_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"] == {"pipe": {"path": "/w/sds.sock"}}
    assert boot["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
