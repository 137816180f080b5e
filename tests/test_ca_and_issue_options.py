"""Options of ``ca init``, ``ca import``, ``issue``, ``sign`` and ``rotate`` that shape a
certificate or unlock a CA key: checked on the certificates and key files they produce, with
openssl as the reader."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.conftest import assert_one_line_error, openssl


def secret_file(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def cert_of(path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(Path(path).read_bytes())[0]


def lifetime_days(cert: x509.Certificate) -> float:
    return (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() / 86400


def test_ca_init_common_name_and_encrypted_keys_for_root_and_intermediate(kimpki, tmp_path):
    root_pw = secret_file(tmp_path, "root.pw", "root secret")
    issuing_pw = secret_file(tmp_path, "issuing.pw", "issuing secret")
    d = kimpki.json("ca", "init", "example.com", "--common-name", "Example Root R1", "--org", "example Inc.",
                    "--key-type", "rsa-2048", "--days", "30", "--passphrase-file", root_pw)
    assert d["subject"] == "CN=Example Root R1,O=example Inc." and d["encrypted"] is True
    root_key = kimpki.home / "cas/example.com/ca.key"
    assert root_key.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert "Private-Key: (2048 bit" in openssl("pkey", "-in", root_key, "-passin", f"file:{root_pw}", "-noout",
                                               "-text").stdout.decode()
    wrong = openssl("pkey", "-in", root_key, "-passin", "pass:wrong", "-noout", check=False)
    assert wrong.returncode == 1 and b"bad decrypt" in wrong.stderr, wrong.stderr
    assert round(lifetime_days(cert_of(d["cert"]))) == 30

    # The intermediate needs the root's passphrase to be signed, and gets its own.
    assert_one_line_error(kimpki("ca", "init", "issuing", "--parent", "example.com", "--passphrase-file",
                                 issuing_pw, "--parent-passphrase-file", issuing_pw), 1, "example.com")
    i = kimpki.json("ca", "init", "issuing", "--parent", "example.com", "--parent-passphrase-file", root_pw,
                    "--passphrase-file", issuing_pw)
    assert i["kind"] == "intermediate" and i["encrypted"] is True and i["subject"] == "CN=issuing"
    openssl("pkey", "-in", kimpki.home / "cas/issuing/ca.key", "-passin", f"file:{issuing_pw}", "-noout")
    openssl("verify", "-CAfile", d["cert"], i["cert"])

    # issue --name: the store keeps the certificate under that name, not the first host.
    leaf = kimpki.json("issue", "kim.example.com", "--ca", "issuing", "--passphrase-file", issuing_pw,
                       "--name", "kim-prod", "--days", "7")  # inside the 30-day root's life
    assert leaf["name"] == "kim-prod" and leaf["dns_names"] == ["kim.example.com"]
    assert (kimpki.home / "certs/kim-prod/current/cert.crt").exists()
    assert not (kimpki.home / "certs/kim.example.com").exists()
    assert [r["name"] for r in kimpki.json("list")["items"]] == ["kim-prod"]
    openssl("verify", "-CAfile", d["cert"], "-untrusted", i["cert"], leaf["cert"])


def test_ca_import_decrypts_with_the_key_passphrase_and_stores_under_a_new_one(kimpki, tmp_path):
    old_pw = secret_file(tmp_path, "old.pw", "from the operator notes")
    new_pw = secret_file(tmp_path, "new.pw", "kimpki at rest")
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-aes256",
            "-pass", f"file:{old_pw}", "-out", "example.com.key", cwd=tmp_path)
    openssl("req", "-x509", "-sha256", "-days", "365", "-key", "example.com.key", "-passin", f"file:{old_pw}",
            "-subj", "/O=example Inc./CN=example.com", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", "example.com.crt", cwd=tmp_path)
    args = ["ca", "import", "example.com", "--cert", tmp_path / "example.com.crt", "--key", tmp_path / "example.com.key"]
    assert_one_line_error(kimpki(*args, "--key-passphrase-file", new_pw), 1)  # the wrong passphrase
    d = kimpki.json(*args, "--key-passphrase-file", old_pw, "--passphrase-file", new_pw)
    assert d["encrypted"] is True
    stored = kimpki.home / "cas/example.com/ca.key"
    openssl("pkey", "-in", stored, "-passin", f"file:{new_pw}", "-noout")
    old = openssl("pkey", "-in", stored, "-passin", f"file:{old_pw}", "-noout", check=False)
    assert old.returncode == 1 and b"bad decrypt" in old.stderr, old.stderr  # the old passphrase opens it no more


def test_sign_client_csr_with_an_encrypted_ca(kimpki, tmp_path):
    pw = secret_file(tmp_path, "ca.pw", "ca secret")
    kimpki.ok("ca", "init", "example.com", "--passphrase-file", pw)
    openssl("req", "-out", "client.csr", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "client.key", "-subj", "/CN=kim-client.example.com", cwd=tmp_path)
    csr = tmp_path / "client.csr"
    assert_one_line_error(kimpki("sign", csr, "--client"), 1, "passphrase")
    d = kimpki.json("sign", csr, "--client", "--passphrase-file", pw)
    eku = cert_of(d["cert"]).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    server = kimpki.json("sign", csr, "--passphrase-file", pw, "--name", "as-server")
    eku = cert_of(server["cert"]).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_rotate_days_key_type_and_passphrase_file(kimpki, tmp_path):
    pw = secret_file(tmp_path, "ca.pw", "ca secret")
    kimpki.ok("ca", "init", "example.com", "--passphrase-file", pw)
    kimpki.ok("issue", "kim.example.com", "--passphrase-file", pw)
    deploy = kimpki.cwd / "deploy"
    deploy.mkdir()
    (deploy / "kim.yaml").write_text(kimpki.ok("secret", "create", "kim-credential", "--cert", "kim.example.com",
                                               "--dry-run", "-o", "yaml").out)
    rotate = ["rotate", "kim-credential", "--manifests", deploy, "--days", "10", "--key-type", "rsa-3072"]
    assert_one_line_error(kimpki(*rotate), 1, "passphrase")
    kimpki.ok(*rotate, "--passphrase-file", pw)
    secret = yaml.safe_load((deploy / "kim.yaml").read_text())
    cert = x509.load_pem_x509_certificates(base64.b64decode(secret["data"]["cert"]))[0]
    assert cert.public_key().key_size == 3072 and round(lifetime_days(cert)) == 10

    # renew needs the passphrase too, to re-issue what is due (all of it, with a 10-day window).
    renew = ["renew", "--manifests", deploy, "--renew-before", "10d"]
    assert kimpki(*renew).code == 1
    kimpki.ok(*renew, "--passphrase-file", pw)
    renewed = yaml.safe_load((deploy / "kim.yaml").read_text())
    assert renewed["metadata"]["annotations"]["kimpki.io/serial"] != secret["metadata"]["annotations"]["kimpki.io/serial"]


def test_an_org_over_64_characters_or_with_a_control_character_is_refused_before_anything_is_made(kimpki):
    """RFC 5280 bounds O at 64 characters (pkilint flags more), and a newline in a subject breaks
    every one-line report of it: both are refused, exit 2, with nothing made."""
    too_long = "o" * 65
    assert_one_line_error(kimpki("ca", "init", "example.com", "--org", too_long), 2,
                          "is longer than 64 characters (RFC 5280's upper bound for O)")
    assert_one_line_error(kimpki("ca", "init", "example.com", "--org", "example\nInc."), 2,
                          "holds a control character")
    assert "example.com" not in kimpki.ok("ca", "list").out
    kimpki.ok("ca", "init", "example.com", "--org", "o" * 64)
    assert_one_line_error(kimpki("issue", "kim.example.com", "--org", too_long), 2, "longer than 64")
    assert_one_line_error(kimpki("issue", "kim.example.com", "--org", "kim\torganization"), 2,
                          "'kim\\torganization' holds a control character")
    assert "kim.example.com" not in kimpki.ok("list").out
