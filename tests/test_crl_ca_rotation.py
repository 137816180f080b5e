"""CA rotation and revocation: a revoked client certificate is not carried forward to the new CA
(nor does it keep the old one from retiring), and a retired CA's CRL leaves the CRLs delivered."""

from __future__ import annotations

import base64

import yaml
from cryptography import x509


def crl_issuers(deploy) -> set[str]:
    (secret,) = [s for s in yaml.safe_load_all((deploy / "kim.yaml").read_text()) if s]
    pem = base64.b64decode(secret["data"]["crl"])
    marker = b"-----BEGIN X509 CRL-----"
    return {x509.load_pem_x509_crl(marker + p).issuer.rfc4514_string() for p in pem.split(marker)[1:]}


def test_rotate_skips_a_revoked_client_and_retire_drops_the_old_crl(kimpki, tmp_path):
    k = kimpki
    k.ok("ca", "init", "root.example")
    k.ok("issue", "kim.example.com", "--ca", "root.example")
    k.ok("issue", "--client", "kept.example.com", "--ca", "root.example")
    k.ok("issue", "--client", "leaked.example.com", "--ca", "root.example")
    leaked = k.json("revoke", "leaked.example.com", "--reason", "keyCompromise")["serial"]
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    (deploy / "kim.yaml").write_text(k.ok("secret", "create", "kim-credential", "--cert", "kim.example.com",
                                          "--mutual", "--dry-run", "-o", "yaml").out)
    d = k.json("ca", "rotate", "root.example", "--manifests", deploy)
    assert d["failed"] is None, d
    clients = {c["name"]: c for c in d["clients"]}
    assert clients["kept.example.com"]["action"] == "reissued"
    assert clients["leaked.example.com"]["action"] == "skipped"
    assert clients["leaked.example.com"]["old_serial"] == leaked and "revoked on" in clients["leaked.example.com"]["reason"]
    current = {r["name"]: r for r in k.json("list")["items"]}
    assert current["leaked.example.com"]["serial"] == leaked  # no certificate from the new CA for it
    successor = d["successor"]
    assert current["kept.example.com"]["ca"] == successor
    assert "skipped (revoked on" in k.ok("ca", "rotate", "root.example", "--manifests", deploy).out
    new_cn = x509.load_pem_x509_certificate((k.home / "cas" / successor / "ca.crt").read_bytes()).subject
    assert crl_issuers(deploy) == {"CN=root.example", new_cn.rfc4514_string()}  # the overlap: both
    r = k.json("ca", "retire", "root.example", "--manifests", deploy)  # the revoked one depends on nothing
    assert r["action"] == "retired" and r["failed"] is None, r
    assert crl_issuers(deploy) == {new_cn.rfc4514_string()}  # the retired CA's CRL is no longer delivered
    renewed = k.json("renew", "--manifests", deploy)
    assert renewed["errors"] == [] and "root.example" not in renewed["crls_signed"]
