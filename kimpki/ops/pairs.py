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
from kimpki.pki.pairs import (ECDSA, RSA, algorithm_of, other, partner_key_type,  # noqa: F401 (the rules, here too)
                              partner_name)
from kimpki.store import CertRecord, Store


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
