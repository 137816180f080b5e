"""RSA + ECDSA pairs: one set of hosts served with an ECDSA and an RSA certificate (Istio >= 1.27).

A Gateway server may name two credentials (``tls.credentialNames``); Envoy then picks, per
handshake, the certificate whose key algorithm the client supports (an RSA-only client gets the
RSA one). Istio reads a MUTUAL server's client CA from the *first* name (and its ``-cacert``).

How kimpki names the two halves, in the store and in the cluster: the certificate or Secret a
single-algorithm setup already has keeps its name (``kim.example.com``, ``kim-credential``), and
its partner is that name plus the partner's algorithm (``kim.example.com-rsa``,
``kim-credential-rsa``; ``-ecdsa`` beside an RSA one). So adding the second algorithm to a
running gateway changes nothing that serves today: the Gateway goes from ``credentialName:
kim-credential`` to ``credentialNames: [kim-credential, kim-credential-rsa]``, and a MUTUAL
server's CA stays where Istio already reads it (``kim-credential`` / ``kim-credential-cacert``).
Both Secrets carry ``kimpki.io/pair`` naming the other, which is how ``rotate`` and ``renew``
keep them in step; in the store, the partner is found by that name rule (same hosts, the other
algorithm), which is how ``secret create --dual`` and ``revoke`` find it.
"""

from __future__ import annotations

from kimpki.errors import UsageError
from kimpki.pki import keys
from kimpki.store import CertRecord, Store

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


def find_partner(store: Store, rec: CertRecord) -> CertRecord | None:
    """The current certificate that pairs with ``rec``: ``NAME-<other algorithm>`` when ``rec`` is
    the first of the pair, else the first (``rec`` named ``FIRST-<its algorithm>``); same hosts,
    the other algorithm. None when there is none."""
    alg = algorithm_of(rec.key_type)
    if alg is None:
        return None
    suffix = f"-{alg}"
    candidates = [partner_name(rec.name, other(alg))]
    if rec.name.endswith(suffix):
        candidates.append(rec.name[: -len(suffix)])
    for name in candidates:
        found = store.find_cert(name)
        if (found is not None and algorithm_of(found.key_type) == other(alg)
                and sorted(found.hosts) == sorted(rec.hosts) and found.kind == rec.kind):
            return found
    return None


def require_partner(store: Store, rec: CertRecord) -> CertRecord:
    found = find_partner(store, rec)
    if found is None:
        alg = algorithm_of(rec.key_type) or "?"
        raise UsageError(f"{rec.name} has no partner certificate of the other algorithm "
                         f"({partner_name(rec.name, other(alg))} for the same hosts): issue the pair with "
                         f"'kimpki issue {' '.join(rec.hosts)} --dual'")
    return found
