"""``kimpki verify`` (the real CLI, ``--json``) against ONE real Envoy gateway, set up as a user
would: a kimpki home, ``kimpki secret create --dry-run -o yaml`` and ``kimpki gateway render -o yaml``
into a folder, ``kimpki gateway serve -f FOLDER``. Every pass and failure is cross-checked with
``curl --resolve`` and ``openssl s_client -servername H -verify_return_error``.

The gateway (one port, told apart by SNI):

    kim.example.com        SIMPLE  kim-credential      (CA example.com)
    kim-new.example.com    MUTUAL  kim-new-credential  (clients from CA example.com)
    *.apps.example.com     SIMPLE  portal-credential   (a certificate for portal.apps.example.com only)
    expired.example.com    SIMPLE  expired-credential  (expired; hand-written Secret: secret create refuses it)
    reload.example.com     SIMPLE  reload-credential   (rewritten by the hot-reload test)
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509

from tests.conftest import Kimpki, Result, assert_one_line_error, wait_until
from tests.localgw_pki import generic_secret_yaml
from tests.tlspeers import assert_curl_refused, free_port

UP = b'{"status":"UP"}'
SIMPLE_CHECKS = ["connect", "trust", "hostname", "expiry", "accepted", "http", "current"]
MUTUAL_CHECKS = ["connect", "trust", "hostname", "expiry", "client_certificate_accepted",
                 "client_certificate_demanded", "http", "current"]


# --------------------------------------------------------------------------- the gateway

class ServedGateway:
    """``kimpki gateway serve`` in a subprocess; its output is read until it is ready, then drained."""

    def __init__(self, k: Kimpki, folder: Path, servers: int):
        self.proc = subprocess.Popen([sys.executable, "-m", "kimpki", "gateway", "serve", "-f", str(folder),
                                      "--port", "0"], cwd=k.cwd, env=k.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stdout = [self.proc.stdout.readline() for _ in range(servers)]
        self.stderr: list[str] = []
        while "ready in" not in (line := self.proc.stderr.readline()):
            if not line:
                self.stop()
                pytest.fail("kimpki gateway serve ended before it was ready:\n" + "".join(self.stdout + self.stderr))
            self.stderr.append(line)
        self.stderr.append(line)
        self.envoy_pid = int(re.search(r"Envoy pid (\d+)", line).group(1))
        self.port = int(self.stdout[0].rsplit(":", 1)[1])
        # Keep reading, so a chatty gateway never blocks on a full pipe.
        self._drains = [threading.Thread(target=self._drain, args=(stream, sink), daemon=True)
                        for stream, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr))]
        for t in self._drains:
            t.start()

    @staticmethod
    def _drain(stream, sink: list[str]) -> None:
        for line in stream:
            sink.append(line)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def issue_expired(home: Path, host: str) -> dict:
    """An expired server certificate in the store. The CLI has no option for past validity (on
    purpose), so this goes through the issuing use case with explicit dates."""
    from kimpki.ops import issuing
    from kimpki.ops.authority import no_passphrase
    from kimpki.store import Store

    now = datetime.now(timezone.utc)
    res = issuing.issue(Store.open(home), [host], ca_name="example.com", now=now, passphrase=no_passphrase,
                        not_before=now - timedelta(days=60), not_after=now - timedelta(days=30))
    return res.to_dict()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify-envoy")
    (root / "work").mkdir()
    k = Kimpki(root / "home", root / "work")
    ca = k.json("ca", "init", "example.com", "--org", "example Inc.")
    other_ca = k.json("ca", "init", "other.test", "--org", "other Inc.")
    certs = {h: k.json("issue", h, "--ca", "example.com")
             for h in ("kim.example.com", "kim-new.example.com", "portal.apps.example.com", "reload.example.com")}
    client = k.json("issue", "--client", "kim-client.example.com", "--ca", "example.com")
    stranger = k.json("issue", "--client", "stranger.example.com", "--ca", "other.test")
    expired = issue_expired(k.home, "expired.example.com")

    manifests = root / "manifests"
    manifests.mkdir()

    def secret(file: str, *args: str) -> None:
        (manifests / file).write_text(k.ok("secret", "create", *args, "--dry-run", "-o", "yaml").out)

    secret("kim-credential.yaml", "kim-credential", "--cert", "kim.example.com")
    secret("kim-new-credential.yaml", "kim-new-credential", "--cert", "kim-new.example.com", "--mutual")
    secret("portal-credential.yaml", "portal-credential", "--cert", "portal.apps.example.com")
    secret("reload-credential.yaml", "reload-credential", "--cert", "reload.example.com")
    # Correctly refused by secret create; a careless hand-written Secret still reaches the gateway.
    refused = k("secret", "create", "expired-credential", "--cert", "expired.example.com", "--dry-run", "-o", "yaml")
    assert_one_line_error(refused, 1, "expired on")
    (manifests / "expired-credential.yaml").write_text(generic_secret_yaml(
        "expired-credential", {"key": Path(expired["key"]), "cert": Path(expired["cert"])}, namespace="istio-system"))
    servers = [("kim.example.com", "kim-credential", "SIMPLE"), ("kim-new.example.com", "kim-new-credential", "MUTUAL"),
               ("*.apps.example.com", "portal-credential", "SIMPLE"),
               ("expired.example.com", "expired-credential", "SIMPLE"),
               ("reload.example.com", "reload-credential", "SIMPLE")]
    render = ["gateway", "render", "--name", "kim-gateway", "-o", "yaml"]
    for host, credential, mode in servers:
        render += ["--host", host, "--credential", credential, "--mode", mode]
    (manifests / "kim-gateway.yaml").write_text(k.ok(*render).out)

    gw = ServedGateway(k, manifests, len(servers))
    try:
        assert [line.split(" (")[0] for line in gw.stdout] == [f"serving {h}" for h, _, _ in servers]
        yield SimpleNamespace(k=k, gw=gw, port=gw.port, manifests=manifests, ca=ca, other_ca=other_ca, certs=certs,
                              client=client, stranger=stranger, expired=expired)
    finally:
        code = gw.stop()
    assert code == 0, "".join(gw.stderr)


# --------------------------------------------------------------------------- helpers

def verify(site, host: str, *args: str) -> Result:
    return site.k("verify", host, "--connect", f"127.0.0.1:{site.port}", *args, "--json")


def verify_json(site, host: str, *args: str, code: int, reason: str | None) -> dict:
    """Run verify; check the exit code, the JSON reason and (on failure) the one-line stderr."""
    res = verify(site, host, *args)
    assert res.code == code, (res.code, res.err, res.out)
    d = res.json
    assert d["reason"] == reason, d["message"]
    assert d["ok"] is (code == 0)
    if code:
        assert_one_line_error(res, code, d["message"])
        failed = [c for c in d["checks"] if not c["ok"]]
        assert len(failed) == 1 and d["message"] == f"{d['reason']}: {failed[0]['detail']}"
    else:
        assert res.err == "" and all(c["ok"] for c in d["checks"])
    return d


def names(d: dict) -> list[str]:
    return [c["name"] for c in d["checks"]]


def curl(site, host: str, *extra: str, path: str = "/health") -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "5", "--resolve", f"{host}:{site.port}:127.0.0.1", *extra,
                           f"https://{host}:{site.port}{path}"], capture_output=True, timeout=15)


def s_client(site, host: str, *extra: str, request: bool = False) -> subprocess.CompletedProcess:
    """``openssl s_client -servername HOST -verify_return_error``, optionally sending GET /health."""
    stdin = f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n" if request else ""
    args = ["openssl", "s_client", "-connect", f"127.0.0.1:{site.port}", "-servername", host,
            "-verify_return_error", *extra] + (["-ign_eof"] if request else [])
    return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=15)


def s_client_serial(r: subprocess.CompletedProcess) -> str:
    """The serial (lower-case hex, as kimpki prints it) of the certificate s_client printed."""
    pem = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", r.stdout, re.S).group(0)
    return format(x509.load_pem_x509_certificate(pem.encode()).serial_number, "x")


def cacert(site, ca=None) -> list[str]:
    return ["--cacert", (ca or site.ca)["cert"]]


def client_files(cert: dict) -> list[str]:
    return ["--cert", cert["cert"], "--key", cert["key"]]


# --------------------------------------------------------------------------- passes

def test_simple_pass_with_health_and_the_current_serial(site):
    cert = site.certs["kim.example.com"]
    d = verify_json(site, "kim.example.com", "--ca", "example.com", "--http-path", "/health", code=0, reason=None)
    assert names(d) == SIMPLE_CHECKS
    assert (d["tls_version"], d["alpn"]) == ("TLSv1.3", "h2")
    assert (d["http_status"], d["http_body_bytes"]) == (200, len(UP))
    leaf = d["served_chain"][0]
    assert leaf["serial"] == cert["serial"] and leaf["dns_names"] == ["kim.example.com"]
    current = next(c["detail"] for c in d["checks"] if c["name"] == "current")
    assert cert["serial"] in current and "the store's current version" in current

    r = curl(site, "kim.example.com", *cacert(site))
    assert (r.returncode, r.stdout) == (0, UP), r.stderr
    r = s_client(site, "kim.example.com", "-CAfile", site.ca["cert"], "-verify_hostname", "kim.example.com")
    assert r.returncode == 0 and "Verify return code: 0 (ok)" in r.stdout, r.stderr
    assert s_client_serial(r) == cert["serial"]


def test_wildcard_server_passes_for_the_name_its_certificate_covers(site):
    d = verify_json(site, "portal.apps.example.com", "--cacert", site.ca["cert"], "--http-path", "/health",
                    code=0, reason=None)
    assert d["served_chain"][0]["serial"] == site.certs["portal.apps.example.com"]["serial"]
    r = curl(site, "portal.apps.example.com", *cacert(site))
    assert (r.returncode, r.stdout) == (0, UP), r.stderr


@pytest.mark.parametrize("how", ["store names", "files"])
def test_mutual_pass(site, how):
    client = ["--client", "kim-client.example.com"] if how == "store names" else client_files(site.client)
    d = verify_json(site, "kim-new.example.com", "--ca", "example.com", *client, "--mode", "mutual",
                    "--http-path", "/health", code=0, reason=None)
    assert names(d) == MUTUAL_CHECKS
    assert (d["http_status"], d["http_body_bytes"]) == (200, len(UP))
    assert d["served_chain"][0]["serial"] == site.certs["kim-new.example.com"]["serial"]
    demanded = next(c["detail"] for c in d["checks"] if c["name"] == "client_certificate_demanded")
    assert "certificate required alert" in demanded  # Envoy's TLS 1.3 refusal of an anonymous client

    r = curl(site, "kim-new.example.com", *cacert(site), *client_files(site.client))
    assert (r.returncode, r.stdout) == (0, UP), r.stderr
    r = s_client(site, "kim-new.example.com", "-CAfile", site.ca["cert"], "-cert", site.client["cert"],
                 "-key", site.client["key"], request=True)
    assert r.returncode == 0 and "Verify return code: 0 (ok)" in r.stdout, r.stderr
    assert "HTTP/1.1 200 OK" in r.stdout and UP.decode() in r.stdout
    # ... and without a client certificate both refuse, as verify's "demanded" check saw.
    r = curl(site, "kim-new.example.com", *cacert(site))
    assert_curl_refused(r, "alert certificate required")


# --------------------------------------------------------------------------- failures

def test_wrong_ca_is_trust(site):
    d = verify_json(site, "kim.example.com", "--ca", "other.test", code=1, reason="trust")
    assert d["message"].startswith("trust: the served chain does not verify against CA other.test")
    assert d["served_chain"][0]["serial"] == site.certs["kim.example.com"]["serial"]  # reported all the same
    r = curl(site, "kim.example.com", *cacert(site, site.other_ca))
    assert r.returncode == 60 and b"certificate" in r.stderr
    r = s_client(site, "kim.example.com", "-CAfile", site.other_ca["cert"])
    assert r.returncode == 1 and "unable to get local issuer certificate" in r.stdout + r.stderr, r.stderr


def test_host_name_outside_the_san_is_hostname(site):
    # SNI shop.apps.example.com selects the *.apps.example.com filter chain, whose certificate
    # only covers portal.apps.example.com.
    d = verify_json(site, "shop.apps.example.com", "--ca", "example.com", code=1, reason="hostname")
    assert d["message"] == ("hostname: shop.apps.example.com is not in the served certificate's SANs "
                            "(DNS:portal.apps.example.com)")
    assert d["served_chain"][0]["serial"] == site.certs["portal.apps.example.com"]["serial"]
    r = curl(site, "shop.apps.example.com", *cacert(site))
    assert r.returncode == 60 and b"shop.apps.example.com" in r.stderr
    r = s_client(site, "shop.apps.example.com", "-CAfile", site.ca["cert"], "-verify_hostname", "shop.apps.example.com")
    assert r.returncode == 1 and "hostname mismatch" in r.stdout + r.stderr, r.stderr


def test_expired_server_certificate_is_expiry(site):
    d = verify_json(site, "expired.example.com", "--ca", "example.com", code=1, reason="expiry")
    assert d["message"].startswith(f"expiry: the served certificate CN=expired.example.com expired on "
                                   f"{site.expired['not_after']} (30 days ago")
    leaf = d["served_chain"][0]
    assert leaf["serial"] == site.expired["serial"] and leaf["days_left"] < 0
    r = curl(site, "expired.example.com", *cacert(site))
    assert r.returncode == 60 and b"expired" in r.stderr
    r = s_client(site, "expired.example.com", "-CAfile", site.ca["cert"])
    assert r.returncode == 1 and "certificate has expired" in r.stdout + r.stderr, r.stderr


def test_client_certificate_from_another_ca_is_refused(site):
    d = verify_json(site, "kim-new.example.com", "--ca", "example.com", "--client", "stranger.example.com",
                    code=1, reason="client_certificate_refused")
    assert d["message"].startswith("client_certificate_refused: the server refused client certificate "
                                   "stranger.example.com")
    assert "unknown ca alert" in d["message"]
    r = curl(site, "kim-new.example.com", *cacert(site), *client_files(site.stranger))
    assert_curl_refused(r, "alert unknown ca")
    r = s_client(site, "kim-new.example.com", "-CAfile", site.ca["cert"],
                 "-cert", site.stranger["cert"], "-key", site.stranger["key"], request=True)
    assert "alert unknown ca" in r.stderr and "200 OK" not in r.stdout


def test_mutual_mode_against_a_simple_server_is_not_demanded(site):
    d = verify_json(site, "kim.example.com", "--ca", "example.com", "--client", "kim-client.example.com",
                    "--mode", "mutual", code=1, reason="client_certificate_not_demanded")
    assert d["message"] == ("client_certificate_not_demanded: the server never asked for a client certificate "
                            "(it serves SIMPLE TLS)")
    # curl without a client certificate gets the page: nothing demands one.
    r = curl(site, "kim.example.com", *cacert(site))
    assert (r.returncode, r.stdout) == (0, UP), r.stderr


def test_unknown_sni_is_tls_error(site):
    d = verify_json(site, "unknown.example.com", "--ca", "example.com", code=1, reason="tls_error")
    assert d["message"] == (f"tls_error: 127.0.0.1:{site.port} closed the connection during the TLS handshake, "
                            f"before presenting a certificate (does it serve SNI unknown.example.com?)")
    assert d["served_chain"] == []
    r = curl(site, "unknown.example.com", *cacert(site))
    assert r.returncode == 35, r.stderr  # CURLE_SSL_CONNECT_ERROR
    r = s_client(site, "unknown.example.com", "-CAfile", site.ca["cert"])
    assert r.returncode == 1 and "no peer certificate available" in r.stdout, r.stderr


def test_closed_port_is_connection_refused(site):
    port = free_port()
    res = site.k("verify", "kim.example.com", "--connect", f"127.0.0.1:{port}", "--ca", "example.com", "--json")
    d = res.json
    assert (res.code, d["reason"]) == (1, "connection_refused")
    assert d["message"] == f"connection_refused: 127.0.0.1:{port} refused the connection (nothing listens on port {port}?)"
    assert_one_line_error(res, 1, d["message"])
    r = subprocess.run(["curl", "-sS", "--resolve", f"kim.example.com:{port}:127.0.0.1", "--cacert", site.ca["cert"],
                        f"https://kim.example.com:{port}/health"], capture_output=True, timeout=15)
    assert r.returncode == 7  # CURLE_COULDNT_CONNECT


def test_verify_all_checks_every_server_certificate_on_the_gateway(site):
    """--all: every current server certificate in the inventory, on one gateway."""
    res = site.k("verify", "--all", "--connect", f"127.0.0.1:{site.port}", "--json")
    rows = {r["host"]: r for r in res.json["items"]}
    assert sorted(rows) == ["expired.example.com", "kim-new.example.com", "kim.example.com",
                            "portal.apps.example.com", "reload.example.com"]  # no client certificates
    assert all(rows[h]["ok"] for h in ("kim.example.com", "portal.apps.example.com", "reload.example.com"))
    assert rows["expired.example.com"]["reason"] == "expiry"
    # The MUTUAL server demands a client certificate: --all checks it again with the store's client
    # certificate from the same CA, and it passes as MUTUAL.
    assert rows["kim-new.example.com"]["ok"] and rows["kim-new.example.com"]["mode"] == "mutual"
    assert_one_line_error(res, 1, "1 of 5 checks failed")


# --------------------------------------------------------------------------- hot reload

def test_rewritten_secret_manifest_is_served_without_restarting_envoy(site):
    k, host = site.k, "reload.example.com"
    old = site.certs[host]["serial"]
    assert verify_json(site, host, "--ca", "example.com", code=0, reason=None)["served_chain"][0]["serial"] == old

    new = k.json("issue", host, "--ca", "example.com")["serial"]
    assert new != old
    # Re-issued in the store but not deployed yet: verify catches the stale gateway.
    d = verify_json(site, host, "--ca", "example.com", code=1, reason="not_current")
    assert d["served_chain"][0]["serial"] == old and new in d["message"]

    yaml_text = k.ok("secret", "create", "reload-credential", "--cert", host, "--dry-run", "-o", "yaml").out
    (site.manifests / "reload-credential.yaml").write_text(yaml_text)
    served = []

    def reports_new() -> Result | None:
        res = verify(site, host, "--ca", "example.com")
        served.append(res.json["served_chain"][0]["serial"])
        return res if served[-1] == new else None

    # How fast the reload is, is measured by scripts/bench reload; here only that it happens.
    res = wait_until(reports_new, f"the gateway to serve {host}'s new serial")
    assert res.code == 0 and res.json["ok"], res.err
    assert set(served) <= {old, new}

    # The same Envoy process: alive, still the one gateway serve started, no second start-up.
    os.kill(site.gw.envoy_pid, 0)
    assert "envoy" in Path(f"/proc/{site.gw.envoy_pid}/cmdline").read_bytes().decode(errors="replace")
    assert sum("ready in" in line for line in site.gw.stderr) == 1
    assert any("reloaded: updated" in line and "reload-credential" in line for line in site.gw.stderr)
    r = s_client(site, host, "-CAfile", site.ca["cert"])
    assert r.returncode == 0 and s_client_serial(r) == new


def test_verify_wait_repeats_until_the_gateway_serves_the_new_certificate(site):
    k, host = site.k, "reload.example.com"
    new = k.json("issue", host, "--ca", "example.com")["serial"]
    yaml_text = k.ok("secret", "create", "reload-credential", "--cert", host, "--dry-run", "-o", "yaml").out
    (site.manifests / "reload-credential.yaml").write_text(yaml_text)
    # Right after the rewrite the gateway may still serve the old certificate: --wait rides it out.
    d = verify_json(site, host, "--ca", "example.com", "--wait", "10", code=0, reason=None)
    assert d["served_chain"][0]["serial"] == new
    # A check that cannot pass still fails, once the wait is over.
    verify_json(site, host, "--ca", "example.com", "--mode", "mutual", "--client", "kim-client.example.com",
                "--wait", "0.5", code=1, reason="client_certificate_not_demanded")
