"""``kimpki check`` on a MUTUAL credential that carries CRLs (KIM0007-KIM0010): Envoy demands a
CRL for every CA of a client's chain and refuses every client of a CA whose CRL is missing or
past nextUpdate. Real CLI on manifest files, certificates and CRLs made by kimpki."""

from __future__ import annotations

import base64
import re
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from kimpki.ops import check


@pytest.fixture
def deploy(kimpki, tmp_path):
    """root.example > issuing.example; a MUTUAL credential for kim.example.com carrying both CRLs."""
    k = kimpki
    k.ok("ca", "init", "root.example")
    k.ok("ca", "init", "issuing.example", "--parent", "root.example")
    k.ok("issue", "kim.example.com", "--ca", "issuing.example")
    k.ok("issue", "--client", "a.example.com", "--ca", "issuing.example")
    k.ok("revoke", "a.example.com")
    folder = tmp_path / "deploy"
    folder.mkdir()
    (folder / "kim.yaml").write_text(k.ok("secret", "create", "kim-credential", "--cert", "kim.example.com",
                                          "--mutual", "--dry-run", "-o", "yaml").out)
    (folder / "gateway.yaml").write_text(k.ok("gateway", "render", "--host", "kim.example.com", "--credential",
                                              "kim-credential", "--mode", "MUTUAL").out)
    return k, folder


def set_crls(folder, pem: bytes) -> None:
    secret = yaml.safe_load((folder / "kim.yaml").read_text())
    secret["data"]["crl"] = base64.b64encode(pem).decode()
    (folder / "kim.yaml").write_text(yaml.safe_dump(secret))


def crl_findings(res) -> list[tuple[str, str, str | None]]:
    return [(f["check"], f["status"], f["code"]) for f in res.json["findings"] if f["check"].startswith("crl_")]


def crl_of(k, ca: str) -> bytes:
    return (k.home / "cas" / ca / "crl.pem").read_bytes()


def signed_days_ago(k, ca: str, days: float) -> bytes:
    """The CA's CRL as signed ``days`` ago (valid 7 days)."""
    from kimpki.ops import revoking
    from kimpki.ops.authority import no_passphrase
    from kimpki.store import Store

    store = Store.open(k.home)
    try:
        return revoking.current_crl(store, ca, now=datetime.now(timezone.utc) - timedelta(days=days),
                                    passphrase=no_passphrase, refresh=True).pem
    finally:
        store.close()


def test_a_complete_fresh_set_passes(deploy):
    k, folder = deploy
    res = k("check", "-f", folder, "--json")
    assert res.code == 0, res.out
    assert crl_findings(res) == [("crl_complete", "ok", None), ("crl_fresh", "ok", None), ("crl_fresh", "ok", None)]
    detail = next(f["detail"] for f in res.json["findings"] if f["check"] == "crl_complete")
    assert "CN=root.example" in detail and "CN=issuing.example" in detail


@pytest.mark.parametrize("case,code,status,needle", [
    ("unreadable", "KIM0007", "error", "holds no readable CRL"),
    ("another CA's", "KIM0007", "error", "none signed by a CA of the chain"),
    ("root only", "KIM0008", "error", "but none of CN=issuing.example"),
    ("expired", "KIM0009", "error", "expired on"),
    ("stale", "KIM0010", "warning", "last third of its validity"),
])
def test_each_crl_problem_has_its_code(deploy, case, code, status, needle):
    k, folder = deploy
    if case == "unreadable":
        set_crls(folder, b"-----BEGIN X509 CRL-----\nbm90IGEgQ1JM\n-----END X509 CRL-----\n")
    elif case == "another CA's":
        k.ok("ca", "init", "other.example")
        k.ok("crl", "other.example", "--out", folder.parent / "other.crl")
        set_crls(folder, (folder.parent / "other.crl").read_bytes())
    elif case == "root only":
        set_crls(folder, crl_of(k, "root.example"))
    else:
        old = signed_days_ago(k, "root.example", 8 if case == "expired" else 5)
        set_crls(folder, old + crl_of(k, "issuing.example"))
    res = k("check", "-f", folder, "--json")
    assert res.code == (1 if status == "error" else 0), res.out
    bad = [f for f in res.json["findings"] if f["code"] == code]
    assert len(bad) == 1 and bad[0]["status"] == status and needle in bad[0]["detail"], res.json["findings"]
    assert bad[0]["reason"] == check.CODES[code] and bad[0]["credential"] == "kim-credential"
    text = k("check", "-f", folder)
    assert f"{status.upper()} {code}" in text.out


def test_no_crl_no_finding(kimpki, tmp_path):
    """A credential that carries no CRL: Envoy checks none, and check says nothing of CRLs."""
    k = kimpki
    k.ok("ca", "init", "root.example")
    k.ok("issue", "kim.example.com")
    folder = tmp_path / "deploy"
    folder.mkdir()
    (folder / "kim.yaml").write_text(k.ok("secret", "create", "kim-credential", "--cert", "kim.example.com",
                                          "--mutual", "--format", "tls", "--dry-run", "-o", "yaml").out)
    (folder / "gateway.yaml").write_text(k.ok("gateway", "render", "--host", "kim.example.com", "--credential",
                                              "kim-credential", "--mode", "MUTUAL").out)
    res = k("check", "-f", folder, "--json")
    assert res.code == 0 and crl_findings(res) == []
    k.ok("revoke", "kim.example.com")  # the tls key set: ca.crl beside ca.crt
    k.ok("issue", "kim.example.com")
    (folder / "kim.yaml").write_text(k.ok("secret", "create", "kim-credential", "--cert", "kim.example.com",
                                          "--mutual", "--format", "tls", "--dry-run", "-o", "yaml").out)
    res = k("check", "-f", folder, "--json")
    assert res.code == 0 and crl_findings(res) == [("crl_complete", "ok", None), ("crl_fresh", "ok", None)]


def test_check_help_lists_the_crl_codes(kimpki):
    out = kimpki.ok("check", "--help").out
    for code in ("KIM0007", "KIM0008", "KIM0009", "KIM0010"):
        assert code in out and code in check.CODES and code in check.__doc__


def test_status_shows_each_crls_next_update(deploy):
    """The store's CRL per CA, and the CRLs the Secrets carry (how many carry each), with their
    next update and whether they expired; --json and text."""
    k, folder = deploy
    store = k.json("status")
    assert [(r["ca"], r["state"], r["secrets"]) for r in store["crls"]] == [
        ("issuing.example", "valid", 0), ("root.example", "valid", 0)]
    root = next(r for r in store["crls"] if r["ca"] == "root.example")
    from kimpki.pki.revocation import crl_number
    from cryptography import x509

    on_disk = x509.load_pem_x509_crl(crl_of(k, "root.example"))
    assert root["crl_number"] == crl_number(on_disk)
    assert root["next_update"] == on_disk.next_update_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    text = k.ok("status").out
    day = root["next_update"][:16].replace("T", " ")
    assert "CRLs:" in text and re.search(rf"^root\.example +{root['crl_number']} +{day} +valid$", text, re.M), text

    set_crls(folder, signed_days_ago(k, "root.example", 8) + crl_of(k, "issuing.example"))
    places = k.json("status", "--manifests", folder)
    assert [(r["ca"], r["state"], r["secrets"]) for r in places["crls"]] == [
        ("issuing.example", "valid", 1), ("root.example", "expired", 1)]
    text = k.ok("status", "--manifests", folder).out
    assert "CRLs:" in text and "expired" in text.split("CRLs:")[1]
