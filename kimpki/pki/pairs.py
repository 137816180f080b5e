"""RSA + ECDSA pairs, the pure part: key algorithms and how the second half of a pair is named.

See :mod:`kimpki.ops.pairs` for why the partner is ``NAME-rsa`` (or ``NAME-ecdsa``) beside ``NAME``.
"""

from __future__ import annotations

from kimpki.pki import keys

RSA, ECDSA = "rsa", "ecdsa"
# The partner's key type when only the first one is chosen: the most widely accepted of each kind.
PARTNER_KEY_TYPE = {RSA: keys.KeyType.EC_P256, ECDSA: keys.KeyType.RSA_2048}


def algorithm_of(key_type: str | keys.KeyType | None) -> str | None:
    """``rsa-2048`` → ``rsa``; ``ec-p256`` → ``ecdsa``; None when unknown."""
    value = key_type.value if isinstance(key_type, keys.KeyType) else (key_type or "")
    if value.startswith("rsa"):
        return RSA
    if value.startswith("ec"):
        return ECDSA
    return None


def other(algorithm: str) -> str:
    return ECDSA if algorithm == RSA else RSA


def partner_key_type(key_type: keys.KeyType) -> keys.KeyType:
    """The key type of the second certificate of a pair whose first has ``key_type``."""
    return PARTNER_KEY_TYPE[algorithm_of(key_type)]


def partner_name(name: str, algorithm: str) -> str:
    """The partner's name (store entry or Secret): ``NAME-rsa`` or ``NAME-ecdsa``."""
    return f"{name}-{algorithm}"
