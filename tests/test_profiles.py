"""The certificate profile, point by point, on certificates issued through the real CLI."""

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

KEY_TYPES = ["ec-p256", "ec-p384", "rsa-2048"]


def load(path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(Path(path).read_bytes())


def ext(cert, cls):
    return cert.extensions.get_extension_for_class(cls)


@pytest.fixture
def issued(kimpki):
    """root (P-256), intermediate, a server leaf and a client leaf issued by the intermediate."""
    root = kimpki.json("ca", "init", "example.com", "--org", "example Inc.")
    inter = kimpki.json("ca", "init", "example-issuing", "--parent", "example.com", "--days", "1000")
    server = kimpki.json("issue", "kim.example.com", "10.0.0.7", "--ca", "example-issuing", "--org", "kim organization")
    client = kimpki.json("issue", "--client", "kim-client.example.com", "--ca", "example-issuing")
    return root, inter, server, client


def test_every_certificate_is_v3_with_a_random_serial_and_sha256(issued):
    root, inter, server, client = issued
    certs = [load(root["cert"])[0], load(inter["cert"])[0], load(server["cert"])[0], load(client["cert"])[0]]
    serials = {c.serial_number for c in certs}
    assert len(serials) == 4
    for c in certs:
        assert c.version is x509.Version.v3
        assert c.serial_number > 0 and c.serial_number.bit_length() >= 64
        assert c.serial_number.bit_length() <= 159  # at most 20 octets, positive
        assert c.signature_hash_algorithm.name == "sha256"


def test_not_before_is_backdated_for_clock_skew(kimpki):
    before = datetime.now(timezone.utc)
    d = kimpki.json("issue", "kim.example.com")
    cert = load(d["cert"])[0]
    skew = before - cert.not_valid_before_utc
    assert timedelta(minutes=1) <= skew <= timedelta(minutes=10)
    lifetime = cert.not_valid_after_utc - before
    assert timedelta(days=89, hours=23) < lifetime <= timedelta(days=90, minutes=1)


def test_leaf_extensions(issued):
    _, _, server, client = issued
    for d, eku in [(server, ExtendedKeyUsageOID.SERVER_AUTH), (client, ExtendedKeyUsageOID.CLIENT_AUTH)]:
        cert = load(d["cert"])[0]
        san = ext(cert, x509.SubjectAlternativeName)
        assert not san.critical  # a subject CN is present, so the SAN need not be critical
        bc = ext(cert, x509.BasicConstraints)
        assert bc.critical and bc.value.ca is False
        ku = ext(cert, x509.KeyUsage)
        assert ku.critical and ku.value.digital_signature and not ku.value.key_encipherment
        assert not ku.value.key_cert_sign
        assert list(ext(cert, x509.ExtendedKeyUsage).value) == [eku]
        ext(cert, x509.SubjectKeyIdentifier)
        ext(cert, x509.AuthorityKeyIdentifier)
    cert = load(server["cert"])[0]
    san = ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["kim.example.com"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    assert cert.subject.rfc4514_string() == "CN=kim.example.com,O=kim organization"


def test_ca_extensions(issued):
    root, inter, *_ = issued
    r = load(root["cert"])[0]
    i = load(inter["cert"])[0]
    for cert, path_len in [(r, None), (i, 0)]:
        bc = ext(cert, x509.BasicConstraints)
        assert bc.critical and bc.value.ca and bc.value.path_length == path_len
        ku = ext(cert, x509.KeyUsage)
        assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
        ext(cert, x509.SubjectKeyIdentifier)
    assert ext(i, x509.AuthorityKeyIdentifier).value.key_identifier == ext(r, x509.SubjectKeyIdentifier).value.digest


def test_intermediate_leaves_carry_leaf_plus_intermediate_and_never_the_root(issued):
    root, inter, server, _ = issued
    chain = load(server["cert"])
    assert len(chain) == 2
    assert chain[1] == load(inter["cert"])[0]
    assert load(server["ca"]) == load(root["cert"])


def test_rsa_leaves_add_key_encipherment(kimpki):
    d = kimpki.json("issue", "kim.example.com", "--key-type", "rsa-2048")
    cert = load(d["cert"])[0]
    assert isinstance(cert.public_key(), rsa.RSAPublicKey) and cert.public_key().key_size == 2048
    assert ext(cert, x509.KeyUsage).value.key_encipherment


def test_p384_issuer_signs_with_sha384(kimpki):
    kimpki.ok("ca", "init", "p384", "--key-type", "ec-p384")
    d = kimpki.json("issue", "kim.example.com", "--key-type", "ec-p384")
    cert = load(d["cert"])[0]
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.signature_hash_algorithm.name == "sha384"
    assert load(d["ca"])[0].signature_hash_algorithm.name == "sha384"


def test_serials_are_recorded_unique_per_ca(kimpki):
    serials = {kimpki.json("issue", f"h{i}.example.com")["serial"] for i in range(5)}
    assert len(serials) == 5
    import sqlite3

    db = sqlite3.connect(kimpki.home / "inventory.db")
    rows = db.execute("SELECT ca, serial FROM serials").fetchall()
    assert {s for _, s in rows} >= serials
    assert len(rows) == len(set(rows))


def test_days_past_the_issuer_is_refused(kimpki):
    kimpki.ok("ca", "init", "short", "--days", "30")
    res = kimpki("issue", "kim.example.com", "--days", "60")
    assert res.code == 2 and "after the issuing CA expires" in res.err and "Traceback" not in res.err


def test_long_first_name_is_left_out_of_the_cn_and_the_san_becomes_critical(kimpki):
    host = "a" * 60 + ".example.com"
    cert = load(kimpki.json("issue", host)["cert"])[0]
    assert len(cert.subject) == 0
    assert ext(cert, x509.SubjectAlternativeName).critical
