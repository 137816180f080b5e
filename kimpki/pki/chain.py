"""Chain checks: does a certificate lead, signature by signature, to a trusted root?

The verdict agrees with ``openssl verify`` (tests/test_hardening.py compares them on a table of
broken chains): every issuer is a CA (basicConstraints CA:TRUE) whose keyUsage, when present,
allows keyCertSign; a certificate's authorityKeyIdentifier, when both sides have one, names
its issuer's subjectKeyIdentifier; no pathLenConstraint on the path is exceeded; every
certificate is valid at the time of the check (a leaf may outlive its issuer: the check then
fails once the issuer expires, as OpenSSL's does, not before)."""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from kimpki.errors import OperationError
from kimpki.pki.parse import is_ca, may_sign_certificates, path_length

MAX_DEPTH = 8


class ChainError(OperationError):
    """The certificate does not chain to the given CA; the message says where it breaks."""


def issued_by(cert: x509.Certificate | None, issuer: x509.Certificate) -> bool:
    """True when ``issuer``'s key signed ``cert`` (names match and the signature verifies)."""
    if cert is None or cert.issuer != issuer.subject or not _key_identifiers_match(cert, issuer):
        return False
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def _key_identifiers_match(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """False when ``cert`` names, by authorityKeyIdentifier, a key other than ``issuer``'s
    subjectKeyIdentifier (OpenSSL then does not take ``issuer`` as the issuer at all)."""
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return True
    if aki.key_identifier is not None:
        try:
            ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            ski = None
        if ski is not None and ski.digest != aki.key_identifier:
            return False
    if aki.authority_cert_serial_number is not None and aki.authority_cert_serial_number != issuer.serial_number:
        return False
    return True


def _check_issuer(issuer: x509.Certificate, cert: x509.Certificate) -> None:
    if not is_ca(issuer):
        raise ChainError(f"{_subject(issuer)} signed {_subject(cert)} but is not a CA")
    if not may_sign_certificates(issuer):
        raise ChainError(f"{_subject(issuer)} signed {_subject(cert)} but its keyUsage lacks keyCertSign")


def _check_path_lengths(path: list[x509.Certificate]) -> None:
    """Each CA's pathLenConstraint bounds the CA certificates below it on the path (not the
    leaf; self-issued intermediates do not count, RFC 5280 6.1.4)."""
    for i in range(1, len(path)):
        limit = path_length(path[i])
        if limit is None:
            continue
        below = sum(1 for c in path[1:i] if c.issuer != c.subject)
        if below > limit:
            raise ChainError(f"path length constraint exceeded: {_subject(path[i])} has pathLen:{limit} "
                             f"but {below} CA certificate(s) follow it")


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
            if root != current:
                _check_issuer(root, current)
                path.append(root)
                if at > root.not_valid_after_utc or at < root.not_valid_before_utc:
                    raise ChainError(f"the root {_subject(root)} is outside its validity period")
            elif not is_ca(root):
                raise ChainError(f"{_subject(root)} signed {_subject(current)} but is not a CA")
            _check_path_lengths(path)
            return path
        step = next((c for c in intermediates if c not in path and issued_by(current, c)), None)
        if step is None:
            raise ChainError(f"{_subject(current)} (issuer {current.issuer.rfc4514_string()}) "
                             "does not chain to the given CA")
        _check_issuer(step, current)
        path.append(step)
        current = step
    raise ChainError("the chain is longer than 8 certificates")
