"""CRLs delivered to a real Envoy as Istio delivers them: ``kimpki gateway serve -f DIR`` puts the
CRL a credential carries into the validation context it serves over SDS
(``CertificateValidationContext.crl``, inline), and ``kimpki revoke --manifests DIR`` republishes
it into a running gateway (same Envoy process).

    root.example ─┬─ issuing.example ─┬─ kim.example.com       (server)
                  │                   ├─ a.example.com         (client, revoked before the start)
                  │                   ├─ b.example.com         (client, never revoked)
                  │                   └─ c.example.com         (client, revoked while serving)
                  └─ r.example.com    (client issued by the root itself)

    kim.example.com      MUTUAL  kim-credential   (--ca-secret: CA and crl in kim-credential-cacert)
    kim-tls.example.com  MUTUAL  kim-tls-credential  (--format tls: ca.crt and ca.crl in the credential)

Both levels' CRLs travel together: a client of either level is accepted only because both are
delivered (Envoy fails a chain with one CRL missing).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import Kimpki, assert_one_line_error, wait_until
from tests.test_verify_envoy import ServedGateway
from tests.tlspeers import assert_curl_refused

HOSTS = {"kim.example.com": "kim-credential", "kim-tls.example.com": "kim-tls-credential"}


def started(pid: int) -> int:
    """The process's start time (clock ticks since boot): a restarted Envoy would differ."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("crl-envoy")
    (root / "work").mkdir()
    k = Kimpki(root / "home", root / "work")
    k.ok("ca", "init", "root.example")
    k.ok("ca", "init", "issuing.example", "--parent", "root.example")
    k.ok("issue", "kim.example.com", "kim-tls.example.com", "--ca", "issuing.example")
    for client in ("a", "b", "c"):
        k.ok("issue", "--client", f"{client}.example.com", "--ca", "issuing.example")
    k.ok("issue", "--client", "r.example.com", "--ca", "root.example")
    k.ok("revoke", "a.example.com", "--reason", "keyCompromise")  # both CRLs exist from here on

    manifests = root / "manifests"
    manifests.mkdir()
    (manifests / "kim-credential.yaml").write_text(k.ok(
        "secret", "create", "kim-credential", "--cert", "kim.example.com", "--mutual", "--ca-secret",
        "--dry-run", "-o", "yaml").out)
    (manifests / "kim-tls-credential.yaml").write_text(k.ok(
        "secret", "create", "kim-tls-credential", "--cert", "kim.example.com", "--mutual", "--format", "tls",
        "--dry-run", "-o", "yaml").out)
    render = ["gateway", "render", "--name", "kim-gateway", "-o", "yaml"]
    for host, credential in HOSTS.items():
        render += ["--host", host, "--credential", credential, "--mode", "MUTUAL"]
    (manifests / "gateway.yaml").write_text(k.ok(*render).out)
    gw = ServedGateway(k, manifests, len(HOSTS))
    try:
        yield SimpleNamespace(k=k, gw=gw, port=gw.port, manifests=manifests)
    finally:
        code = gw.stop()
    assert code == 0, "".join(gw.stderr)


def verify(site, host: str, client: str):
    return site.k("verify", host, "--connect", f"127.0.0.1:{site.port}", "--ca", "root.example",
                  "--client", client, "--mode", "mutual", "--json")


def curl(site, host: str, client: str) -> subprocess.CompletedProcess:
    cert = site.k.home / "certs" / client / "current"
    return subprocess.run(["curl", "-sS", "--max-time", "5", "--resolve", f"{host}:{site.port}:127.0.0.1",
                           "--cacert", site.k.home / "cas" / "root.example" / "ca.crt",
                           "--cert", cert / "cert.crt", "--key", cert / "cert.key",
                           f"https://{host}:{site.port}/health"], capture_output=True, timeout=15)


@pytest.mark.parametrize("host", HOSTS)
def test_a_revoked_client_is_refused_and_others_of_both_levels_accepted(site, host):
    for client in ("b.example.com", "r.example.com"):  # intermediate's and root's clients: both CRLs there
        res = verify(site, host, client)
        assert res.code == 0, res.out + res.err
        r = curl(site, host, client)
        assert r.returncode == 0 and b"UP" in r.stdout, r
    res = verify(site, host, "a.example.com")
    assert_one_line_error(res, 1, "client_certificate_revoked")
    assert res.json["reason"] == "client_certificate_revoked"
    assert_curl_refused(curl(site, host, "a.example.com"), "certificate revoked")


def test_revoke_republishes_into_the_running_gateway(site):
    envoy = started(site.gw.envoy_pid)
    for host in HOSTS:
        assert verify(site, host, "c.example.com").code == 0
    d = site.k.json("revoke", "c.example.com", "--manifests", site.manifests)
    assert sorted((r["secret"], r["action"]) for r in d["republished"]) == [
        ("kim-credential-cacert", "updated"), ("kim-tls-credential", "updated")]
    for host in HOSTS:
        wait_until(lambda: verify(site, host, "c.example.com").json["reason"] == "client_certificate_revoked",
                   f"c.example.com refused by {host}")
        assert verify(site, host, "b.example.com").code == 0
        assert_curl_refused(curl(site, host, "c.example.com"), "certificate revoked")
    assert started(site.gw.envoy_pid) == envoy and site.gw.proc.poll() is None  # the same Envoy, reloaded
    again = site.k.json("revoke", "c.example.com", "--manifests", site.manifests)
    assert again["already_revoked"] and {r["action"] for r in again["republished"]} == {"unchanged"}
