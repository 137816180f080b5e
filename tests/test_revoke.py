"""`kimpki revoke` and `kimpki crl`: revocations recorded once, CRLs that pkilint and openssl
accept (and that make openssl refuse exactly the revoked certificate), OCSP responses for staples.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.conftest import assert_one_line_error, openssl

LINT_CRL = Path(sys.executable).with_name("lint_crl")
LINT_OCSP = Path(sys.executable).with_name("lint_ocsp_response")


def lint(tool: Path, *args) -> str:
    r = subprocess.run([str(tool), "lint", *map(str, args)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.strip()


@pytest.fixture
def home(kimpki):
    kimpki.ok("ca", "init", "example.com")
    kimpki.ok("issue", "--client", "c1.example.com")
    kimpki.ok("issue", "--client", "c2.example.com")
    return kimpki


def cert_file(k, name: str) -> Path:
    return k.home / "certs" / name / "current" / "cert.crt"


def ca_file(k, name: str = "example.com") -> Path:
    return k.home / "cas" / name / "ca.crt"


def test_revoke_records_once_and_list_shows_it(home):
    d = home.json("revoke", "c1.example.com", "--reason", "keyCompromise")
    serial = x509.load_pem_x509_certificate(cert_file(home, "c1.example.com").read_bytes()).serial_number
    assert d["serial"] == format(serial, "x") and d["ca"] == "example.com" and d["reason"] == "keyCompromise"
    assert d["already_revoked"] is False and d["crl"]["crl_number"] == 1 and d["crl"]["revoked_entries"] == 1
    assert d["command"].startswith("kimpki revoke c1.example.com")
    again = home.json("revoke", "--serial", d["serial"].upper(), "--reason", "superseded")
    assert again["already_revoked"] is True and again["reason"] == "keyCompromise"  # the first record stands
    assert again["revoked_at"] == d["revoked_at"]
    text = home.ok("revoke", "c1.example.com").out
    assert "already revoked" in text and "nothing changed" in text
    states = {line.split()[0]: line.split()[-1] for line in home.ok("list").out.splitlines()[1:]}
    assert states == {"c1.example.com": "revoked", "c2.example.com": "valid"}
    assert home.json("crl", "example.com")["crl_number"] == 1  # nothing new was signed by the re-runs


@pytest.mark.parametrize("args, code, needle", [
    (["--serial", "abcdef"], 1, "no certificate with serial abcdef"),
    (["nosuch.example.com"], 1, "no certificate named 'nosuch.example.com'"),
    (["c1.example.com", "--serial", "ab"], 2, "one of them"),
    ([], 2, "one of them"),
    (["c1.example.com", "--reason", "boredom"], 2, "unknown revocation reason 'boredom'"),
    (["--serial", "xyz"], 2, "expected the certificate's serial in hex"),
    (["c1.example.com", "--ca", "other"], 1, "no CA named 'other'"),  # an unknown CA is exit 1 everywhere
])
def test_revoke_refusals(home, args, code, needle):
    assert_one_line_error(home("revoke", *args), code, needle)
    assert home.json("crl", "example.com")["revoked_entries"] == 0


def test_crl_is_clean_for_pkilint_and_openssl_refuses_only_the_revoked(home, tmp_path):
    home.ok("revoke", "c1.example.com", "--reason", "keyCompromise")
    crl = tmp_path / "crl.pem"
    home.ok("crl", "example.com", "--out", crl)
    assert lint(LINT_CRL, "-t", "CRL", "-p", "PKIX", crl) == ""
    # The CRL verifies against the CA, and openssl's chain check with CRLs agrees with it.
    r = openssl("crl", "-in", crl, "-noout", "-verify", "-CAfile", ca_file(home), check=False)
    assert r.returncode == 0 and b"verify OK" in r.stderr + r.stdout, r.stderr
    for name, ok in (("c1.example.com", False), ("c2.example.com", True)):
        r = openssl("verify", "-crl_check_all", "-CRLfile", crl, "-CAfile", ca_file(home), "-purpose", "sslclient",
                    cert_file(home, name), check=False)
        assert (r.returncode == 0) is ok, r.stdout + r.stderr
        if not ok:
            assert b"certificate revoked" in r.stdout + r.stderr
    # DER form: the same CRL.
    der = tmp_path / "crl.der"
    home.ok("crl", "example.com", "--der", "--out", der)
    assert x509.load_der_x509_crl(der.read_bytes()) == x509.load_pem_x509_crl(crl.read_bytes())


def test_intermediate_crls_both_levels(kimpki, tmp_path):
    """openssl -crl_check_all needs a CRL for every CA of the path (as Envoy does): the root's CRL
    revokes the intermediate itself, the intermediate's CRL its leaves."""
    k = kimpki
    k.ok("ca", "init", "root.example")
    k.ok("ca", "init", "issuing.example", "--parent", "root.example")
    k.ok("issue", "--client", "a.example.com", "--ca", "issuing.example")
    k.ok("issue", "--client", "b.example.com", "--ca", "issuing.example")
    k.ok("revoke", "a.example.com")
    both = tmp_path / "both.pem"
    both.write_text(k.ok("crl", "root.example").out + k.ok("crl", "issuing.example").out)
    untrusted = k.home / "cas" / "issuing.example" / "ca.crt"

    def check(name: str, crls: Path) -> subprocess.CompletedProcess:
        return openssl("verify", "-crl_check_all", "-CRLfile", crls, "-CAfile", ca_file(k, "root.example"),
                       "-untrusted", untrusted, cert_file(k, name), check=False)

    assert check("b.example.com", both).returncode == 0
    revoked = check("a.example.com", both)
    assert revoked.returncode == 2 and b"error 23 at 0 depth lookup: certificate revoked" in revoked.stderr, revoked
    only_root = tmp_path / "root.pem"
    only_root.write_text(k.ok("crl", "root.example").out)
    missing = check("b.example.com", only_root)  # one CRL missing: every certificate below fails
    assert missing.returncode == 2 and b"error 3 at 0 depth lookup: unable to get certificate CRL" in missing.stderr, \
        missing
    # Revoking the intermediate by serial goes into the root's CRL.
    serial = x509.load_pem_x509_certificate(untrusted.read_bytes()).serial_number
    d = k.json("revoke", "--serial", format(serial, "x"), "--reason", "cACompromise")
    assert d["ca"] == "root.example" and d["kind"] == "ca" and d["name"] == "issuing.example"
    both.write_text(k.ok("crl", "root.example").out + k.ok("crl", "issuing.example").out)
    below = check("b.example.com", both)  # its issuer is revoked now
    assert below.returncode == 2 and b"error 23 at 1 depth lookup: certificate revoked" in below.stderr, below


def test_crl_number_only_grows(home):
    numbers = [home.json("crl", "example.com", "--refresh")["crl_number"] for _ in range(3)]
    assert numbers == [1, 2, 3]
    assert home.json("crl", "example.com")["crl_number"] == 3 and home.json("crl", "example.com")["signed"] is False
    (home.home / "cas" / "example.com" / "crl.pem").unlink()  # the file lost: the inventory's number counts
    assert home.json("crl", "example.com")["crl_number"] == 4
    # A CRL on disk the inventory never recorded (a kill between the file and the commit): its
    # number counts as used.
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from kimpki.pki import revocation as rv

    ca_cert = x509.load_pem_x509_certificate(ca_file(home).read_bytes())
    key = load_pem_private_key((home.home / "cas" / "example.com" / "ca.key").read_bytes(), None)
    now = datetime.now(timezone.utc)
    stray = rv.build_crl(ca_cert, key, [], number=41, this_update=now, next_update=now + timedelta(days=1))
    (home.home / "cas" / "example.com" / "crl.pem").write_bytes(stray.public_bytes(Encoding.PEM))
    assert home.json("crl", "example.com", "--refresh")["crl_number"] == 42


def test_crl_next_update_setting_and_refresh_inside_last_third(home):
    d = home.json("crl", "example.com", "--next-update", "3d")
    this, nxt = (datetime.fromisoformat(d[k].replace("Z", "+00:00")) for k in ("this_update", "next_update"))
    assert nxt - this == timedelta(days=3)
    assert datetime.fromisoformat(d["refresh_after"].replace("Z", "+00:00")) == nxt - timedelta(days=1)
    later = home.json("crl", "example.com", "--refresh")
    assert (datetime.fromisoformat(later["next_update"].replace("Z", "+00:00"))
            - datetime.fromisoformat(later["this_update"].replace("Z", "+00:00"))) == timedelta(days=3)
    assert_one_line_error(home("crl", "example.com", "--next-update", "10m"), 2, "between 1h and 366d")


def test_wrong_passphrase_records_nothing(kimpki, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("right horse battery\n")
    kimpki.ok("ca", "init", "locked.example", "--passphrase-file", pw)
    kimpki.ok("issue", "--client", "x.example.com", "--ca", "locked.example", "--passphrase-file", pw)
    wrong = tmp_path / "wrong"
    wrong.write_text("wrong\n")
    res = kimpki("revoke", "x.example.com", "--passphrase-file", wrong)
    assert res.code == 1 and "Traceback" not in res.err
    states = {line.split()[0]: line.split()[-1] for line in kimpki.ok("list").out.splitlines()[1:]}
    assert states["x.example.com"] == "valid"
    assert kimpki.json("revoke", "x.example.com", "--passphrase-file", pw)["crl"]["crl_number"] == 1
    assert_one_line_error(kimpki("crl", "locked.example", "--refresh", "--passphrase-file", wrong), 1)
    assert kimpki.json("crl", "locked.example", "--refresh", "--passphrase-file", pw)["crl_number"] == 2


def test_expired_certificates_leave_the_crl():
    from cryptography.hazmat.primitives.asymmetric import ec

    from kimpki.pki import revocation as rv

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc).replace(microsecond=0)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "t")])
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
          .serial_number(1).not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=9))
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
          .sign(key, rv.signature_hash_for(key)))
    entries = [rv.RevokedEntry(10, now - timedelta(hours=1), "superseded", now - timedelta(seconds=1)),
               rv.RevokedEntry(11, now - timedelta(hours=1), "unspecified", now + timedelta(days=1))]
    crl = rv.build_crl(ca, key, entries, number=7, this_update=now, next_update=now + timedelta(days=7))
    assert [e.serial_number for e in crl] == [11]
    assert not list(crl[0].extensions)  # unspecified: no reasonCode (RFC 5280 5.3.1)
    assert rv.crl_number(crl) == 7


def test_ocsp_responses_for_staples_good_and_revoked(home, tmp_path):
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from kimpki.pki import revocation as rv

    home.ok("issue", "kim.example.com")
    leaf = x509.load_pem_x509_certificate(cert_file(home, "kim.example.com").read_bytes())
    ca_cert = x509.load_pem_x509_certificate(ca_file(home).read_bytes())
    key = load_pem_private_key((home.home / "cas" / "example.com" / "ca.key").read_bytes(), None)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    for status, revoked in (("good", None),
                            ("revoked", rv.RevokedEntry(leaf.serial_number, now, "keyCompromise", leaf.not_valid_after_utc))):
        der = rv.build_ocsp_response(leaf, ca_cert, key, revoked=revoked, this_update=now,
                                     next_update=now + rv.DEFAULT_OCSP_VALIDITY)
        resp = tmp_path / f"{status}.der"
        resp.write_bytes(der)
        assert lint(LINT_OCSP, resp) == ""
        r = openssl("ocsp", "-respin", resp, "-issuer", ca_file(home), "-cert", cert_file(home, "kim.example.com"),
                    "-CAfile", ca_file(home), "-no_nonce", check=False)
        out = (r.stdout + r.stderr).decode()
        assert r.returncode == 0 and "Response verify OK" in out, out
        assert f": {status}" in out


def test_revoke_ca_must_be_the_issuer(home):
    home.ok("ca", "init", "other.example")
    assert_one_line_error(home("revoke", "c1.example.com", "--ca", "other.example"), 2,
                          "was issued by CA 'example.com', not 'other.example'")
    serial = home.json("list")["items"][0]["serial"]
    assert_one_line_error(home("revoke", "--serial", serial, "--ca", "other.example"), 1,
                          f"no certificate with serial {serial} issued by CA 'other.example'")
    assert home.json("crl", "example.com")["revoked_entries"] == 0


def test_verify_names_a_revocation_refusal(home, tmp_path):
    """openssl s_server checking client certificates against the CA's CRL sends the
    certificate_revoked alert: kimpki verify reports it as its own reason."""
    import socket

    from tests.tlspeers import free_port

    home.ok("issue", "kim.example.com")
    home.ok("revoke", "c1.example.com", "--reason", "keyCompromise")
    crl = tmp_path / "crl.pem"
    home.ok("crl", "example.com", "--out", crl)
    server_dir = home.home / "certs" / "kim.example.com" / "current"
    port = free_port()
    srv = subprocess.Popen(["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", server_dir / "cert.crt",
                            "-key", server_dir / "cert.key", "-CAfile", ca_file(home), "-Verify", "1",
                            "-verify_return_error", "-CRL", crl, "-crl_check", "-quiet", "-naccept", "100"],
                           stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import time

        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and srv.poll() is None, "openssl s_server did not start"
                time.sleep(0.1)
        args = ["verify", "kim.example.com", "--connect", f"127.0.0.1:{port}", "--ca", "example.com", "--json"]
        revoked = home(*args, "--client", "c1.example.com")
        accepted = home(*args, "--client", "c2.example.com")
    finally:
        srv.kill()
        srv.wait()
    assert revoked.code == 1 and revoked.json["reason"] == "client_certificate_revoked", revoked.out + revoked.err
    assert "client_certificate_revoked: " in revoked.err and "Traceback" not in revoked.err
    assert accepted.json["ok"] is True, accepted.out
