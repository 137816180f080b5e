"""The CLI as a user meets it: JSON contracts, inspect, sign, list, errors, start-up imports."""

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.conftest import Result, assert_one_line_error, openssl

ISSUE_KEYS = {"name", "cert", "key", "ca", "serial", "not_before", "not_after", "dns_names", "ip_addresses",
              "subject", "issuer"}


def test_issue_json_contract(kimpki):
    d = kimpki.json("issue", "kim.example.com", "10.0.0.7", "::1", "--org", "kim organization")
    assert ISSUE_KEYS <= set(d)
    for k in ("cert", "key", "ca"):
        assert Path(d[k]).is_absolute() and Path(d[k]).exists()
    assert d["dns_names"] == ["kim.example.com"] and d["ip_addresses"] == ["10.0.0.7", "::1"]
    int(d["serial"], 16)
    for k in ("not_before", "not_after"):
        assert d[k].endswith("Z")
        datetime.fromisoformat(d[k].replace("Z", "+00:00"))
    assert d["subject"] == "CN=kim.example.com,O=kim organization"
    assert d["issuer"] == "CN=kimpki default CA,O=kimpki"


def test_first_issue_creates_a_default_ca_and_says_so(kimpki):
    res = kimpki("issue", "kim.example.com")
    assert res.code == 0 and "created the default CA 'kimpki-ca'" in res.err
    second = kimpki("issue", "b.example.com")
    assert second.code == 0 and "created the default CA" not in second.err, second.err


def test_client_certificate(kimpki):
    d = kimpki.json("issue", "--client", "kim-client.example.com")
    cert = x509.load_pem_x509_certificate(Path(d["cert"]).read_bytes())
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert [o._name for o in eku] == ["clientAuth"]
    assert d["kind"] == "client"


def test_ca_list_and_default(kimpki):
    kimpki.ok("ca", "init", "example.com", "--org", "example Inc.")
    kimpki.ok("ca", "init", "second")
    kimpki.ok("ca", "init", "inter", "--parent", "second")
    cas = kimpki.json("ca", "list")["items"]
    assert [(c["name"], c["default"], c["kind"], c["parent"]) for c in cas] == [
        ("example.com", True, "root", None), ("second", False, "root", None), ("inter", False, "intermediate", "second")]
    text = kimpki.ok("ca", "list").out
    assert "* example.com" in text
    d = kimpki.json("issue", "kim.example.com")
    assert d["ca_name"] == "example.com"


def test_unknown_ca_is_one_line_exit_1(kimpki):
    kimpki.ok("ca", "init", "root")
    assert_one_line_error(kimpki("issue", "kim.example.com", "--ca", "nope"), 1, "no CA named 'nope'", "root")


def test_inspect_pem_chain_der_and_chain_check(kimpki, tmp_path):
    kimpki.ok("ca", "init", "root")
    kimpki.ok("ca", "init", "inter", "--parent", "root")
    d = kimpki.json("issue", "kim.example.com", "--ca", "inter")
    info = kimpki.json("inspect", d["cert"], "--ca", "root")
    assert len(info["certificates"]) == 2
    leaf = info["certificates"][0]
    assert leaf["serial"] == d["serial"] and leaf["dns_names"] == ["kim.example.com"]
    assert leaf["key"] == "EC P-256" and leaf["is_ca"] is False and 88 <= leaf["days_left"] <= 90
    assert len(leaf["sha256_fingerprint"]) == 64
    assert info["chain"]["ok"] and len(info["chain"]["path"]) == 3
    # DER input.
    der = tmp_path / "leaf.der"
    der.write_bytes(x509.load_pem_x509_certificate(Path(d["cert"]).read_bytes()).public_bytes(serialization.Encoding.DER))
    assert kimpki.json("inspect", der)["certificates"][0]["serial"] == d["serial"]
    # A chain check against an unrelated CA fails with exit 1 and says where.
    kimpki.ok("ca", "init", "other")
    res = kimpki("inspect", d["cert"], "--ca", "other")
    assert_one_line_error(res, 1, "does not chain")
    # Against a CA file too.
    assert kimpki.json("inspect", d["cert"], "--ca", kimpki.home / "cas/root/ca.crt")["chain"]["ok"]
    text = kimpki.ok("inspect", d["cert"]).out
    assert "SANs:        DNS:kim.example.com" in text and "SHA-256" in text


def test_inspect_bad_input(kimpki, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    assert_one_line_error(kimpki("inspect", junk), 2, "not a readable certificate")
    assert_one_line_error(kimpki("inspect", tmp_path / "missing.pem"), 2, "cannot read")


@pytest.mark.parametrize("content,reason", [
    (b"apiVersion: v1\nkind: Secret\n", "neither PEM (no -----BEGIN line) nor DER"),
    (b"0\x82\x05\x00" + bytes(40), "DER that is malformed or cut short"),
    (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "a PEM block whose contents are not valid DER"),
], ids=["yaml", "short-der", "bad-pem"])
def test_unreadable_input_is_explained_in_plain_words(kimpki, tmp_path, content, reason):
    """cryptography's own reasons are Rust debug strings (``ParseError { kind: ShortData ...``)."""
    bad = tmp_path / "bad"
    bad.write_bytes(content)
    assert_one_line_error(kimpki("inspect", bad), 2, f"not a readable certificate ({reason})")
    result = kimpki("sign", bad)  # a PEM file of another kind keeps cryptography's own (plain) words
    assert_one_line_error(result, 2, "not a readable certificate signing request (")
    assert "ParseError" not in result.err


# ecdsa-with-SHA256, and the same OID with its last arc changed: an algorithm no library knows.
ECDSA_SHA256_OID = bytes.fromhex("06082a8648ce3d040302")
UNKNOWN_SIGNATURE_OID = bytes.fromhex("06082a8648ce3d04037f")


def off_curve(der: bytes, public_key) -> bytes:
    """``der`` with the EC point of ``public_key`` moved off its curve (the last bit of y flipped)."""
    point = public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    assert der.count(point) == 1
    return der.replace(point, point[:-1] + bytes([point[-1] ^ 1]))


def test_certificate_whose_parts_do_not_read_is_a_usage_error(kimpki, tmp_path):
    """cryptography loads a certificate's outer structure only; its key, names, extensions and
    signature algorithm are parsed when first read. A corrupt one is refused where it is loaded,
    naming the part, not later as an internal error."""
    d = kimpki.json("issue", "kim.example.com")
    cert = x509.load_pem_x509_certificate(Path(d["cert"]).read_bytes())
    der = cert.public_bytes(serialization.Encoding.DER)
    bad_key, bad_algorithm = tmp_path / "bad-key.der", tmp_path / "bad-algorithm.der"
    bad_key.write_bytes(off_curve(der, cert.public_key()))
    bad_algorithm.write_bytes(der.replace(ECDSA_SHA256_OID, UNKNOWN_SIGNATURE_OID))
    for command in (["inspect"], ["inspect", d["cert"], "--ca"]):
        assert_one_line_error(kimpki(*command, bad_key), 2, "not a readable certificate (its public key cannot be read")
        assert_one_line_error(kimpki(*command, bad_algorithm), 2,
                              "not a readable certificate (its signature algorithm cannot be read: Signature "
                              "algorithm OID: 1.2.840.10045.4.3.127 not recognized)")
    res = kimpki("ca", "import", "imported", "--cert", bad_key, "--key", d["key"])
    assert_one_line_error(res, 2, "not a readable certificate (its public key cannot be read")
    # A PEM chain whose second certificate is the bad one: refused too, whichever reads it.
    chain = tmp_path / "chain.pem"
    bad_pem = x509.load_der_x509_certificate(bad_key.read_bytes()).public_bytes(serialization.Encoding.PEM)
    chain.write_bytes(Path(d["cert"]).read_bytes() + bad_pem)
    assert_one_line_error(kimpki("inspect", chain), 2, "its public key cannot be read")


def test_error_quoting_input_is_one_line(kimpki, tmp_path):
    """Messages quote what the user gave (a file name, a certificate's subject): a newline in it
    is shown escaped, so the error stays one line."""
    res = kimpki("inspect", "a\nb.crt")
    assert_one_line_error(res, 2, "cannot read a\\nb.crt: no such file")
    # A subject with a newline in it (cryptography reads it), checked against a CA that did not sign it.
    d = kimpki.json("issue", "kim.example.com")
    der = x509.load_pem_x509_certificate(Path(d["cert"]).read_bytes()).public_bytes(serialization.Encoding.DER)
    cert = tmp_path / "newline.der"
    cert.write_bytes(der.replace(b"kim.example.com", b"kim.exampl\n.com"))
    kimpki.ok("ca", "init", "other")
    res = kimpki("inspect", cert, "--ca", "other")
    assert_one_line_error(res, 1, "CN=kim.exampl\\n.com")


def test_argument_that_is_not_utf8_is_a_usage_error(kimpki):
    """Python keeps an argument's undecodable bytes as lone surrogates, which no name, host or
    certificate field can hold: refused at the door, naming the argument."""
    kimpki.ok("ca", "init", "example.com")
    for args in (["ca", "init", "x", "--common-name", b"caf\xe9"], ["issue", "kim.example.com", "--org", b"caf\xe9"],
                 ["revoke", b"caf\xe9"], ["inspect", b"caf\xe9.crt"]):
        proc = subprocess.run([sys.executable, "-m", "kimpki", *args], capture_output=True, cwd=kimpki.cwd,
                              env=kimpki.env, timeout=60)
        res = Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())
        assert_one_line_error(res, 2, "argument 'caf\\xe9", "is not UTF-8 text")
    # ... on one line, whatever else the argument holds
    proc = subprocess.run([sys.executable, "-m", "kimpki", "inspect", b"caf\xe9\nevil"], capture_output=True,
                          cwd=kimpki.cwd, env=kimpki.env, timeout=60)
    res = Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())
    assert_one_line_error(res, 2, "argument 'caf\\xe9\\nevil' is not UTF-8 text")
    assert res.err.count("\n") == 1


def test_sign_csr_adds_sans_and_refuses_a_bad_signature(kimpki, tmp_path):
    kimpki.ok("ca", "init", "root")
    openssl("req", "-out", "b.csr", "-newkey", "rsa:2048", "-nodes", "-keyout", "b.key",
            "-subj", "/CN=bookinfo.com/O=bookinfo organization", cwd=tmp_path)
    d = kimpki.json("sign", tmp_path / "b.csr", "--san", "www.bookinfo.com", "--out", tmp_path / "b.crt")
    assert d["dns_names"] == ["bookinfo.com", "www.bookinfo.com"]
    assert d["subject"] == "CN=bookinfo.com,O=bookinfo organization"
    assert (tmp_path / "b.crt").read_bytes() == Path(d["cert"]).read_bytes()
    # The certificate matches the requester's key.
    assert openssl("x509", "-in", tmp_path / "b.crt", "-noout", "-pubkey").stdout == \
        openssl("pkey", "-in", tmp_path / "b.key", "-pubout").stdout
    # Tamper with the CSR's signature: refused.
    csr = x509.load_pem_x509_csr((tmp_path / "b.csr").read_bytes())
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0xFF
    (tmp_path / "bad.csr").write_bytes(bytes(der))
    assert_one_line_error(kimpki("sign", tmp_path / "bad.csr"), 2, "signature does not verify")


def list_at(capsys, home: Path, when: datetime, *args: str) -> str:
    """`kimpki list` run in this process with the clock at ``when`` (time-machine)."""
    import time_machine

    from kimpki.cli.main import main

    capsys.readouterr()
    with time_machine.travel(when, tick=False), pytest.raises(SystemExit) as e:
        main(["--home", str(home), "list", *args])
    out, err = capsys.readouterr()
    assert e.value.code == 0, err
    return out


def test_list_states(kimpki, capsys):
    kimpki.ok("ca", "init", "root")
    fresh = kimpki.json("issue", "fresh.example.com", "--days", "90")
    soon = kimpki.json("issue", "soon.example.com", "--days", "0.5")
    issued = datetime.fromisoformat(soon["not_before"].replace("Z", "+00:00")) + timedelta(minutes=5)

    def states(when: datetime) -> dict[str, str]:
        rows = json.loads(list_at(capsys, kimpki.home, when, "--json"))["items"]
        return {r["name"].split(".")[0]: r["state"] for r in rows}

    # The renewal window is the last third of the lifetime (cert-manager's rule): for the 12-hour
    # certificate the last 4 hours, for the 90-day one the last 30 days.
    h, d = timedelta(hours=1), timedelta(days=1)
    assert states(issued) == {"fresh": "valid", "soon": "valid"}
    assert states(issued + 7 * h) == {"fresh": "valid", "soon": "valid"}
    assert states(issued + 9 * h) == {"fresh": "valid", "soon": "expiring"}
    assert states(issued + 13 * h) == {"fresh": "valid", "soon": "expired"}
    assert states(issued + 59 * d) == {"fresh": "valid", "soon": "expired"}
    assert states(issued + 61 * d) == {"fresh": "expiring", "soon": "expired"}
    assert states(issued + 91 * d) == {"fresh": "expired", "soon": "expired"}
    assert states(issued - h) == {"fresh": "not-yet-valid", "soon": "not-yet-valid"}  # notBefore is 5 minutes back
    # The text table says the same in its STATE column, with the days left.
    table = list_at(capsys, kimpki.home, issued + 61 * d).splitlines()
    assert table[0].split()[:3] == ["NAME", "KIND", "HOSTS"] and table[0].split()[-1] == "STATE"
    rows = {line.split()[0]: line.split() for line in table[1:]}
    days_left = json.loads(list_at(capsys, kimpki.home, issued + 61 * d, "--json"))["items"][0]["days_left"]
    assert days_left in (28, 29)  # 29 days less the seconds between notBefore and notAfter's rounding
    assert rows["fresh.example.com"][-2:] == [str(days_left), "expiring"] and rows["soon.example.com"][-1] == "expired"
    assert rows["fresh.example.com"][3] == fresh["serial"][:16]
    row = json.loads(list_at(capsys, kimpki.home, issued, "--json"))["items"][0]
    assert set(row) >= {"name", "hosts", "serial", "ca", "not_after", "days_left", "state"}


def test_import_refuses_a_mismatched_key(kimpki, tmp_path):
    openssl("req", "-x509", "-nodes", "-newkey", "rsa:2048", "-subj", "/CN=a", "-keyout", "a.key", "-out", "a.crt",
            cwd=tmp_path)
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "b.key", cwd=tmp_path)
    assert_one_line_error(kimpki("ca", "import", "a", "--cert", tmp_path / "a.crt", "--key", tmp_path / "b.key"),
                          1, "does not belong")


def test_usage_errors_exit_2(kimpki):
    assert_one_line_error(kimpki("issue"), 2, "Missing argument 'HOST [HOST...]'")
    assert_one_line_error(kimpki("issue", "kim.example.com", "--key-type", "dsa"), 2,
                          "'dsa' is not one of 'ec-p256', 'ec-p384', 'rsa-2048', 'rsa-3072', 'rsa-4096'")
    assert_one_line_error(kimpki("issue", "kim.example.com", "--days", "banana"), 2, "invalid --days 'banana'")
    assert_one_line_error(kimpki("nonsense"), 2, "No such command 'nonsense'")
    assert_one_line_error(kimpki("issue", "kim.example.com", "--days", "-3"), 2, "positive")


def test_help_teaches(kimpki):
    out = kimpki.ok("issue", "--help").out
    assert "kimpki issue kim.example.com --org" in out and "--client" in out
    assert "openssl req -x509" in kimpki.ok("ca", "--help").out


@pytest.mark.parametrize("args", [["--help"], ["issue", "kim.example.com"], ["list"], ["inspect", "--help"],
                                  ["ca", "list"]])
def test_local_commands_never_import_kubernetes(kimpki, args):
    code = ("import sys, runpy\n"
            f"sys.argv = ['kimpki', *{args!r}]\n"
            "try:\n    runpy.run_module('kimpki', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'urllib3', 'yaml', 'cel', 'jsonschema'))\n"
            "print('IMPORTED', bad)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=kimpki.env, capture_output=True, text=True,
                          cwd=kimpki.cwd)
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTED []" in proc.stdout, proc.stdout


def test_a_bug_is_one_line_unless_debugging(monkeypatch, capsys):
    """An unexpected exception (a bug, not bad input) is still one line and exit 1; KIMPKI_DEBUG=1
    shows the traceback instead."""
    import pytest

    from kimpki.cli import main as entry

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(entry.cli, "main", broken)
    monkeypatch.delenv("KIMPKI_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        entry.main(["list"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kimpki: internal error: RuntimeError: boom")
    assert "KIMPKI_DEBUG=1" in err
    monkeypatch.setenv("KIMPKI_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        entry.main(["list"])
