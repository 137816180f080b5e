"""`kimpki inspect` of a CRL and of an OCSP response (a staple), checked against openssl's reading."""

from __future__ import annotations

import base64
import json
import re
import subprocess

from tests.conftest import assert_one_line_error


def _home_with_revoked_client(kimpki):
    kimpki.ok("ca", "init", "example.com")
    kimpki.ok("ca", "init", "other.example")
    kimpki.ok("issue", "kim.example.com", "--ca", "example.com")
    alice = kimpki.json("issue", "alice", "--client", "--ca", "example.com")
    kimpki.ok("revoke", "alice", "--reason", "keyCompromise")
    return alice


def _openssl(*args: str) -> str:
    return subprocess.run(["openssl", *args], check=True, capture_output=True, text=True).stdout


def test_inspect_crl_pem_and_der_agree_with_openssl(kimpki):
    alice = _home_with_revoked_client(kimpki)
    serial = alice["serial"]
    pem = kimpki.cwd / "example.com.crl"
    der = kimpki.cwd / "example.com.der"
    kimpki.ok("crl", "example.com", "--out", pem)
    kimpki.ok("crl", "example.com", "--der", "--out", der)
    for path in (pem, der):
        d = kimpki.json("inspect", path, "--ca", "example.com")
        assert d["kind"] == "crl" and d["certificates"] == []
        crl = d["crl"]
        assert crl["issuer"] == "CN=example.com"
        assert [(e["serial"], e["reason"]) for e in crl["entries"]] == [(serial, "keyCompromise")]
        assert d["signature"] == {"ok": True, "against": "CA example.com", "signer": "CN=example.com", "error": None}
        number = int(_openssl("crl", "-in", str(pem), "-noout", "-crlnumber").split("=")[1], 16)
        assert crl["number"] == number
    text = kimpki.ok("inspect", pem).out
    assert "revoked:     1 certificate(s)" in text and serial in text and "keyCompromise" in text


def test_inspect_crl_signed_by_another_ca_fails_in_one_line(kimpki):
    _home_with_revoked_client(kimpki)
    pem = kimpki.cwd / "example.com.crl"
    kimpki.ok("crl", "example.com", "--out", pem)
    res = kimpki("inspect", pem, "--ca", "other.example")
    assert_one_line_error(res, 1, "the CRL is not signed by CA other.example")
    assert "signature: FAILED" in res.out
    d = kimpki("inspect", pem, "--ca", "other.example", "--json")
    assert d.code == 1 and json.loads(d.out)["signature"]["ok"] is False


def _staple(kimpki) -> bytes:
    secret = json.loads(kimpki.ok("secret", "create", "kim-credential", "--cert", "kim.example.com",
                                  "--ocsp-staple", "--dry-run", "-o", "json").out)
    secret = secret["items"][0] if "items" in secret else secret
    return base64.b64decode(secret["data"]["tls.ocsp-staple"])


def test_inspect_ocsp_staple_good_then_revoked_agrees_with_openssl(kimpki):
    _home_with_revoked_client(kimpki)
    served = kimpki.json("inspect", "kim.example.com")["certificates"][0]["serial"]
    staple = kimpki.cwd / "staple.der"
    staple.write_bytes(_staple(kimpki))
    d = kimpki.json("inspect", staple, "--ca", "example.com")
    assert d["kind"] == "ocsp_response"
    (one,) = d["ocsp_response"]["responses"]
    assert (one["serial"], one["status"], one["expired"]) == (served, "good", False)
    assert d["signature"]["ok"] is True
    assert re.search(r"Cert Status: good", _openssl("ocsp", "-respin", str(staple), "-resp_text", "-noverify"))

    kimpki.ok("revoke", "kim.example.com", "--reason", "superseded")
    staple.write_bytes(_staple(kimpki))
    (one,) = kimpki.json("inspect", staple)["ocsp_response"]["responses"]
    assert (one["status"], one["revocation_reason"]) == ("revoked", "superseded")
    said = _openssl("ocsp", "-respin", str(staple), "-resp_text", "-noverify")
    assert "Cert Status: revoked" in said and "Revocation Reason: superseded" in said
    text = kimpki.ok("inspect", staple).out
    assert "status:      revoked (superseded" in text


def test_inspect_ocsp_staple_against_another_ca_fails(kimpki):
    _home_with_revoked_client(kimpki)
    staple = kimpki.cwd / "staple.der"
    staple.write_bytes(_staple(kimpki))
    assert_one_line_error(kimpki("inspect", staple, "--ca", "other.example"), 1,
                          "the OCSP response is not signed by CA other.example")


def test_inspect_junk_is_still_not_a_readable_certificate(kimpki):
    junk = kimpki.cwd / "junk.der"
    junk.write_bytes(b"\x30\x03\x02\x01\x05")  # a DER SEQUENCE holding one INTEGER: nothing we know
    assert_one_line_error(kimpki("inspect", junk), 2, "not a readable certificate")


# ecdsa-with-SHA256, and the same OID with its last arc changed: an algorithm no library knows.
ECDSA_SHA256_OID = bytes.fromhex("06082a8648ce3d040302")
UNKNOWN_SIGNATURE_OID = bytes.fromhex("06082a8648ce3d04037f")


def test_crl_and_ocsp_response_whose_parts_do_not_read_are_one_line(kimpki):
    """Both load with their signature algorithm unread (cryptography parses it when first asked):
    an unknown one is refused when the file is read, not later as an internal error."""
    _home_with_revoked_client(kimpki)
    crl = kimpki.cwd / "example.com.der"
    kimpki.ok("crl", "example.com", "--der", "--out", crl)
    crl.write_bytes(crl.read_bytes().replace(ECDSA_SHA256_OID, UNKNOWN_SIGNATURE_OID))
    staple = kimpki.cwd / "staple.der"
    staple.write_bytes(_staple(kimpki).replace(ECDSA_SHA256_OID, UNKNOWN_SIGNATURE_OID))
    needle = "its signature algorithm cannot be read: Signature algorithm OID: 1.2.840.10045.4.3.127 not recognized"
    for args in ([], ["--ca", "example.com"]):
        assert_one_line_error(kimpki("inspect", crl, *args), 2, "example.com.der: not a readable CRL (" + needle)
        assert_one_line_error(kimpki("inspect", staple, *args), 2, "staple.der: not a readable OCSP response (" + needle)
