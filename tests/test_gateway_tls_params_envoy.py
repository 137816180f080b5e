"""Istio's server TLS fields on a real Envoy (``kimpki gateway serve``), proved by ``kimpki verify``
and cross-checked with three other TLS stacks: ``openssl s_client``/curl, Node's ``tls`` module and
the JDK (tests/peers/).

The gateway, all from ``kimpki gateway render`` (one Gateway each, merged on port 443 like Istio),
with one server certificate for every host and credential ``tls-credential`` (``--mutual``):

    pinned.example.com    MUTUAL           subjectAltNames [alice.example.com]
    optional.example.com  OPTIONAL_MUTUAL  minProtocolVersion TLSV1_3
    legacy.example.com    SIMPLE           maxProtocolVersion TLSV1_2, cipherSuites
                                           [ECDHE-ECDSA-AES256-GCM-SHA384], ecdhCurves [P-384]
    plain.example.com     SIMPLE           (Istio's defaults: TLS 1.2 floor)
    empty.example.com     SIMPLE           minProtocolVersion TLSV1_3 > maxProtocolVersion TLSV1_2
                                           (hand-written: render refuses it; check says KIM0017)
    optpinned.example.com OPTIONAL_MUTUAL  subjectAltNames [alice.example.com] (hand-written: render
                                           refuses it, as Envoy then requires a certificate; KIM0018)

Clients: alice.example.com and bob.example.com from CA example.com, mallory.example.com from
another CA.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import Kimpki, assert_one_line_error
from tests.localgw_pki import gateway_yaml, https_server
from tests.test_verify_envoy import ServedGateway
from tests.tlspeers import assert_curl_refused

PEERS = Path(__file__).resolve().parent / "peers"
HOSTS = ("pinned.example.com", "optional.example.com", "legacy.example.com", "plain.example.com",
         "empty.example.com", "optpinned.example.com")


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    root = tmp_path_factory.mktemp("tls-params")
    (root / "work").mkdir()
    k = Kimpki(root / "home", root / "work")
    ca = k.json("ca", "init", "example.com")
    k.ok("ca", "init", "other.test")
    k.ok("issue", *HOSTS, "--name", "tls-server")
    clients = {name: k.json("issue", "--client", f"{name}.example.com", "--ca", ca_name)
               for name, ca_name in (("alice", "example.com"), ("bob", "example.com"), ("mallory", "other.test"))}
    folder = root / "manifests"
    folder.mkdir()
    (folder / "tls-credential.yaml").write_text(
        k.ok("secret", "create", "tls-credential", "--cert", "tls-server", "--mutual", "--dry-run", "-o", "yaml").out)

    def render(name: str, host: str, *args: str) -> None:
        (folder / f"{name}.yaml").write_text(k.ok(
            "gateway", "render", "--name", name, "--host", host, "--credential", "tls-credential",
            "--no-virtual-service", *args).out)

    render("pinned", "pinned.example.com", "--mode", "MUTUAL", "--subject-alt-name", "alice.example.com")
    render("optional", "optional.example.com", "--mode", "OPTIONAL_MUTUAL", "--min-protocol-version", "TLSV1_3")
    render("legacy", "legacy.example.com", "--max-protocol-version", "TLSV1_2",
           "--cipher-suite", "ECDHE-ECDSA-AES256-GCM-SHA384", "--ecdh-curve", "P-384")
    render("plain", "plain.example.com")
    (folder / "empty.yaml").write_text(gateway_yaml("empty", [https_server(
        "empty.example.com", "https-empty", "SIMPLE", "tls-credential", minProtocolVersion="TLSV1_3",
        maxProtocolVersion="TLSV1_2")]))
    (folder / "optpinned.yaml").write_text(gateway_yaml("optpinned", [https_server(
        "optpinned.example.com", "https-optpinned", "OPTIONAL_MUTUAL", "tls-credential",
        subjectAltNames=["alice.example.com"])]))

    served = ServedGateway(k, folder, len(HOSTS))
    try:
        assert sorted(line.split(" (")[0] for line in served.stdout) == sorted(f"serving {h}" for h in HOSTS)
        yield SimpleNamespace(k=k, port=served.port, folder=folder, ca=ca, clients=clients)
    finally:
        code = served.stop()
    assert code == 0, "".join(served.stderr)


def verify(gw, host: str, *args: str, code: int, reason: str | None) -> dict:
    res = gw.k("verify", host, "--connect", f"127.0.0.1:{gw.port}", "--ca", "example.com", *args, "--json")
    assert res.code == code, (res.code, res.err, res.out)
    d = res.json
    assert d["reason"] == reason, d["message"]
    if code:
        assert_one_line_error(res, code, d["message"])
    return d


def client(gw, name: str) -> list[str]:
    return ["--cert", gw.clients[name]["cert"], "--key", gw.clients[name]["key"]]


def check(d: dict, name: str) -> dict:
    return next(c for c in d["checks"] if c["name"] == name)


def node(gw, host: str, *args: str) -> dict:
    out = subprocess.run(["node", str(PEERS / "tls_client.js"), "127.0.0.1", str(gw.port), host, gw.ca["cert"],
                          *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def node_client(gw, name: str) -> list[str]:
    return ["--cert", gw.clients[name]["cert"], "--key", gw.clients[name]["key"]]


def java(gw, host: str, *args: str) -> str:
    out = subprocess.run(["java", str(PEERS / "TlsClient.java"), "127.0.0.1", str(gw.port), host, gw.ca["cert"],
                          *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def java_client(gw, name: str) -> list[str]:
    return [gw.clients[name]["cert"], gw.clients[name]["key"]]


def curl(gw, host: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "10", "--resolve", f"{host}:{gw.port}:127.0.0.1",
                           "--cacert", gw.ca["cert"], *extra, f"https://{host}:{gw.port}/health"],
                          capture_output=True, text=True, timeout=30)


# --------------------------------------------------------------------------- OPTIONAL_MUTUAL

def test_optional_mutual_admits_without_a_certificate_and_checks_one_presented(gw):
    anonymous = verify(gw, "optional.example.com", "--mode", "optional-mutual", code=0, reason=None)
    assert [c["name"] for c in anonymous["checks"]][4:6] == ["accepted", "client_certificate_optional"]
    assert "asked for a client certificate and admitted a client without one" in \
        check(anonymous, "client_certificate_optional")["detail"]
    good = verify(gw, "optional.example.com", "--mode", "OPTIONAL-MUTUAL", *client(gw, "alice"), code=0, reason=None)
    assert check(good, "client_certificate_accepted")["ok"] and check(good, "client_certificate_optional")["ok"]
    verify(gw, "optional.example.com", "--mode", "optional-mutual", *client(gw, "mallory"),
           code=1, reason="client_certificate_refused")
    # What tells OPTIONAL_MUTUAL from its neighbours: MUTUAL demands, SIMPLE never asks.
    verify(gw, "optional.example.com", "--mode", "mutual", *client(gw, "alice"),
           code=1, reason="client_certificate_not_demanded")
    d = verify(gw, "pinned.example.com", "--mode", "optional-mutual", *client(gw, "alice"),
               code=1, reason="client_certificate_refused")
    assert "demands one (MUTUAL), not OPTIONAL_MUTUAL" in d["message"]
    verify(gw, "plain.example.com", "--mode", "optional-mutual", code=1, reason="client_certificate_not_requested")
    # OPTIONAL_MUTUAL with subjectAltNames, as Istio maps it: Envoy requires a certificate (KIM0018).
    verify(gw, "optpinned.example.com", "--mode", "mutual", *client(gw, "alice"), code=0, reason=None)
    d = verify(gw, "optpinned.example.com", "--mode", "optional-mutual", code=1, reason="client_certificate_refused")
    assert "certificate required alert" in d["message"]
    # curl agrees: in without a certificate, in with a good one, out with a foreign one.
    assert curl(gw, "optional.example.com").stdout == '{"status":"UP"}'
    assert curl(gw, "optional.example.com", "--cert", gw.clients["alice"]["cert"],
                "--key", gw.clients["alice"]["key"]).stdout == '{"status":"UP"}'
    assert_curl_refused(curl(gw, "optional.example.com", "--cert", gw.clients["mallory"]["cert"],
                             "--key", gw.clients["mallory"]["key"]), "unknown ca")


# --------------------------------------------------------------------------- subjectAltNames

def test_pinned_subject_alt_names_refuse_a_same_ca_client_with_another_san(gw):
    verify(gw, "pinned.example.com", *client(gw, "alice"), code=0, reason=None)
    for version in ([], ["--tls-version", "1.2"]):  # refused after the handshake (1.3) and inside it (1.2)
        d = verify(gw, "pinned.example.com", *client(gw, "bob"), *version, code=1,
                   reason="client_identity_not_allowed")
        assert "certificate unknown alert" in d["message"] and "DNS:bob.example.com" in d["message"]
    # Another CA altogether keeps its own reason.
    verify(gw, "pinned.example.com", *client(gw, "mallory"), code=1, reason="client_certificate_refused")
    # Node's TLS stack: the same verdicts, the same alerts.
    assert node(gw, "pinned.example.com", *node_client(gw, "alice")) == {"ok": True, "status": 200,
                                                                         "version": "TLSv1.3"}
    assert node(gw, "pinned.example.com", *node_client(gw, "bob")) == {
        "ok": False, "error": "ERR_SSL_SSLV3_ALERT_CERTIFICATE_UNKNOWN"}
    # The JDK's.
    assert java(gw, "pinned.example.com", *java_client(gw, "alice")) == "ok 200 TLSv1.3"
    assert java(gw, "pinned.example.com", *java_client(gw, "bob")) == \
        "refused SSLHandshakeException: Received fatal alert: certificate_unknown"


# --------------------------------------------------------------------------- protocol versions

def test_protocol_floor_tls13_refuses_a_tls12_only_client(gw):
    d = verify(gw, "optional.example.com", "--mode", "optional-mutual", "--min-tls", "1.3", code=0, reason=None)
    assert d["tls_version"] == "TLSv1.3"
    assert check(d, "tls_floor")["detail"].startswith("a client offering only TLS 1.2 was refused (protocol version")
    d = verify(gw, "optional.example.com", "--tls-version", "1.2", code=1, reason="tls_version_refused")
    assert "kimpki offered TLS 1.2 only; protocol version alert" in d["message"]
    text = gw.k("verify", "optional.example.com", "--connect", f"127.0.0.1:{gw.port}", "--ca", "example.com",
                "--tls-version", "1.3")
    assert text.code == 0 and "\ntls: TLSv1.3 " in text.out, text.out
    assert node(gw, "optional.example.com", "--tls", "1.2") == {"ok": False,
                                                                "error": "ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION"}
    assert node(gw, "optional.example.com", "--tls", "1.3") == {"ok": True, "status": 200, "version": "TLSv1.3"}
    assert java(gw, "optional.example.com", "TLSv1.2") == \
        "refused SSLHandshakeException: Received fatal alert: protocol_version"
    assert java(gw, "optional.example.com", "TLSv1.3") == "ok 200 TLSv1.3"


def test_default_floor_is_tls12_as_in_istio(gw):
    d = verify(gw, "plain.example.com", "--min-tls", "1.2", code=0, reason=None)
    assert check(d, "tls_floor")["detail"].startswith("a client offering only TLS 1.1 was refused")
    d = verify(gw, "plain.example.com", "--min-tls", "1.3", code=1, reason="tls_floor_not_enforced")
    assert "accepted a client offering only TLS 1.2 (negotiated TLSv1.2)" in d["message"]
    d = verify(gw, "plain.example.com", "--tls-version", "1.2", code=0, reason=None)
    assert d["tls_version"] == "TLSv1.2"


def test_max_version_cipher_suites_and_curves(gw):
    d = verify(gw, "legacy.example.com", code=0, reason=None)
    assert (d["tls_version"], d["cipher"]) == ("TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384")
    verify(gw, "legacy.example.com", "--tls-version", "1.3", code=1, reason="tls_version_refused")

    def s_client(host: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{gw.port}", "-servername", host,
                               "-CAfile", gw.ca["cert"], "-verify_return_error", "-tls1_2", *extra],
                              input="", capture_output=True, text=True, timeout=30)

    other_cipher = ("-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")
    assert s_client("plain.example.com", *other_cipher).returncode == 0  # the control: Envoy's defaults
    refused = s_client("legacy.example.com", *other_cipher)
    assert refused.returncode != 0 and "handshake failure" in refused.stderr, refused.stderr
    # TLS 1.2 needs the certificate's curve (P-256) among the client's groups too.
    assert s_client("plain.example.com", "-curves", "X25519:P-256").returncode == 0
    refused = s_client("legacy.example.com", "-curves", "X25519:P-256")
    assert refused.returncode != 0 and "handshake failure" in refused.stderr, refused.stderr
    accepted = s_client("legacy.example.com", "-curves", "X25519:P-256:P-384")
    assert accepted.returncode == 0, accepted.stderr
    assert re.search(r"Server Temp Key: ECDH, (secp384r1|P-384)", accepted.stdout), accepted.stdout


def test_minimum_above_maximum_fails_every_handshake_and_check_says_why(gw):
    d = verify(gw, "empty.example.com", code=1, reason="tls_error")
    assert "closed the connection during the TLS handshake" in d["message"]
    res = gw.k("check", "-f", gw.folder, "--json")
    assert res.code == 1
    found = [(f["server"], f["code"]) for f in res.json["findings"] if f["code"] and f["code"] != "KIM0004"]
    assert sorted(found) == [("https-empty", "KIM0017"), ("https-optpinned", "KIM0018")]


# --------------------------------------------------------------------------- SIMPLE + subjectAltNames

def test_simple_server_with_subject_alt_names_is_refused_by_envoy(kimpki, tmp_path):
    """Exactly as Istio maps it, a SIMPLE credentialName server with subjectAltNames becomes a SAN
    check without a CA, and Envoy refuses the listener (in a real gateway: the whole LDS update)."""
    kimpki.ok("ca", "init", "example.com")
    kimpki.ok("issue", "kim.example.com")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "cred.yaml").write_text(kimpki.ok("secret", "create", "kim-credential", "--cert", "kim.example.com",
                                                "--dry-run", "-o", "yaml").out)
    (folder / "gw.yaml").write_text(gateway_yaml("gw", [https_server(
        "kim.example.com", "https", "SIMPLE", "kim-credential", subjectAltNames=["alice.example.com"])]))
    found = kimpki("check", "-f", folder, "--json")
    assert found.code == 1 and [f["code"] for f in found.json["findings"] if f["code"]] == ["KIM0015"]
    res = kimpki("gateway", "serve", "-f", folder, "--port", "0", timeout=120)
    assert_one_line_error(res, 1, "SAN-based verification of peer certificates without trusted CA is insecure "
                                  "and not allowed")
