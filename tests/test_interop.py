"""Real peers judge what kimpki issues: pkilint (RFC 5280), openssl verify, Python ssl handshakes."""

import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import openssl

LINT = Path(sys.executable).with_name("lint_pkix_cert")
LINT_SERVER_AUTH = Path(sys.executable).with_name("lint_cabf_serverauth_cert")
# Findings accepted on purpose (documented in README "pkilint findings"):
# pkix.subject_key_identifier_method_1_identified (INFO) says the SKI is RFC 5280 method 1 (SHA-1 of the key).
ACCEPTED = {"pkix.subject_key_identifier_method_1_identified"}
# RFC 5280's name syntax has no wildcards (RFC 6125 defines them), so the pure RFC 5280 linter
# calls a wildcard SAN invalid; the CA/Browser Forum server-auth linter, which knows wildcards,
# is asked about that name instead.
WILDCARD_SYNTAX = ("pkix.invalid_domain_name_syntax", "ERROR", 'Invalid domain name syntax: "*.example.com"')


FINDING = re.compile(r"^\s+(\S+) \((FATAL|ERROR|WARNING|NOTICE|INFO|DEBUG)\)(?:: (.*))?$")


def lint(path, *options: str, linter: Path = LINT) -> list[tuple[str, str, str]]:
    """pkilint's findings for one certificate: (code, severity, message), e.g.
    ("pkix.x", "ERROR", "...")."""
    proc = subprocess.run([str(linter), "lint", *options, str(path)], capture_output=True, text=True)
    # A finding is an indented "code (SEVERITY)" line, with ": message" after it for some.
    findings = [(m[1], m[2], m[3] or "") for line in proc.stdout.splitlines() if (m := FINDING.match(line))]
    # Its exit code is the number of findings; a certificate it cannot load is exit 1 and a
    # message on stderr, never a clean verdict.
    assert (proc.returncode, proc.stderr) == (len(findings), ""), (proc.returncode, proc.stderr, proc.stdout)
    return findings


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-2048", "rsa-3072"])
def test_pkilint_finds_no_error_or_warning_in_any_kind(kimpki, tmp_path, key_type):
    kimpki.ok("ca", "init", "root", "--key-type", key_type, "--org", "example Inc.")
    kimpki.ok("ca", "init", "inter", "--parent", "root", "--key-type", key_type, "--days", "900")
    server = kimpki.json("issue", "kim.example.com", "10.0.0.7", "--ca", "inter", "--key-type", key_type)
    client = kimpki.json("issue", "--client", "kim-client.example.com", "--ca", "root", "--key-type", key_type)
    wide = kimpki.json("issue", "*.example.com", "example.com", "--ca", "root", "--key-type", key_type)
    long_cn = kimpki.json("issue", "a" * 60 + ".example.com", "--ca", "root", "--key-type", key_type)
    files = {"root": kimpki.home / "cas/root/ca.crt", "intermediate": kimpki.home / "cas/inter/ca.crt"}
    for label, d in [("server", server), ("client", client), ("wildcard", wide), ("no-cn", long_cn)]:
        leaf = tmp_path / f"{label}.pem"
        # pkilint lints the first certificate of a file; write the leaf alone.
        leaf.write_bytes(Path(d["cert"]).read_bytes().split(b"-----END CERTIFICATE-----")[0]
                         + b"-----END CERTIFICATE-----\n")
        files[label] = leaf
    for label, path in files.items():
        findings = lint(path)
        bad = [f for f in findings if f[1] in ("ERROR", "WARNING", "FATAL")]
        assert bad == ([WILDCARD_SYNTAX] if label == "wildcard" else []), (label, findings)
        # Every kind carries a subject key identifier, so pkilint reports its method: proof that
        # it parsed and linted the certificate rather than finding nothing to say.
        assert {code for code, _, _ in findings if code != WILDCARD_SYNTAX[0]} == ACCEPTED, (label, findings)
    # The wildcard leaf as a TLS server certificate: no finding about its names (the rest are the
    # public-CA rules, e.g. policies and revocation URLs, that a private gateway CA does not follow).
    server_auth = lint(files["wildcard"], "-t", "DV-FINAL-CERTIFICATE", linter=LINT_SERVER_AUTH)
    assert server_auth, "the server-auth linter found nothing at all to say"
    assert not [f for f in server_auth if "domain" in f[0] or "wildcard" in f[0] or "dns" in f[0].lower()], server_auth


def test_pkilint_flags_the_seeds_openssl_root(tmp_path):
    # The baseline kimpki replaces: the seed's root has no keyUsage, an ERROR for pkilint.
    openssl("req", "-x509", "-sha256", "-nodes", "-days", "365", "-newkey", "rsa:2048",
            "-subj", "/O=example Inc./CN=example.com", "-keyout", "example.com.key",
            "-out", "example.com.crt", cwd=tmp_path)
    codes = [c for c, sev, _ in lint(tmp_path / "example.com.crt") if sev == "ERROR"]
    assert "pkix.ca_certificate_no_ku_extension" in codes


def test_openssl_verify_accepts_direct_and_intermediate_chains(kimpki, tmp_path):
    kimpki.ok("ca", "init", "root")
    kimpki.ok("ca", "init", "inter", "--parent", "root")
    direct = kimpki.json("issue", "kim.example.com", "--ca", "root")
    via = kimpki.json("issue", "kim-new.example.com", "--ca", "inter")
    root = kimpki.home / "cas/root/ca.crt"
    inter = kimpki.home / "cas/inter/ca.crt"
    out = openssl("verify", "-CAfile", root, direct["cert"]).stdout.decode()
    assert out.strip().endswith(": OK")
    # The intermediate leaf's file carries leaf + intermediate: give openssl the intermediate as untrusted.
    out = openssl("verify", "-CAfile", root, "-untrusted", inter, via["cert"]).stdout.decode()
    assert out.strip().endswith(": OK")
    assert openssl("verify", "-CAfile", root, "-untrusted", via["cert"], via["cert"]).returncode == 0
    # Purpose checks: server leaf is sslserver, client leaf is sslclient.
    client = kimpki.json("issue", "--client", "kim-client", "--ca", "root")
    assert openssl("verify", "-purpose", "sslserver", "-CAfile", root, direct["cert"]).returncode == 0
    assert openssl("verify", "-purpose", "sslclient", "-CAfile", root, client["cert"]).returncode == 0
    refused = openssl("verify", "-purpose", "sslclient", "-CAfile", root, direct["cert"], check=False)
    assert refused.returncode == 2 and b"error 26 at 0 depth lookup: unsuitable certificate purpose" in refused.stdout + refused.stderr
    # The wrong root fails.
    kimpki.ok("ca", "init", "other")
    refused = openssl("verify", "-CAfile", kimpki.home / "cas/other/ca.crt", direct["cert"], check=False)
    assert refused.returncode == 2 and b"error 20 at 0 depth lookup: unable to get local issuer certificate" in refused.stdout + refused.stderr


def test_the_seeds_exact_openssl_root_is_importable_and_its_leaves_verify(kimpki, tmp_path):
    seed = tmp_path / "seed"
    seed.mkdir()
    openssl("req", "-x509", "-sha256", "-nodes", "-days", "365", "-newkey", "rsa:2048",
            "-subj", "/O=example Inc./CN=example.com", "-keyout", "example.com.key",
            "-out", "example.com.crt", cwd=seed)
    res = kimpki("ca", "import", "example.com", "--cert", seed / "example.com.crt", "--key", seed / "example.com.key",
                 "--json")
    assert res.code == 0, res.err
    assert "warning" in res.err and "keyUsage" in res.err  # warned, not failed
    d = kimpki.json("issue", "kim.example.com", "--ca", "example.com", "--org", "kim organization")
    assert openssl("verify", "-CAfile", seed / "example.com.crt", d["cert"]).returncode == 0
    # And the seed's own CSR, signed by kimpki instead of `openssl x509 -req -set_serial 0`.
    openssl("req", "-out", "kim.example.com.csr", "-newkey", "rsa:2048", "-nodes", "-keyout", "kim.example.com.key",
            "-subj", "/CN=kim.example.com/O=kim organization", cwd=seed)
    signed = kimpki.json("sign", seed / "kim.example.com.csr", "--ca", "example.com", "--days", "300", "--name", "csr")
    assert signed["dns_names"] == ["kim.example.com"] and signed["key"] is None
    assert int(signed["serial"], 16) > 1 << 64
    assert openssl("verify", "-CAfile", seed / "example.com.crt", signed["cert"]).returncode == 0


HELLO_HTTP = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"


def _serve(ctx: ssl.SSLContext, http: bool = False):
    """A one-connection TLS server on loopback that says "hello" (as an HTTP response to one
    request with ``http``); returns (port, thread, result dict)."""
    sock = socket.create_server(("127.0.0.1", 0))
    result = {}

    def run():
        conn, _ = sock.accept()
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                result["peer"] = tls.getpeercert()
                if http:
                    request = b""
                    while b"\r\n\r\n" not in request and (chunk := tls.recv(4096)):
                        request += chunk
                    result["request"] = request
                tls.sendall(HELLO_HTTP if http else b"hello")
        except (ssl.SSLError, OSError) as e:
            result["error"] = e
        finally:
            sock.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return sock.getsockname()[1], t, result


def _client(port, host, cafile, cert=None, key=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.hostname_checks_common_name = False
    ctx.load_verify_locations(cafile)
    if cert:
        ctx.load_cert_chain(cert, key)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname=host) as tls:
            return tls.recv(5)  # with TLS 1.3 a refused client certificate shows up here


@pytest.fixture
def pki(kimpki):
    kimpki.ok("ca", "init", "root")
    kimpki.ok("ca", "init", "other")
    return {
        "server": kimpki.json("issue", "kim.example.com", "--ca", "root"),
        "client": kimpki.json("issue", "--client", "kim-client.example.com", "--ca", "root"),
        "foreign_client": kimpki.json("issue", "--client", "intruder.example.com", "--ca", "other"),
        "root": str(kimpki.home / "cas/root/ca.crt"),
        "other": str(kimpki.home / "cas/other/ca.crt"),
    }


def _server_ctx(pki, mutual=False):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki["server"]["cert"], pki["server"]["key"])
    if mutual:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki["root"])
    return ctx


def test_ssl_simple_handshake_succeeds_with_san_only_hostname_checks(pki):
    port, t, _ = _serve(_server_ctx(pki))
    assert _client(port, "kim.example.com", pki["root"]) == b"hello"
    t.join(5)


def test_ssl_hostname_not_in_san_fails(pki):
    port, t, _ = _serve(_server_ctx(pki))
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        _client(port, "other.example.com", pki["root"])
    t.join(5)


def test_ssl_certificate_from_another_ca_fails(pki):
    port, t, _ = _serve(_server_ctx(pki))
    with pytest.raises(ssl.SSLCertVerificationError):
        _client(port, "kim.example.com", pki["other"])
    t.join(5)


def test_ssl_mutual_with_client_certificate_succeeds(pki):
    port, t, result = _serve(_server_ctx(pki, mutual=True))
    c = pki["client"]
    assert _client(port, "kim.example.com", pki["root"], c["cert"], c["key"]) == b"hello"
    t.join(5)
    assert dict(x[0] for x in result["peer"]["subject"])["commonName"] == "kim-client.example.com"


@pytest.mark.parametrize("which", [None, "foreign_client"])
def test_ssl_mutual_without_or_with_foreign_client_certificate_fails(pki, which):
    port, t, _ = _serve(_server_ctx(pki, mutual=True))
    c = pki[which] if which else {"cert": None, "key": None}
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        _client(port, "kim.example.com", pki["root"], c["cert"], c["key"])
    t.join(5)


def _curl(port: int, cafile: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "10", "--resolve", f"kim.example.com:{port}:127.0.0.1",
                           "--cacert", cafile, f"https://kim.example.com:{port}/"], capture_output=True, text=True,
                          timeout=30)


def test_curl_accepts_the_server_certificate(pki):
    assert shutil.which("curl")
    port, t, result = _serve(_server_ctx(pki), http=True)
    # curl's own verification (OpenSSL + SAN matching) passes, and it gets the page.
    proc = _curl(port, pki["root"])
    t.join(5)
    assert (proc.returncode, proc.stdout) == (0, "hello"), proc.stderr
    assert result["request"].startswith(b"GET / HTTP/")


def test_curl_refuses_the_server_certificate_against_another_ca(pki):
    port, t, _ = _serve(_server_ctx(pki), http=True)
    proc = _curl(port, pki["other"])
    t.join(5)
    assert proc.returncode == 60, proc.stderr  # CURLE_PEER_FAILED_VERIFICATION
    assert "SSL certificate problem: unable to get local issuer certificate" in proc.stderr
