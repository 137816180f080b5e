"""``gateway render --json`` lists a server's further tls fields; ``check`` warns about an
``ecdhCurves`` name Envoy does not know (KIM0022), with the list of names proved against the
Envoy kimpki runs (``envoy --mode validate`` builds each TLS context)."""

from __future__ import annotations

import subprocess

import pytest

from kimpki.istio.tlsparams import ECDH_CURVES, ENVOY_ECDH_CURVES
from kimpki.localgw.runner import find_envoy
from tests.localgw_pki import gateway_yaml, generic_secret_yaml, https_server, make_ca, make_leaf


def test_render_json_lists_the_tls_fields(kimpki):
    d = kimpki.json("gateway", "render", "--name", "pinned", "--no-virtual-service",
                    "--host", "a.example.com", "--credential", "a-credential,a-credential-rsa", "--mode", "MUTUAL",
                    "--ca-credential", "configmap://istio-system/a-clients", "--subject-alt-name", "alice.example.com",
                    "--min-protocol-version", "TLSV1_2", "--max-protocol-version", "TLSV1_3",
                    "--cipher-suite", "ECDHE-ECDSA-AES256-GCM-SHA384", "--ecdh-curve", "X25519")
    assert d["servers"] == [{
        "hosts": ["a.example.com"], "port": "https", "mode": "MUTUAL", "credential": None,
        "credential_names": ["a-credential", "a-credential-rsa"],
        "ca_cert_credential_name": "configmap://istio-system/a-clients",
        "subject_alt_names": ["alice.example.com"], "min_protocol_version": "TLSV1_2",
        "max_protocol_version": "TLSV1_3", "cipher_suites": ["ECDHE-ECDSA-AES256-GCM-SHA384"],
        "ecdh_curves": ["X25519"]}]
    d = kimpki.json("gateway", "render", "--host", "b.example.com", "--credential", "b-credential",
                    "--mode", "OPTIONAL_MUTUAL", "--no-virtual-service")
    assert d["servers"] == [{"hosts": ["b.example.com"], "port": "https", "mode": "OPTIONAL_MUTUAL",
                             "credential": "b-credential"}]


@pytest.fixture
def gateway_folder(tmp_path):
    ca = make_ca(tmp_path, "example.com")
    kim = make_leaf(tmp_path, ca, "kim.example.com")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "secrets.yaml").write_text(generic_secret_yaml("plain", {"key": kim.key, "cert": kim.cert}))
    return folder


def test_check_warns_on_an_ecdh_curve_envoy_does_not_know(kimpki, gateway_folder):
    # P-224 is on Istio's list, so render writes it; Envoy 1.40 refuses it.
    (gateway_folder / "rendered.yaml").write_text(kimpki.ok(
        "gateway", "render", "--name", "old-curve", "--host", "kim.example.com", "--credential", "plain",
        "--ecdh-curve", "P-224", "--ecdh-curve", "X25519", "--no-virtual-service").out)
    (gateway_folder / "gw.yaml").write_text(gateway_yaml("gw", [
        https_server("kim.example.com", "lower-case", "SIMPLE", "plain", number=8443, ecdhCurves=["p-256"]),
        https_server("kim.example.com", "alias", "SIMPLE", "plain", number=9443, ecdhCurves=["prime256v1", "x25519"]),
    ]))
    res = kimpki("check", "-f", gateway_folder, "--json", "--warn-days", "1")
    assert res.code == 0, res.err  # warnings only
    found = {(f["gateway"].split("/")[-1], f["server"], f["code"], f["status"], f["reason"])
             for f in res.json["findings"] if f["code"]}
    assert found == {("old-curve", "https", "KIM0022", "warning", "EcdhCurveUnknownToEnvoy"),
                     ("gw", "lower-case", "KIM0022", "warning", "EcdhCurveUnknownToEnvoy")}, res.json["findings"]
    details = {f["server"]: f["detail"] for f in res.json["findings"] if f["code"]}
    assert details["https"].startswith("ecdhCurves P-224: not a curve Envoy knows")
    assert "WARNING KIM0022" in kimpki("check", "-f", gateway_folder).out


def _envoy_takes(envoy: str, tmp_path, leaf, curve: str) -> bool:
    cfg = tmp_path / f"envoy-{curve}.yaml"
    cfg.write_text(f"""\
static_resources:
  listeners:
  - name: probe
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: probe
          cluster: probe
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_params: {{ecdh_curves: ["{curve}"]}}
            tls_certificates:
            - certificate_chain: {{filename: "{leaf.cert}"}}
              private_key: {{filename: "{leaf.key}"}}
  clusters:
  - name: probe
    load_assignment:
      cluster_name: probe
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 9}}}}}}}}]}}]
""")
    res = subprocess.run([envoy, "--mode", "validate", "-c", str(cfg), "-l", "critical"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 or "Failed to initialize ECDH curves" in res.stdout + res.stderr, res.stderr
    return res.returncode == 0


def test_the_curve_table_is_what_envoy_takes(tmp_path):
    """Every name of ENVOY_ECDH_CURVES builds a TLS context; the names of Istio's list outside it do not."""
    envoy = find_envoy()
    leaf = make_leaf(tmp_path, make_ca(tmp_path, "ca.example"), "probe.example")
    for curve in sorted(set(ENVOY_ECDH_CURVES) | set(ECDH_CURVES) | {"p-256"}):
        assert _envoy_takes(envoy, tmp_path, leaf, curve) == (curve in ENVOY_ECDH_CURVES), curve
