"""Private keys: the supported types, generation, PEM encoding (optionally encrypted), matching."""

from __future__ import annotations

import hashlib
from enum import Enum

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from kimpki.errors import OperationError, UsageError

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class KeyType(str, Enum):
    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"

    @property
    def is_rsa(self) -> bool:
        return self.value.startswith("rsa")


KEY_TYPES = [k.value for k in KeyType]
DEFAULT_KEY_TYPE = KeyType.EC_P256


def parse_key_type(text: str) -> KeyType:
    try:
        return KeyType(text.lower())
    except ValueError:
        raise UsageError(f"unknown key type {text!r}: choose one of {', '.join(KEY_TYPES)}") from None


def generate_key(key_type: KeyType = DEFAULT_KEY_TYPE) -> PrivateKey:
    if key_type is KeyType.EC_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if key_type is KeyType.EC_P384:
        return ec.generate_private_key(ec.SECP384R1())
    bits = int(key_type.value.split("-")[1])
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def key_type_of(key) -> KeyType | None:
    """The KeyType of a private or public key, or None for one kimpki does not issue."""
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return {"secp256r1": KeyType.EC_P256, "secp384r1": KeyType.EC_P384}.get(key.curve.name)
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return {2048: KeyType.RSA_2048, 3072: KeyType.RSA_3072, 4096: KeyType.RSA_4096}.get(key.key_size)
    return None


def describe_public_key(pub) -> str:
    """Human form such as ``EC P-256`` or ``RSA 2048``."""
    if isinstance(pub, ec.EllipticCurvePublicKey):
        return {"secp256r1": "EC P-256", "secp384r1": "EC P-384", "secp521r1": "EC P-521"}.get(
            pub.curve.name, f"EC {pub.curve.name}")
    if isinstance(pub, rsa.RSAPublicKey):
        return f"RSA {pub.key_size}"
    if isinstance(pub, ed25519.Ed25519PublicKey):
        return "Ed25519"
    return type(pub).__name__


def signature_hash_for(issuer_key) -> hashes.HashAlgorithm:
    """SHA-384 for P-384 issuers, SHA-256 otherwise."""
    if isinstance(issuer_key, ec.EllipticCurvePrivateKey) and issuer_key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


# OpenSSL's PEM routines take at most 1023 bytes (PEM_BUFSIZE 1024, with the terminating NUL).
MAX_PASSPHRASE_BYTES = 1023


def check_passphrase(passphrase: bytes | None) -> bytes | None:
    if passphrase is not None and len(passphrase) > MAX_PASSPHRASE_BYTES:
        raise UsageError(f"the passphrase is {len(passphrase)} bytes long; OpenSSL takes at most "
                         f"{MAX_PASSPHRASE_BYTES}")
    return passphrase


def key_to_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    check_passphrase(passphrase)
    enc = (serialization.BestAvailableEncryption(passphrase) if passphrase
           else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def key_is_encrypted(data: bytes) -> bool:
    """True for a passphrase-protected key: PKCS#8 ``ENCRYPTED PRIVATE KEY`` or traditional
    OpenSSL PEM (``Proc-Type: 4,ENCRYPTED``, what ``openssl genrsa -aes256`` writes), wherever
    the PEM block starts in the file; for DER, whether it needs a password to load."""
    text = data.lstrip()
    if text.startswith(b"-----"):
        return b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in text or b"Proc-Type: 4,ENCRYPTED" in text
    try:
        serialization.load_der_private_key(data, password=None)
    except TypeError:  # "Password was not given but private key is encrypted"
        return True
    except (ValueError, UnsupportedAlgorithm):
        pass
    return False


def load_key(pem: bytes, passphrase: bytes | None = None, what: str = "private key") -> PrivateKey:
    """Load a PEM (or DER) private key; a clear OperationError for a wrong or missing passphrase."""
    encrypted = key_is_encrypted(pem)
    if encrypted:
        check_passphrase(passphrase)  # a longer one cannot have encrypted it: not "wrong passphrase"
    if encrypted and not passphrase:
        raise OperationError(f"the {what} is encrypted: give --passphrase-file or set KIMPKI_CA_PASSPHRASE")
    try:
        loader = (serialization.load_pem_private_key if pem.lstrip().startswith(b"-----")
                  else serialization.load_der_private_key)
        key = loader(pem, password=passphrase if encrypted else None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        if encrypted:
            raise OperationError(f"cannot decrypt the {what}: wrong passphrase") from None
        raise OperationError(f"cannot read the {what}: {e}") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise OperationError(f"the {what} is a {type(key).__name__}; kimpki handles EC and RSA keys")
    return key


def public_key_fingerprint(pub) -> str:
    """SHA-256 over the SubjectPublicKeyInfo, hex: the same for a key and its certificate."""
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def key_matches(key: PrivateKey, pub) -> bool:
    """Whether ``pub`` (a certificate's, a CSR's) is ``key``'s public half; any other key, of
    any type, is not."""
    return key.public_key() == pub
