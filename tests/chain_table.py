"""Broken chains built with ``cryptography``, one per way a chain can break, for comparing
kimpki's chain check with ``openssl verify`` (tests/test_hardening.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NOW = datetime.now(timezone.utc).replace(microsecond=0)
DAY = timedelta(days=1)
CA_USAGE = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                         encipher_only=False, decipher_only=False)
LEAF_USAGE = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                           data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                           encipher_only=False, decipher_only=False)


@dataclass
class Node:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def make(cn: str, issuer: Node | None, *, ca: bool, path_length: int | None = None,
         usage: x509.KeyUsage | None = None, not_before: datetime = NOW - DAY, not_after: datetime = NOW + 30 * DAY,
         aki: bytes | None = None) -> Node:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    signer = issuer.key if issuer else key
    b = (x509.CertificateBuilder().subject_name(name)
         .issuer_name(issuer.cert.subject if issuer else name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(not_before).not_valid_after(not_after)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
         .add_extension(usage or (CA_USAGE if ca else LEAF_USAGE), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
    if issuer is not None:
        ident = (x509.AuthorityKeyIdentifier(aki, None, None) if aki is not None
                 else x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()))
        b = b.add_extension(ident, critical=False)
    return Node(b.sign(signer, hashes.SHA256()), key)


def pem(*nodes: Node) -> bytes:
    return b"".join(n.cert.public_bytes(serialization.Encoding.PEM) for n in nodes)


def chains() -> dict[str, tuple[Node, list[Node], Node]]:
    """name -> (leaf, intermediates leaf-side first, root)."""
    out = {}
    root = make("Root", None, ca=True)
    inter = make("Issuing", root, ca=True, path_length=0)
    out["good"] = (make("good.example.com", inter, ca=False), [inter], root)

    # pathLen:0 intermediate that signed another CA (what 'ca init sub2 --parent sub' made)
    sub2 = make("Sub2", inter, ca=True)
    out["path_length_exceeded"] = (make("deep.example.com", sub2, ca=False), [sub2, inter], root)
    root0 = make("Root pathLen 0", None, ca=True, path_length=0)
    under0 = make("Under pathLen 0", root0, ca=True)
    out["root_path_length_exceeded"] = (make("r0.example.com", under0, ca=False), [under0], root0)

    no_sign = make("No keyCertSign", root, ca=True, usage=LEAF_USAGE)
    out["issuer_without_key_cert_sign"] = (make("ku.example.com", no_sign, ca=False), [no_sign], root)

    not_ca = make("Not a CA", root, ca=False, usage=CA_USAGE)
    out["issuer_ca_false"] = (make("notca.example.com", not_ca, ca=False), [not_ca], root)

    short = make("Short-lived", root, ca=True, path_length=0, not_after=NOW + 10 * DAY)
    out["leaf_outlives_issuer"] = (make("long.example.com", short, ca=False, not_after=NOW + 60 * DAY), [short], root)
    expired = make("Expired issuer", root, ca=True, path_length=0, not_before=NOW - 60 * DAY, not_after=NOW - DAY)
    out["issuer_expired_leaf_valid"] = (make("orphan.example.com", expired, ca=False, not_before=NOW - 2 * DAY),
                                        [expired], root)

    out["wrong_authority_key_identifier"] = (make("aki.example.com", inter, ca=False, aki=b"\x01" * 20), [inter], root)
    return out
