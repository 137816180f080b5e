"""`kimpki verify` with the store: --ca/--client by name, "is this the current certificate?", --all."""

from pathlib import Path

from tests.conftest import assert_one_line_error
from tests.tlspeers import Issued, TLSServer


def issued(d: dict) -> Issued:
    return Issued(Path(d["cert"]), Path(d["key"]))


def test_verify_by_store_names_and_the_current_check(kimpki):
    kimpki.ok("ca", "init", "example.com")
    first = kimpki.json("issue", "kim.example.com")
    client = kimpki.json("issue", "--client", "kim-client.example.com")
    with TLSServer(issued(first), client_ca=Path(first["ca"])) as srv:
        d = kimpki.json("verify", "kim.example.com", "--connect", f"127.0.0.1:{srv.port}", "--ca", "example.com",
                        "--client", "kim-client.example.com", "--mode", "mutual", "--http-path", "/health")
        assert d["ok"] and d["served_chain"][0]["serial"] == first["serial"]
        current = next(c for c in d["checks"] if c["name"] == "current")
        assert current["ok"] and first["serial"] in current["detail"], current
        # The server saw the store's client certificate and the GET.
        seen = [(h.client_serial, h.request) for h in srv.handshakes if h.ok and h.request]
        assert (client["serial"], "GET /health HTTP/1.1") in seen, seen
        # Re-issue in the store without redeploying: the gateway now serves a stale certificate.
        kimpki.ok("issue", "kim.example.com")
        res = kimpki("verify", "kim.example.com", "--connect", f"127.0.0.1:{srv.port}", "--ca", "example.com",
                     "--client", "kim-client.example.com")
        assert_one_line_error(res, 1, "current:", first["serial"])


def test_verify_all_checks_every_server_certificate_concurrently(kimpki):
    kimpki.ok("ca", "init", "example.com")
    hosts = [f"h{i}.example.com" for i in range(12)]
    creds = {h: issued(kimpki.json("issue", h)) for h in hosts}
    kimpki.ok("issue", "--client", "kim-client.example.com")  # client certificates are not checked
    with TLSServer(creds[hosts[0]], sni=creds) as srv:
        rows = kimpki.json("verify", "--all", "--connect", f"127.0.0.1:{srv.port}", "--http-path", "/health")["items"]
        assert sorted(r["host"] for r in rows) == sorted(hosts) and all(r["ok"] for r in rows)
        out = kimpki.ok("verify", "--all", "--connect", f"127.0.0.1:{srv.port}").out
        assert "12 passed, 0 failed" in out
        # One host's certificate re-issued but not deployed: --all fails and names it.
        kimpki.ok("issue", "h3.example.com")
        res = kimpki("verify", "--all", "--connect", f"127.0.0.1:{srv.port}")
        assert_one_line_error(res, 1, "1 of 12 checks failed", "h3.example.com")


def test_verify_usage_errors(kimpki):
    assert_one_line_error(kimpki("verify"), 2, "give HOST")
    assert_one_line_error(kimpki("verify", "--all", "kim.example.com"), 2, "--all")


def test_verify_all_checks_a_mutual_gateway_with_a_client_certificate_from_the_store(kimpki):
    kimpki.ok("ca", "init", "example.com")
    server = kimpki.json("issue", "kim-new.example.com")
    with TLSServer(issued(server), client_ca=Path(server["ca"])) as srv:
        # No client certificate yet: the refusal says how to make --all able to check it.
        res = kimpki("verify", "--all", "--connect", f"127.0.0.1:{srv.port}", "--json")
        (row,) = res.json["items"]
        assert (res.code, row["reason"]) == (1, "client_certificate_refused")
        assert "kimpki issue --client NAME --ca example.com" in row["message"]
        client = kimpki.json("issue", "--client", "kim-client.example.com")
        (row,) = kimpki.json("verify", "--all", "--connect", f"127.0.0.1:{srv.port}")["items"]
        assert row["ok"] and row["mode"] == "mutual", row
        assert row["client_certificate"] and "kim-client.example.com" in row["client_certificate"]
        current = next(c for c in row["checks"] if c["name"] == "current")
        assert current["ok"] and server["serial"] in current["detail"], current
        assert client["serial"] in {h.client_serial for h in srv.handshakes if h.ok}
