"""Istio's server TLS parameters (pure): protocol versions, cipher suites, ECDH curves, client SANs.

The fields of a Gateway server's ``tls`` block beyond the certificate, with the values Istio
accepts and what it does with them:

* ``minProtocolVersion`` / ``maxProtocolVersion``: the CRD's enum (``TLS_AUTO``, ``TLSV1_0`` ..
  ``TLSV1_3``). ``TLS_AUTO`` (or nothing) leaves Envoy's default, which for a server is TLS 1.2
  as the floor and TLS 1.3 as the ceiling (Istio documents "By default, it is TLSV1_2").
* ``cipherSuites``: free strings in the CRD; Istio keeps only the names in
  :data:`CIPHER_SUITES` (and OpenSSL-style expressions starting with ``-``, ``+``, ``!``, ``ALL``),
  drops duplicates, and passes the rest to Envoy (``FilterCipherSuites``). They govern TLS 1.2
  and below only; TLS 1.3's suites are fixed.
* ``ecdhCurves``: free strings, passed to Envoy unfiltered (an unknown name makes Envoy reject
  the listener); :data:`ECDH_CURVES` is the list Istio checks mesh-wide defaults against.
* ``subjectAltNames``: client certificate identities; used only by MUTUAL and OPTIONAL_MUTUAL.

Source: istio/istio ``pkg/config/security/security.go`` (``ValidCipherSuites``,
``ValidECDHCurves``, ``IsValidCipherSuite``, ``FilterCipherSuites``) and
``pkg/config/validation/validation.go`` (``validateTLSOptions``).
"""

from __future__ import annotations

# The CRD's enum, in order: a later one is a higher version.
PROTOCOL_VERSIONS = ("TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3")
AUTO = "TLS_AUTO"
DEFAULT_MIN, DEFAULT_MAX = "TLSV1_2", "TLSV1_3"  # Envoy's defaults for a server, which Istio keeps

# pkg/config/security/security.go ValidCipherSuites ("bssl ciphers -openssl-name ALL | rg -v PSK").
CIPHER_SUITES = (
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA", "ECDHE-RSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA", "ECDHE-RSA-AES256-SHA",
    "AES128-GCM-SHA256", "AES256-GCM-SHA384", "AES128-SHA", "AES256-SHA", "DES-CBC3-SHA",
)
# pkg/config/security/security.go ValidECDHCurves (BoringSSL's ssl_key_share.cc names).
ECDH_CURVES = ("P-224", "P-256", "P-521", "P-384", "X25519", "X25519Kyber768Draft00", "X25519MLKEM768")

# The names Envoy 1.40's BoringSSL takes in tls_params.ecdh_curves (ssl_key_share.cc kNamedGroups,
# names and aliases, case-sensitive), tried one by one with 'envoy --mode validate'
# (tests/test_ecdh_curves_envoy.py). Not P-224 nor X25519Kyber768Draft00, which ECDH_CURVES has:
# BoringSSL dropped them.
ENVOY_ECDH_CURVES = ("P-256", "P-384", "P-521", "X25519", "X25519MLKEM768", "MLKEM1024",
                     "prime256v1", "secp384r1", "secp521r1", "x25519")

MUTUAL_MODES = ("MUTUAL", "OPTIONAL_MUTUAL")  # the modes that check client certificates (need a CA)


def version_rank(version: str | None) -> int | None:
    """``TLSV1_2`` → 3; ``None``/``TLS_AUTO`` → None (Envoy's default applies)."""
    if not version or version == AUTO or version not in PROTOCOL_VERSIONS:
        return None
    return PROTOCOL_VERSIONS.index(version)


def effective_versions(min_version: str | None, max_version: str | None) -> tuple[str, str]:
    """The versions Envoy will use: the given ones, or its defaults for ``None``/``TLS_AUTO``."""
    lo = min_version if version_rank(min_version) is not None else DEFAULT_MIN
    hi = max_version if version_rank(max_version) is not None else DEFAULT_MAX
    return lo, hi


def unknown_to_envoy(curves) -> list[str]:
    """The ``ecdhCurves`` names Envoy would refuse (its listener then fails), in order."""
    return [str(x) for x in curves or () if str(x) not in ENVOY_ECDH_CURVES]


def is_valid_cipher_suite(name: str) -> bool:
    """Istio's ``IsValidCipherSuite``: a known name, or an OpenSSL expression (``-``, ``+``, ``!``...)."""
    if name in ("", "ALL"):
        return True
    if not name[0].isalnum():
        return True
    return name in CIPHER_SUITES


def filter_cipher_suites(suites) -> list[str]:
    """Istio's ``FilterCipherSuites``: valid names only, first occurrence of each, in order."""
    out: list[str] = []
    for s in suites or ():
        if is_valid_cipher_suite(s) and s not in out:
            out.append(s)
    return out


def range_problem(min_version: str | None, max_version: str | None) -> str | None:
    """A minimum above the maximum: Envoy then has no version to offer, and every handshake of
    that server fails (Istio's validation does not catch it)."""
    lo, hi = version_rank(min_version), version_rank(max_version)
    if lo is not None and hi is not None and lo > hi:
        return (f"minProtocolVersion {min_version} is above maxProtocolVersion {max_version}: no TLS "
                f"version is left, every handshake with this server fails")
    return None


def problems(tls: dict) -> list[str]:
    """What is wrong with a ``tls`` block's parameters, one line each, in the words of the fields."""
    out: list[str] = []
    for key in ("minProtocolVersion", "maxProtocolVersion"):
        v = tls.get(key)
        if v is not None and v not in PROTOCOL_VERSIONS:
            out.append(f"{key} {v!r} is not one of {', '.join(PROTOCOL_VERSIONS)}")
    problem = range_problem(tls.get("minProtocolVersion"), tls.get("maxProtocolVersion"))
    if problem:
        out.append(problem)
    bad = [s for s in tls.get("cipherSuites") or () if not is_valid_cipher_suite(str(s))]
    if bad:
        out.append(f"cipherSuites {', '.join(map(str, bad))}: not a cipher suite Istio knows "
                   f"(it would drop it silently); choose from {', '.join(CIPHER_SUITES)}")
    bad = [c for c in tls.get("ecdhCurves") or () if str(c) not in ECDH_CURVES]
    if bad:
        out.append(f"ecdhCurves {', '.join(map(str, bad))}: not a curve Istio knows (Envoy rejects the "
                   f"listener of an unknown one); choose from {', '.join(ECDH_CURVES)}")
    return out
