"""Chain checks: does a certificate lead, signature by signature, to a trusted root?"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from kimpki.errors import OperationError
from kimpki.pki.parse import is_ca

MAX_DEPTH = 8


class ChainError(OperationError):
    """The certificate does not chain to the given CA; the message says where it breaks."""


def issued_by(cert: x509.Certificate | None, issuer: x509.Certificate) -> bool:
    """True when ``issuer``'s key signed ``cert`` (names match and the signature verifies)."""
    if cert is None or cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def build_path(leaf: x509.Certificate, intermediates: list[x509.Certificate],
               roots: list[x509.Certificate], at: datetime) -> list[x509.Certificate]:
    """Return leaf → ... → root, or raise ChainError naming the broken link.

    Checks signatures, that every issuer is a CA, and validity of each link at ``at``.
    """
    path = [leaf]
    current = leaf
    for _ in range(MAX_DEPTH):
        for cert in path:
            if at < cert.not_valid_before_utc:
                raise ChainError(f"{_subject(cert)} is not valid yet (from {cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z)")
            if at > cert.not_valid_after_utc:
                raise ChainError(f"{_subject(cert)} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
        root = next((r for r in roots if issued_by(current, r)), None)
        if root is not None:
            if not is_ca(root):
                raise ChainError(f"{_subject(root)} signed {_subject(current)} but is not a CA")
            if root != current:
                path.append(root)
                if at > root.not_valid_after_utc or at < root.not_valid_before_utc:
                    raise ChainError(f"the root {_subject(root)} is outside its validity period")
            return path
        step = next((c for c in intermediates if c not in path and issued_by(current, c)), None)
        if step is None:
            raise ChainError(f"{_subject(current)} (issuer {current.issuer.rfc4514_string()}) "
                             "does not chain to the given CA")
        if not is_ca(step):
            raise ChainError(f"{_subject(step)} signed {_subject(current)} but is not a CA")
        path.append(step)
        current = step
    raise ChainError("the chain is longer than 8 certificates")
