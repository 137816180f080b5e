"""``kimpki verify`` and ``kimpki.verify`` against real TLS peers on loopback: threaded Python
``ssl`` servers (TLS 1.3 and TLS 1.2, SIMPLE, MUTUAL, OPTIONAL_MUTUAL, SNI) and ``openssl
s_server``, with certificates made by the ``openssl`` CLI. No mocks."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from kimpki.errors import UsageError
from kimpki.verify import Mode, Reason, check_endpoint, check_many, make_target, split_host_port
from tests.conftest import Result, assert_one_line_error, openssl
from tests.tlspeers import Blackhole, OpenSSLCA, OpenSSLServer, TLSServer, free_port

HOST = "kim.example.com"
TLS12 = ssl.TLSVersion.TLSv1_2

# ``verify`` is registered in kimpki.cli.main by the integrator; until then, register it here so
# the real entry point (its error-to-exit-code mapping included) runs in a real process.
def verify_cli(*args, env: dict | None = None, timeout: float = 60) -> Result:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KIMPKI_")}
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "kimpki", "verify", *map(str, args)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=full_env, timeout=timeout,
                          cwd=Path(__file__).resolve().parent.parent)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def verify_json(*args, code: int, reason: str | None, **kw) -> dict:
    res = verify_cli(*args, "--json", **kw)
    assert "Traceback" not in res.err, res.err
    assert res.code == code, (res.code, res.err, res.out)
    d = json.loads(res.out)
    assert d["reason"] == reason, d["message"]
    assert d["ok"] is (code == 0)
    if code == 1:
        assert_one_line_error(res, 1, d["message"])
        # the message starts with the reason (one word), then the failed check's detail
        failed = [c for c in d["checks"] if not c["ok"]]
        assert len(failed) == 1 and d["message"] == f"{d['reason']}: {failed[0]['detail']}"
    else:
        assert res.err == ""
        assert all(c["ok"] for c in d["checks"])
    return d


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> SimpleNamespace:
    d = tmp_path_factory.mktemp("verify-pki")
    ca = OpenSSLCA(d / "ca", "example.com")
    other = OpenSSLCA(d / "other", "other.test", org="other Inc.")
    return SimpleNamespace(
        ca=ca,
        other=other,
        server=ca.issue(HOST),
        client=ca.issue("kim-client.example.com", client=True),
        other_client=other.issue("kim-client.example.com", client=True),
        other_server=other.issue(HOST, stem="other-server"),
        wrong_name=ca.issue("other.example.com", stem="wrong-name"),
        cn_only=ca.issue(HOST, sans=[], stem="cn-only"),
        expired=ca.issue_dated(HOST, "20240101000000Z", "20240201000000Z", stem="expired"),
        ip=ca.issue("127.0.0.1", sans=["IP:127.0.0.1", "IP:::1"], stem="ip"),
    )


def at(server) -> str:
    return f"{server.address}:{server.port}" if ":" not in server.address else f"[{server.address}]:{server.port}"


def simple_args(server, pki, host: str = HOST) -> list:
    return [host, "--connect", at(server), "--cacert", pki.ca.cert]


def mutual_args(server, pki, client=None) -> list:
    client = client or pki.client
    return simple_args(server, pki) + ["--cert", client.cert, "--key", client.key]


def names(d: dict) -> list[str]:
    return [c["name"] for c in d["checks"]]


def detail(d: dict, name: str) -> str:
    return next(c["detail"] for c in d["checks"] if c["name"] == name)


# --------------------------------------------------------------------------- passes

@pytest.mark.parametrize("max_version", [None, TLS12], ids=["tls1.3", "tls1.2"])
def test_simple_pass_python_server(pki, max_version):
    with TLSServer(pki.server, max_version=max_version) as srv:
        d = verify_json(*simple_args(srv, pki), "--http-path", "/health", code=0, reason=None)
    assert names(d) == ["connect", "trust", "hostname", "expiry", "accepted", "http"]
    assert d["tls_version"] == ("TLSv1.2" if max_version else "TLSv1.3")
    assert d["alpn"] == "http/1.1" and d["cipher"]
    assert (d["http_status"], d["http_body_bytes"]) == (200, len(b'{"status":"UP"}'))
    assert detail(d, "trust") == "chain verifies against example.com.crt"
    assert detail(d, "hostname") == f"{HOST} is in the served certificate's SANs (DNS:{HOST})"
    assert [h.request for h in srv.handshakes] == ["GET /health HTTP/1.1"]


def test_simple_pass_openssl_s_server(pki):
    with OpenSSLServer(pki.server) as srv:
        d = verify_json(*simple_args(srv, pki), "--http-path", "/", code=0, reason=None)
    assert d["http_status"] == 200 and d["http_body_bytes"] > 0
    assert d["served_chain"][0]["dns_names"] == [HOST]


@pytest.mark.parametrize("max_version", [None, TLS12], ids=["tls1.3", "tls1.2"])
def test_mutual_pass_python_server(pki, max_version):
    with TLSServer(pki.server, client_ca=pki.ca.cert, max_version=max_version) as srv:
        d = verify_json(*mutual_args(srv, pki), "--http-path", "/health", code=0, reason=None)
    assert d["mode"] == "mutual"  # the default with a client certificate
    assert names(d) == ["connect", "trust", "hostname", "expiry", "client_certificate_accepted",
                        "client_certificate_demanded", "http"]
    demanded = detail(d, "client_certificate_demanded")
    if max_version is None:  # TLS 1.3: the refusal arrives after the client's handshake completed
        assert demanded == "the server refused a client without a certificate (certificate required alert)"
    else:  # TLS 1.2: refused inside the handshake
        assert demanded == ("the server refused a client without a certificate "
                            "(handshake failure alert during the handshake)")
    # The server saw exactly one accepted client (with a certificate) and one it refused.
    seen = sorted((h.ok, h.client_cert) for h in srv.handshakes)
    assert seen == [(False, False), (True, True)]


@pytest.mark.parametrize("tls1_2", [False, True], ids=["tls1.3", "tls1.2"])
def test_mutual_pass_openssl_s_server(pki, tls1_2):
    with OpenSSLServer(pki.server, client_ca=pki.ca.cert, tls1_2=tls1_2, extra=["-verify_return_error"]) as srv:
        d = verify_json(*mutual_args(srv, pki), "--mode", "mutual", "--http-path", "/", code=0, reason=None)
    assert d["tls_version"] == ("TLSv1.2" if tls1_2 else "TLSv1.3")
    assert "refused a client without a certificate" in detail(d, "client_certificate_demanded")


def test_http_path_when_gateway_negotiates_h2(pki):
    """Envoy picks h2 when offered; the HTTP check re-connects offering only http/1.1."""
    with TLSServer(pki.server, alpn=("h2", "http/1.1")) as srv:
        d = verify_json(*simple_args(srv, pki), "--http-path", "/health", code=0, reason=None)
    assert d["alpn"] == "h2" and d["http_status"] == 200
    assert "re-connected with ALPN http/1.1" in detail(d, "http")
    assert sorted(h.alpn for h in srv.handshakes) == ["h2", "http/1.1"]


def test_ip_address_host_and_ipv6_connect(pki):
    with TLSServer(pki.ip, host="::1") as srv:
        d = verify_json("::1", "--connect", f"[::1]:{srv.port}", "--cacert", pki.ca.cert, code=0, reason=None)
        assert d["address"] == "::1" and d["port"] == srv.port
        assert "IP:::1" in detail(d, "hostname")
        d = verify_json(HOST, "--connect", f"[::1]:{srv.port}", "--cacert", pki.ca.cert, code=1, reason="hostname")
        assert d["message"] == f"hostname: {HOST} is not in the served certificate's SANs (IP:127.0.0.1, IP:::1)"


# --------------------------------------------------------------------------- client certificate failures

@pytest.mark.parametrize("max_version", [None, TLS12], ids=["tls1.3", "tls1.2"])
def test_mutual_against_simple_server_is_not_demanded(pki, max_version):
    with TLSServer(pki.server, max_version=max_version) as srv:
        d = verify_json(*mutual_args(srv, pki), code=1, reason="client_certificate_not_demanded")
    assert d["message"] == ("client_certificate_not_demanded: the server never asked for a client certificate "
                            "(it serves SIMPLE TLS)")


def test_optional_client_auth_is_not_demanded(pki):
    """Istio's OPTIONAL_MUTUAL asks for a certificate but lets a client without one in."""
    with TLSServer(pki.server, client_ca=pki.ca.cert, client_auth="optional") as srv:
        d = verify_json(*mutual_args(srv, pki), code=1, reason="client_certificate_not_demanded")
    assert "asked for a client certificate but accepted a client without one" in d["message"]


@pytest.mark.parametrize("max_version", [None, TLS12], ids=["tls1.3", "tls1.2"])
def test_client_cert_from_another_ca_is_refused(pki, max_version):
    with TLSServer(pki.server, client_ca=pki.ca.cert, max_version=max_version) as srv:
        d = verify_json(*mutual_args(srv, pki, pki.other_client), code=1, reason="client_certificate_refused")
    assert d["message"].startswith("client_certificate_refused: the server refused client certificate "
                                   "kim-client.example.com.client.crt (unknown ca alert)")
    # the server itself was verified before it refused us
    assert names(d)[:4] == ["connect", "trust", "hostname", "expiry"]


@pytest.mark.parametrize("tls1_2", [False, True], ids=["tls1.3", "tls1.2"])
def test_client_cert_from_another_ca_is_refused_by_s_server(pki, tls1_2):
    with OpenSSLServer(pki.server, client_ca=pki.ca.cert, tls1_2=tls1_2, extra=["-verify_return_error"]) as srv:
        verify_json(*mutual_args(srv, pki, pki.other_client), code=1, reason="client_certificate_refused")


@pytest.mark.parametrize("max_version", [None, TLS12], ids=["tls1.3", "tls1.2"])
@pytest.mark.parametrize("http", [False, True], ids=["handshake", "http"])
def test_simple_check_of_a_mutual_gateway_is_never_a_pass(pki, max_version, http):
    """TLS 1.3 completes the client's handshake before the server refuses: kimpki must read on."""
    extra = ["--http-path", "/health"] if http else []
    with TLSServer(pki.server, client_ca=pki.ca.cert, max_version=max_version) as srv:
        d = verify_json(*simple_args(srv, pki), *extra, code=1, reason="client_certificate_refused")
    alert = "handshake failure alert" if max_version else "certificate required alert"
    assert d["message"] == (f"client_certificate_refused: the server refused a client without a certificate ({alert}); "
                            f"it looks MUTUAL: check with a client certificate, --client NAME (from the store) or "
                            f"--cert FILE --key FILE")
    assert d["http_status"] is None


def test_servers_without_session_tickets(pki):
    """No ticket: acceptance is "no refusal within the alert wait"; refusals are still seen."""
    with TLSServer(pki.server, client_ca=pki.ca.cert, tickets=False) as srv:
        target = make_target(HOST, connect=at(srv), ca_file=str(pki.ca.cert), client_cert=str(pki.client.cert),
                             client_key=str(pki.client.key))
        report = check_endpoint(target)
        assert report.ok, report.message
        assert report.checks[4].detail.endswith("(no refusal within 0.30 s)")
        evil = make_target(HOST, connect=at(srv), ca_file=str(pki.ca.cert), client_cert=str(pki.other_client.cert),
                           client_key=str(pki.other_client.key))
        assert check_endpoint(evil).reason is Reason.CLIENT_CERTIFICATE_REFUSED
        simple = check_endpoint(make_target(HOST, connect=at(srv), ca_file=str(pki.ca.cert)))
        assert simple.reason is Reason.CLIENT_CERTIFICATE_REFUSED
    with TLSServer(pki.server, client_ca=pki.ca.cert, client_auth="optional", tickets=False) as srv:
        report = check_endpoint(make_target(HOST, connect=at(srv), ca_file=str(pki.ca.cert),
                                            client_cert=str(pki.client.cert), client_key=str(pki.client.key)))
        assert report.reason is Reason.CLIENT_CERTIFICATE_NOT_DEMANDED
        assert report.message.endswith("(no refusal within 0.30 s)")
    with TLSServer(pki.server, tickets=False) as srv:  # SIMPLE: no CertificateRequest, so a short wait
        report = check_endpoint(make_target(HOST, connect=at(srv), ca_file=str(pki.ca.cert)))
        assert report.ok
        assert report.checks[-1].detail.endswith("(no refusal within 0.05 s)")  # the wait it chose


# --------------------------------------------------------------------------- server certificate failures

def test_wrong_ca_is_trust(pki):
    with TLSServer(pki.other_server) as srv:
        d = verify_json(*simple_args(srv, pki), code=1, reason="trust")
    assert d["message"] == ("trust: the served chain does not verify against example.com.crt: unable to get "
                            "local issuer certificate; served CN=kim.example.com issued by "
                            "CN=other.test,O=other Inc.")
    # the served certificate is reported even though it did not verify
    assert d["served_chain"][0]["issuer"] == "CN=other.test,O=other Inc."


def test_hostname_not_in_san(pki):
    with TLSServer(pki.wrong_name) as srv:
        d = verify_json(*simple_args(srv, pki), code=1, reason="hostname")
    assert d["message"] == "hostname: kim.example.com is not in the served certificate's SANs (DNS:other.example.com)"


def test_common_name_is_not_checked(pki):
    with TLSServer(pki.cn_only) as srv:
        d = verify_json(*simple_args(srv, pki), code=1, reason="hostname")
    assert d["served_chain"][0]["subject"] == f"CN={HOST}"
    assert d["message"] == (f"hostname: {HOST} is not in the served certificate's SANs (none; its subject "
                            f"CN={HOST} is not checked, only subjectAltName counts)")


def test_expired_server_certificate(pki):
    with TLSServer(pki.expired) as srv:
        d = verify_json(*simple_args(srv, pki), code=1, reason="expiry")
    assert d["message"].startswith(f"expiry: the served certificate CN={HOST} expired on 2024-02-01T00:00:00Z (")
    assert d["served_chain"][0]["days_left"] < 0


def test_unknown_sni_is_tls_error(pki):
    with TLSServer(pki.server, sni={HOST: pki.server}, strict_sni=True) as srv:
        d = verify_json(*simple_args(srv, pki, "nope.example.com"), code=1, reason="tls_error")
    assert d["message"] == "tls_error: the server has no certificate for SNI nope.example.com (unrecognized name alert)"


# --------------------------------------------------------------------------- network and HTTP failures

def test_closed_port_is_connection_refused(pki):
    port = free_port()
    d = verify_json(HOST, "--connect", f"127.0.0.1:{port}", "--cacert", pki.ca.cert, code=1,
                    reason="connection_refused")
    assert d["message"] == f"connection_refused: 127.0.0.1:{port} refused the connection (nothing listens on port {port}?)"
    assert d["served_chain"] == [] and d["tls_version"] is None


def test_http_status_500(pki):
    with TLSServer(pki.server, routes={"/health": (500, b"boom")}) as srv:
        d = verify_json(*simple_args(srv, pki), "--http-path", "/health", code=1, reason="http_status")
    assert (d["http_status"], d["http_body_bytes"]) == (500, 4)
    assert d["message"] == "http_status: GET /health -> 500 (4 bytes), expected 2xx"


def test_blackhole_times_out_within_timeout(pki):
    with Blackhole() as hole:
        target = make_target(HOST, connect=f"127.0.0.1:{hole.port}", ca_file=str(pki.ca.cert), timeout=0.7)
        t0 = time.monotonic()
        report = check_endpoint(target)  # the blackhole never answers: returning at all is giving up
        elapsed = time.monotonic() - t0
        assert report.reason is Reason.TIMEOUT
        # Not a speed claim (no upper bound: a loaded machine may be late), only that it did not
        # give up before its timeout.
        assert elapsed >= 0.6, elapsed
        assert report.message == f"timeout: no TLS handshake with 127.0.0.1:{hole.port} within 0.7 s"
        d = verify_json(HOST, "--connect", f"127.0.0.1:{hole.port}", "--cacert", pki.ca.cert, "--mode", "mutual",
                        "--cert", pki.client.cert, "--key", pki.client.key, "--timeout", "2", code=1,
                        reason="timeout")
        # One deadline for all connections of the check: less than two timeouts (the boundary of
        # that claim, not a speed target; the margin is a whole timeout for a loaded machine).
        assert d["duration_ms"] < 4000, d["duration_ms"]


# --------------------------------------------------------------------------- output

def test_json_keys_and_formats(pki):
    with TLSServer(pki.server, client_ca=pki.ca.cert) as srv:
        d = verify_json(*mutual_args(srv, pki), "--http-path", "/health", code=0, reason=None)
    assert list(d) == ["host", "address", "port", "mode", "ok", "reason", "message", "checks", "tls_version",
                       "cipher", "alpn", "served_chain", "http_path", "http_status", "http_body_bytes", "ca",
                       "client_certificate", "checked_at", "duration_ms", "timeout_s", "attempts", "key_algorithm",
                       "client_key_algorithm"]
    assert all(list(c) == ["name", "ok", "detail"] for c in d["checks"])
    leaf = d["served_chain"][0]
    assert list(leaf) == ["subject", "issuer", "serial", "dns_names", "ip_addresses", "not_before", "not_after",
                          "days_left", "sha256", "key_algorithm"]
    rfc3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
    assert rfc3339.match(d["checked_at"]) and rfc3339.match(leaf["not_after"])
    serial = openssl("x509", "-in", pki.server.cert, "-noout", "-serial").stdout.decode().strip().split("=")[1]
    assert leaf["serial"] == format(int(serial, 16), "x")
    assert leaf["sha256"] == openssl("x509", "-in", pki.server.cert, "-noout", "-fingerprint", "-sha256"
                                     ).stdout.decode().strip().split("=")[1].replace(":", "").lower()
    assert (d["host"], d["address"], d["port"], d["ca"]) == (HOST, "127.0.0.1", srv.port, "example.com.crt")
    assert d["client_certificate"] == "kim-client.example.com.client.crt"


def test_text_transcript(pki):
    with TLSServer(pki.server) as srv:
        res = verify_cli(*simple_args(srv, pki), "--http-path", "/health")
        assert res.code == 0, res.err
        assert res.out.isascii()
        lines = res.out.splitlines()
        assert lines[0] == f"{HOST} at 127.0.0.1:{srv.port} (SIMPLE, trusting example.com.crt)"
        assert re.match(r"  ok    trust +chain verifies against example.com.crt$", lines[2])
        assert lines[-1] == "PASS"
    with TLSServer(pki.wrong_name) as srv:
        res = verify_cli(*simple_args(srv, pki))
        assert res.code == 1
        assert re.search(r"^  FAIL  hostname +kim.example.com is not in", res.out, re.M)
        assert res.out.splitlines()[-1] == "FAIL (hostname)"
        assert res.err == ("kimpki: error: hostname: kim.example.com is not in the served certificate's SANs "
                           "(DNS:other.example.com)\n")


def test_help_teaches():
    res = verify_cli("--help")
    assert res.code == 0
    for needle in ("curl -v --resolve kim.example.com:443:127.0.0.1", "--cert client.crt --key client.key",
                   "--connect ADDR[:PORT]", "client_certificate_not_demanded", "Exit codes"):
        assert needle in res.out, needle


# --------------------------------------------------------------------------- usage errors

USAGE_CASES = {
    "no host": ([], "give HOST"),
    "cert without key": ([HOST, "--cert", "{client_cert}"], "--cert needs --key"),
    "key without cert": ([HOST, "--key", "{client_key}"], "--key needs --cert"),
    "mutual without cert": ([HOST, "--mode", "mutual"], "mode mutual needs a client certificate"),
    "missing CA file": ([HOST, "--cacert", "/nonexistent/ca.crt"],
                        "cannot read CA file /nonexistent/ca.crt: No such file or directory"),
    "CA file not PEM": ([HOST, "--cacert", "{client_key}"], "holds no usable PEM certificate"),
    "missing client cert": ([HOST, "--cacert", "{ca}", "--cert", "/nope.crt", "--key", "{client_key}"],
                            "cannot read client certificate /nope.crt"),
    "key of another cert": ([HOST, "--cacert", "{ca}", "--cert", "{client_cert}", "--key", "{server_key}"],
                            "the key does not belong to the certificate"),
    "bad port": ([HOST, "--connect", "127.0.0.1:99999"], "bad port '99999'"),
    "bad ipv6": ([HOST, "--connect", "[::1:8443"], "missing ']'"),
    "wildcard host": (["*.example.com"], "is a wildcard"),
    "bad host": (["kim..example.com"], "is not a valid DNS name"),
    "http path": ([HOST, "--http-path", "health"], "must start with '/'"),
    "timeout": ([HOST, "--timeout", "0"], "--timeout must be a positive number"),
    "bad mode": ([HOST, "--mode", "strict"], "Invalid value for '--mode'"),
    "ca and cacert": ([HOST, "--ca", "example.com", "--cacert", "{ca}"], "give --ca NAME or --cacert FILE"),
    "client and cert": ([HOST, "--client", "c", "--cert", "{client_cert}", "--key", "{client_key}"],
                        "give --client NAME or --cert FILE --key FILE"),
}


@pytest.mark.parametrize("case", list(USAGE_CASES))
def test_usage_errors(pki, case, tmp_path):
    args, needle = USAGE_CASES[case]
    files = {"client_cert": pki.client.cert, "client_key": pki.client.key, "server_key": pki.server.key,
             "ca": pki.ca.cert}
    args = [a.format(**files) for a in args]
    # a port nobody listens on: usage errors must be reported before any connection
    if "--connect" not in args and args:
        args += ["--connect", f"127.0.0.1:{free_port()}"]
    res = verify_cli(*args, env={"KIMPKI_HOME": str(tmp_path / "home")})
    assert_one_line_error(res, 2, needle)
    assert res.out == ""


def test_encrypted_client_key_is_a_usage_error_not_a_prompt(pki, tmp_path):
    enc = tmp_path / "enc.key"
    openssl("pkey", "-in", pki.client.key, "-aes256", "-passout", "pass:secret", "-out", enc)
    res = verify_cli(HOST, "--connect", f"127.0.0.1:{free_port()}", "--cacert", pki.ca.cert,
                     "--cert", pki.client.cert, "--key", enc, timeout=20)
    assert_one_line_error(res, 2, f"client key {enc} is encrypted")


# --------------------------------------------------------------------------- the store

def test_store_names_for_ca_and_client(kimpki, tmp_path):
    kimpki.ok("ca", "init", "example.com", "--org", "example Inc.")
    server = kimpki.json("issue", HOST)
    client = kimpki.json("issue", "--client", "kim-client.example.com")
    from tests.tlspeers import Issued

    env = {"KIMPKI_HOME": str(kimpki.home)}
    with TLSServer(Issued(Path(server["cert"]), Path(server["key"])), client_ca=Path(server["ca"])) as srv:
        d = verify_json(HOST, "--connect", at(srv), "--ca", "example.com", "--client", "kim-client.example.com",
                        code=0, reason=None, env=env)
        assert d["ca"] == "CA example.com"
        assert d["client_certificate"] == f"kim-client.example.com (serial {client['serial']})"
        assert d["served_chain"][0]["serial"] == server["serial"]
        res = verify_cli(HOST, "--connect", at(srv), "--ca", "nope", env=env)
        assert_one_line_error(res, 1, "--ca nope: no CA named 'nope'")  # an unknown CA is exit 1 everywhere
        res = verify_cli(HOST, "--connect", at(srv), "--ca", "example.com", "--client", "nope", env=env)
        assert_one_line_error(res, 1, "--client nope: no certificate named 'nope'")


# --------------------------------------------------------------------------- the library

def test_check_many_over_sni_hosts(pki):
    """``verify --all``'s engine over 100 SNI hosts on one server: every report, in order. Its speed
    (target: 2 s) is measured by ``scripts/bench verify``, not asserted here."""
    hosts = [f"h{i:03d}.example.com" for i in range(100)]
    creds = pki.ca.issue_many(hosts)
    with TLSServer(pki.server, sni=creds, strict_sni=True) as srv:
        targets = [make_target(h, connect=at(srv), ca_file=str(pki.ca.cert), timeout=5) for h in hosts]
        targets.append(make_target("unknown.example.com", connect=at(srv), ca_file=str(pki.ca.cert)))
        reports = check_many(targets)
    assert [r.host for r in reports] == hosts + ["unknown.example.com"]
    assert all(r.ok for r in reports[:-1]), [r.message for r in reports if not r.ok]
    assert all(r.leaf.dns_names == [h] for r, h in zip(reports, hosts))
    assert reports[-1].reason is Reason.TLS_ERROR


def test_report_to_dict_is_json_ready(pki):
    with TLSServer(pki.server) as srv:
        report = check_endpoint(make_target(HOST, connect=at(srv), ca_file=str(pki.ca.cert)))
    assert report.ok and report.reason is None and report.message is None
    d = report.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["checks"][-1] == {"name": "accepted", "ok": True,
                               "detail": "the server accepted a client without a certificate (session ticket received)"}


def test_bad_input_is_a_report_reason_in_the_library(pki):
    report = check_endpoint(make_target(HOST, ca_file="/nonexistent.crt"))
    assert report.reason is Reason.BAD_INPUT
    assert report.message == "bad_input: cannot read CA file /nonexistent.crt: No such file or directory"


@pytest.mark.parametrize("text, expected", [
    ("kim.example.com", ("kim.example.com", None)),
    ("kim.example.com:8443", ("kim.example.com", 8443)),
    ("127.0.0.1", ("127.0.0.1", None)),
    ("127.0.0.1:8443", ("127.0.0.1", 8443)),
    ("[::1]", ("::1", None)),
    ("[::1]:8443", ("::1", 8443)),
    ("::1", ("::1", None)),
    (":8443", ("", 8443)),
])
def test_split_host_port(text, expected):
    assert split_host_port(text, "--connect") == expected


def test_make_target_defaults_and_precedence():
    t = make_target("KIM.Example.com.", connect="127.0.0.1")
    assert (t.host, t.connect_address, t.port, t.mode) == ("kim.example.com", "127.0.0.1", 443, Mode.SIMPLE)
    t = make_target("kim.example.com:8443", connect=":9443", client_cert="c.crt", client_key="c.key")
    assert (t.connect_address, t.port, t.mode) == ("kim.example.com", 9443, Mode.MUTUAL)
    assert make_target("bücher.example").host == "xn--bcher-kva.example"
    t = make_target("kim.example.com", connect="[::1]:8443", client_cert="c", client_key="k", mode="simple")
    assert (t.endpoint, t.mode) == ("[::1]:8443", Mode.SIMPLE)
    with pytest.raises(UsageError):
        make_target("kim.example.com", mode="mutual")
