"""``kimpki check``: what is wrong with the credentials behind Istio Gateway servers. Pure.

Input: Gateways and Secrets (from a cluster, or from manifest files through
:mod:`kimpki.localgw.manifests`), the gateway pod's namespace, the gateway's Secret mounts, a
time. Output: a :class:`Report` of :class:`Finding` values, one per check per credential (and
per host for coverage). The credential rules are Istio's (see :mod:`kimpki.istio.contract`), as
the local gateway applies them.

Codes: what ``istioctl analyze`` reports for gateways, plus what it does not check.

* ``IST0101`` ReferencedResourceNotFound: the credential Secret does not exist.
* ``IST0161`` InvalidGatewayCredential: no cert/key keys, unreadable PEM, expired or not yet valid.
* ``KIM0001`` CredentialKeyMismatch: the private key is not the certificate's.
* ``KIM0002`` HostNotCovered: a server host is not among the certificate's DNS names.
* ``KIM0003`` MutualWithoutCa: a MUTUAL server has no usable CA (``X-cacert``, ``cacert``, ``ca.crt``).
* ``KIM0004`` CertificateExpiringSoon: fewer than ``warn_days`` left (a warning).
* ``KIM0005`` TlsSettingsIncomplete: the server's ``tls`` names no credential kimpki can find.
* ``KIM0006`` NonCompliantCertificate: served, but breaks RFC 5280 (a zero serial): a warning.
* ``KIM0011`` CaCrlMissing: a file-mounted server's ``caCrl`` names a file its mounted Secret lacks
  (or no readable CRL): Envoy cannot build the listener, so Istio serves none of it.
* ``KIM0012`` CaCrlNotUsed: the CA Secret holds the CRL file beside the server's CA file
  (``example.com.crl``), but the Gateway has no ``caCrl``: revoked client certificates are admitted
  (a warning).
* ``KIM0015`` SubjectAltNamesWithoutClientCheck: ``subjectAltNames`` on a SIMPLE server. With
  credentialName Istio still sends Envoy the SAN check, without a CA, and Envoy rejects the
  listener update carrying it (the gateway's other servers are not updated either): an error.
  A file-mounted SIMPLE server ignores them: a warning.
* ``KIM0016`` OptionalMutualWithoutCa: an OPTIONAL_MUTUAL server has no usable CA. It needs one
  exactly like MUTUAL (it checks the certificates clients do present); without it Istio cannot
  serve the server at all.
* ``KIM0017`` ProtocolVersionRange: ``minProtocolVersion`` above ``maxProtocolVersion``: no version
  is left and every handshake fails (Istio's validation lets it through).
* ``KIM0018`` OptionalMutualRequiresCertificate: OPTIONAL_MUTUAL with ``subjectAltNames`` (or
  certificate hash/SPKI pins): Envoy then requires a client certificate, so the server behaves as
  MUTUAL (a warning).
* ``KIM0019`` MultipleCertificateSources: a server sets more than one of ``credentialName``,
  ``credentialNames``, ``tlsCertificates`` and ``serverCertificate``: Istio uses one and silently
  ignores the others (``credentialNames`` wins).
* ``KIM0020`` DuplicateKeyAlgorithm: ``credentialNames`` holds two certificates of one key
  algorithm; Envoy takes one certificate per algorithm and rejects the server's TLS context.
* ``KIM0021`` CaCertCredentialNotFound: ``caCertCredentialName`` names no Secret or ConfigMap,
  or a Secret Istio would read as a certificate and key (a name not ending in ``-cacert``).
* ``KIM0022`` EcdhCurveUnknownToEnvoy: an ``ecdhCurves`` name Envoy's BoringSSL does not know
  (``P-224``, say, which Istio's list still has): Istio passes it on unchecked and Envoy rejects
  the gateway's listener, so every server on that port stops serving (a warning: it depends on
  the Envoy build, see :data:`kimpki.istio.tlsparams.ENVOY_ECDH_CURVES`).

A MUTUAL credential that carries CRLs (``crl`` / ``ca.crl`` beside its CA): Envoy then demands a
CRL for every CA of a client's chain, and refuses every client of a CA whose CRL is missing or
past nextUpdate. The chain's CAs, as far as the Secrets show them: the CA bundle, and the
intermediates of the server's own chain that lead to it.

* ``KIM0007`` CrlMissing: the CRL key holds no readable CRL, or no CRL of any CA of the chain.
* ``KIM0008`` CrlPartial: some CAs of the chain have a CRL, others none.
* ``KIM0009`` CrlExpired: a CRL is past its nextUpdate.
* ``KIM0010`` CrlStale: a CRL is inside the last third of its validity, when ``kimpki renew``
  re-signs it (a warning: renew has not run).

A tls-format credential's OCSP staple (``tls.ocsp-staple``, which Istio hands to Envoy only
beside ``tls.crt``/``tls.key``):

* ``KIM0013`` OcspStapleRefused: the staple is not a successful OCSP response, or answers for
  another serial than its certificate's. Envoy rejects the whole secret ("OCSP response has no
  body", "... does not match its TLS certificate"), so the server is not served: an error.
* ``KIM0014`` OcspStapleExpired: the staple is past its nextUpdate. Envoy's lenient policy serves
  the certificate without a staple (``kimpki renew`` re-signs it): a warning.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from kimpki.istio import contract as c
from kimpki.localgw.manifests import (CONFIGMAP_PREFIX, DEFAULT_MOUNTS, ConfigMapDoc, GatewayDoc, Mount, SecretDoc,
                                      SecretIndex, ca_credential_source, config_map_doc, credential_names, mount_for,
                                      parse_manifests)
from kimpki.pki import parse

CODES = {  # in the order of their numbers
    "IST0101": "ReferencedResourceNotFound",
    "IST0161": "InvalidGatewayCredential",
    "KIM0001": "CredentialKeyMismatch",
    "KIM0002": "HostNotCovered",
    "KIM0003": "MutualWithoutCa",
    "KIM0004": "CertificateExpiringSoon",
    "KIM0005": "TlsSettingsIncomplete",
    "KIM0006": "NonCompliantCertificate",
    "KIM0007": "CrlMissing",
    "KIM0008": "CrlPartial",
    "KIM0009": "CrlExpired",
    "KIM0010": "CrlStale",
    "KIM0011": "CaCrlMissing",
    "KIM0012": "CaCrlNotUsed",
    "KIM0013": "OcspStapleRefused",
    "KIM0014": "OcspStapleExpired",
    "KIM0015": "SubjectAltNamesWithoutClientCheck",
    "KIM0016": "OptionalMutualWithoutCa",
    "KIM0017": "ProtocolVersionRange",
    "KIM0018": "OptionalMutualRequiresCertificate",
    "KIM0019": "MultipleCertificateSources",
    "KIM0020": "DuplicateKeyAlgorithm",
    "KIM0021": "CaCertCredentialNotFound",
    "KIM0022": "EcdhCurveUnknownToEnvoy",
}

OK, WARNING, ERROR = "ok", "warning", "error"
TERMINATING_MODES = ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL")
TLS_PROTOCOLS = ("HTTPS", "TLS")

# check names (stable; the JSON "check" key)
SOURCES, ALGORITHMS = "certificate_sources", "key_algorithms"
FOUND, VALID, KEY, EXPIRY, HOST, CA, TLS = ("credential_found", "credential_valid", "key_matches", "expiry",
                                            "host_covered", "ca_present", "tls_settings")
CA_CRL = "ca_crl"  # a file-mounted server's caCrl file
CRL_COMPLETE, CRL_FRESH = "crl_complete", "crl_fresh"
OCSP = "ocsp_staple"  # a tls-format credential's tls.ocsp-staple


@dataclass(frozen=True)
class Finding:
    gateway: str  # "namespace/name"
    server: str  # the port name ("https-kim"), else "#<index>"
    port: int | None
    host: str  # one host for host_covered, else the server's hosts joined with ", "
    credential: str  # "kim-credential", "kim-new-credential-cacert", "istio-ingressgateway-certs (mounted)"
    check: str
    status: str  # ok | warning | error
    code: str | None
    detail: str
    not_after: str | None = None
    days_left: int | None = None

    @property
    def reason(self) -> str | None:
        return CODES.get(self.code) if self.code else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["reason"] = self.reason
        return d


@dataclass(frozen=True)
class Report:
    findings: tuple[Finding, ...]
    gateways: int
    servers: int  # TLS-terminating servers checked
    notes: tuple[str, ...] = field(default=())

    @property
    def errors(self) -> int:
        return sum(f.status == ERROR for f in self.findings)

    @property
    def warnings(self) -> int:
        return sum(f.status == WARNING for f in self.findings)

    @property
    def ok(self) -> bool:
        return self.errors == 0

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "findings": [f.to_dict() for f in self.findings],
            "summary": {"gateways": self.gateways, "servers": self.servers, "errors": self.errors,
                        "warnings": self.warnings, "checks": len(self.findings)},
            "notes": list(self.notes),
        }


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------

def secret_from_api(obj: dict, source: str = "cluster") -> SecretDoc:
    """An API Secret dict (base64 ``data``) → a :class:`SecretDoc` (bytes). Undecodable values
    become empty (and are then reported as missing keys)."""
    meta = obj.get("metadata") or {}
    data: dict[str, bytes] = {}
    for k, v in (obj.get("data") or {}).items():
        try:
            data[str(k)] = base64.b64decode(str(v or ""), validate=True)
        except (binascii.Error, ValueError):
            data[str(k)] = b""
    for k, v in (obj.get("stringData") or {}).items():
        data[str(k)] = str(v).encode()
    return SecretDoc(str(meta.get("name")), meta.get("namespace"), data, source)


def config_map_from_api(obj: dict, source: str = "cluster") -> ConfigMapDoc:
    return config_map_doc(obj, source)


def referenced_config_maps(gateways: Iterable[GatewayDoc]) -> list[tuple[str, str]]:
    """``(namespace, name)`` of every ConfigMap a ``caCertCredentialName`` names (``configmap://NS/NAME``)."""
    out = []
    for gw in gateways:
        for server in gw.servers:
            tls = server.get("tls") if isinstance(server.get("tls"), dict) else {}
            ref = str(tls.get("caCertCredentialName") or "")
            if ref.startswith(CONFIGMAP_PREFIX):
                ns, _, name = ref[len(CONFIGMAP_PREFIX):].partition("/")
                if ns and name:
                    out.append((ns, name))
    return list(dict.fromkeys(out))


def gateway_from_api(obj: dict, source: str = "cluster") -> GatewayDoc:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    servers = spec.get("servers") if isinstance(spec.get("servers"), list) else []
    return GatewayDoc(str(meta.get("name") or "gateway"), meta.get("namespace"),
                      tuple(s for s in servers if isinstance(s, dict)), source)


def mounts_from_deployment(deployment: dict | None) -> tuple[Mount, ...]:
    """The Secret mounts of the gateway Deployment's istio-proxy container (plus the two legacy
    mounts), read by the same rules as manifest files."""
    if not deployment:
        return DEFAULT_MOUNTS
    return parse_manifests([("Deployment", json.dumps(deployment))]).mounts


def referenced_secret_names(gateways: Iterable[GatewayDoc], mounts: Sequence[Mount] = DEFAULT_MOUNTS) -> list[str]:
    """Every Secret name the TLS servers of ``gateways`` would read (for fetching by name)."""
    names: list[str] = []
    for gw in gateways:
        for server in gw.servers:
            tls = server.get("tls") if isinstance(server.get("tls"), dict) else {}
            for n in credential_names(tls):
                names += [n, c.cacert_secret_name(n)]
            ca_ref = str(tls.get("caCertCredentialName") or "")
            if ca_ref and not ca_ref.startswith(CONFIGMAP_PREFIX):
                bare = ca_ref.rpartition("/")[2]
                names += [bare, bare.removesuffix(c.CACERT_SECRET_SUFFIX)]
            for key in ("serverCertificate", "privateKey", "caCertificates", "caCrl"):
                if tls.get(key):
                    try:
                        names.append(mount_for(str(tls[key]), tuple(mounts))[0])
                    except LookupError:
                        pass
    return list(dict.fromkeys(names))


def uses_file_mounts(gateways: Iterable[GatewayDoc]) -> bool:
    return any(isinstance(s.get("tls"), dict) and s["tls"].get("serverCertificate") and not credential_names(s["tls"])
               for gw in gateways for s in gw.servers)


# ---------------------------------------------------------------------------------------------
# host names
# ---------------------------------------------------------------------------------------------

def _canonical(name: str) -> str:
    name = name.strip().lower().rstrip(".")
    if name.isascii():
        return name
    try:
        from kimpki.pki.names import parse_host

        return parse_host(name).value
    except Exception:  # noqa: BLE001 - an odd host simply won't match
        return name


def name_covers(san: str, host: str) -> bool:
    """Does certificate name ``san`` cover server host ``host``? A wildcard SAN covers exactly
    one left-most label (``*.example.com`` covers ``a.example.com``, not ``a.b.example.com`` nor
    ``example.com``); a wildcard host is covered only by the same wildcard."""
    san, host = _canonical(san), _canonical(host)
    if san == host:
        return True
    if san.startswith("*.") and not host.startswith("*."):
        suffix = san[1:]
        label = host[: -len(suffix)] if host.endswith(suffix) else ""
        return bool(label) and "." not in label and "*" not in label
    return False


def _strip_ns(host) -> str:
    host = str(host)
    return host.split("/", 1)[1] if "/" in host else host


# ---------------------------------------------------------------------------------------------
# analysis
# ---------------------------------------------------------------------------------------------

def _rfc3339(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _days(t: datetime, now: datetime) -> int:
    return int((t - now).total_seconds() // 86400)


@dataclass
class _Server:
    gateway: str
    server: str
    port: int | None
    hosts: tuple[str, ...]
    mode: str
    out: list

    def add(self, credential: str, check: str, status: str, detail: str, code: str | None = None,
            host: str | None = None, not_after: datetime | None = None, now: datetime | None = None) -> None:
        self.out.append(Finding(self.gateway, self.server, self.port,
                                host if host is not None else ", ".join(self.hosts), credential, check, status,
                                code if status != OK else None, detail,
                                _rfc3339(not_after) if not_after else None,
                                _days(not_after, now) if not_after and now else None))


def _load_chain(raw: bytes, notes: list[str] | None = None) -> list[x509.Certificate]:
    """Certificates in ``raw``; library warnings (a zero serial, as the manual ``-set_serial 0``
    makes) are collected into ``notes`` instead of being printed."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            chain = x509.load_pem_x509_certificates(raw)
        except parse.UNREADABLE:
            return []
    if any(parse.unreadable_part(cert) for cert in chain):
        return []  # a part that does not read (a corrupt key or name): no usable certificate either
    if notes is not None:
        for w in caught:
            text = str(w.message)
            if "serial number" in text:
                notes.append("its serial number is not positive (RFC 5280 forbids it; some clients reject it)")
            else:
                notes.append(" ".join(text.split()))
    return chain


def _load_key(raw: bytes):
    try:
        return serialization.load_pem_private_key(raw, password=None), None
    except TypeError:
        return None, "is an encrypted private key (Istio needs it unencrypted)"
    except (ValueError, UnsupportedAlgorithm):
        return None, "holds no PEM private key"


def _spki(pub) -> bytes:
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _keys(sec: SecretDoc) -> str:
    return ", ".join(sorted(sec.data)) or "no data"


def _check_pair(s: _Server, label: str, cert_raw: bytes, key_raw: bytes, cert_where: str, key_where: str,
                now: datetime, warn_days: int) -> None:
    """credential_valid, key_matches, expiry and host_covered for one certificate and key."""
    notes: list[str] = []
    chain = _load_chain(cert_raw, notes)
    key, key_problem = _load_key(key_raw)
    if not chain or key_problem:
        why = f"{cert_where} holds no PEM certificate" if not chain else f"{key_where} {key_problem}"
        s.add(label, VALID, ERROR, why, "IST0161")
        return
    leaf = chain[0]
    what = (f"{cert_where}: {leaf.subject.rfc4514_string() or '(empty subject)'}, "
            f"issuer {leaf.issuer.rfc4514_string() or '(empty)'}")
    if notes:
        s.add(label, VALID, WARNING, f"{what}; " + "; ".join(dict.fromkeys(notes)), "KIM0006")
    else:
        s.add(label, VALID, OK, what)
    if _spki(key.public_key()) == _spki(leaf.public_key()):
        s.add(label, KEY, OK, f"{key_where} matches the certificate")
    else:
        s.add(label, KEY, ERROR, f"{key_where} is not the key of the certificate in {cert_where}", "KIM0001")
    nb, na = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    days = _days(na, now)
    if now > na:
        ago = _days(now, na)
        s.add(label, EXPIRY, ERROR, f"certificate expired on {_rfc3339(na)} ({ago} day{'s' * (ago != 1)} ago)",
              "IST0161", not_after=na, now=now)
    elif now < nb:
        s.add(label, EXPIRY, ERROR, f"certificate is not valid before {_rfc3339(nb)}", "IST0161",
              not_after=na, now=now)
    elif days < warn_days:
        s.add(label, EXPIRY, WARNING, f"certificate expires in {days} day{'s' * (days != 1)} on {_rfc3339(na)} "
                                      f"(under --warn-days {warn_days})", "KIM0004", not_after=na, now=now)
    else:
        s.add(label, EXPIRY, OK, f"valid until {_rfc3339(na)} ({days} days left)", not_after=na, now=now)
    dns = []
    try:
        dns = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName)
    except x509.ExtensionNotFound:
        pass
    cns = [a.value for a in leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    for host in s.hosts:
        if host == "*":
            continue  # any SNI name: nothing to compare
        covering = [n for n in dns if name_covers(n, host)]
        if covering:
            s.add(label, HOST, OK, f"covered by DNS name {covering[0]}", host=host)
        elif not dns:
            cn = f" (only the subject CN {cns[0]}, which clients ignore)" if cns else ""
            s.add(label, HOST, ERROR, f"the certificate has no DNS subjectAltName{cn}", "KIM0002", host=host)
        else:
            s.add(label, HOST, ERROR, f"not among the certificate's DNS names: {', '.join(dns)}", "KIM0002",
                  host=host)


def _no_ca(mode: str) -> str:
    """The code of a missing or unusable CA: OPTIONAL_MUTUAL has its own, as it is easily thought
    not to need one."""
    return "KIM0016" if mode == "OPTIONAL_MUTUAL" else "KIM0003"


def _needs(mode: str) -> str:
    """``a MUTUAL server needs``, or for OPTIONAL_MUTUAL why it needs a CA at all."""
    if mode == "OPTIONAL_MUTUAL":
        return "an OPTIONAL_MUTUAL server checks the client certificates presented, so it needs"
    return f"a {mode} server needs"


def _check_tls_params(s: _Server, tls: dict, label: str) -> None:
    """KIM0015, KIM0017, KIM0018: tls fields Istio passes on to a server that cannot work with them."""
    from kimpki.istio.gateway import optional_mutual_pins, simple_sans_effect
    from kimpki.istio.tlsparams import MUTUAL_MODES, range_problem

    if tls.get("subjectAltNames") and s.mode not in MUTUAL_MODES:
        sds = bool(credential_names(tls))
        s.add(label, TLS, ERROR if sds else WARNING,
              f"subjectAltNames on a {s.mode} server: {simple_sans_effect(tls)}; use mode MUTUAL or "
              f"OPTIONAL_MUTUAL to pin client certificates, or drop them", "KIM0015")
    problem = range_problem(tls.get("minProtocolVersion"), tls.get("maxProtocolVersion"))
    if problem:
        s.add(label, TLS, ERROR, problem, "KIM0017")
    _check_ecdh_curves(s, tls, label)
    pins = optional_mutual_pins(s.mode, tls)
    if pins:
        s.add(label, TLS, WARNING, f"{pins} on an OPTIONAL_MUTUAL server: Envoy then requires a client "
                                   f"certificate, so it behaves as MUTUAL (clients without one are refused)",
              "KIM0018")


def _check_ecdh_curves(s: _Server, tls: dict, label: str) -> None:
    """KIM0022: ecdhCurves go to Envoy unchecked; a name it does not know fails the whole listener."""
    from kimpki.istio.tlsparams import ENVOY_ECDH_CURVES, unknown_to_envoy

    bad = unknown_to_envoy(tls.get("ecdhCurves"))
    if bad:
        s.add(label, TLS, WARNING, f"ecdhCurves {', '.join(bad)}: not a curve Envoy knows (it rejects the gateway's "
                                   f"listener, and every server on the port stops serving); Envoy knows "
                                   f"{', '.join(ENVOY_ECDH_CURVES)}", "KIM0022")


def _check_ca(s: _Server, label: str, raw: bytes, where: str, now: datetime) -> None:
    cas = _load_chain(raw)
    if not cas:
        s.add(label, CA, ERROR, f"{where} holds no PEM certificate", _no_ca(s.mode))
        return
    valid = [ca for ca in cas if ca.not_valid_before_utc <= now <= ca.not_valid_after_utc]
    if not valid:
        na = max(ca.not_valid_after_utc for ca in cas)
        s.add(label, CA, ERROR, f"{where}: every CA certificate has expired (last on {_rfc3339(na)})", _no_ca(s.mode))
        return
    names = "; ".join(ca.subject.rfc4514_string() for ca in cas[:3]) + (" ..." if len(cas) > 3 else "")
    s.add(label, CA, OK, f"{where}: {names}")


def _check_sds(s: _Server, names: tuple[str, ...], secrets: SecretIndex, now: datetime, warn_days: int,
               ca_ref: str | None = None) -> None:
    for name in names:
        sec = secrets.get(name)
        if sec is None:
            s.add(name, FOUND, ERROR, f"Secret {name} not found in namespace {secrets.namespace}", "IST0101")
            continue
        s.add(name, FOUND, OK, f"Secret {name} in namespace {sec.namespace or secrets.namespace}")
        if sec.data.get(c.GENERIC_CERT) and sec.data.get(c.GENERIC_KEY):
            ck, kk = c.GENERIC_CERT, c.GENERIC_KEY
        elif sec.data.get(c.TLS_CERT) and sec.data.get(c.TLS_KEY):
            ck, kk = c.TLS_CERT, c.TLS_KEY
        else:
            s.add(name, VALID, ERROR, f"Secret {name} has neither keys {c.GENERIC_CERT} and {c.GENERIC_KEY} nor "
                                      f"{c.TLS_CERT} and {c.TLS_KEY} (it has: {_keys(sec)})", "IST0161")
            continue
        _check_pair(s, name, sec.data[ck], sec.data[kk], f"{name}[{ck}]", f"{name}[{kk}]",
                    now, warn_days)
        # Istio reads the staple only beside tls.crt/tls.key (the generic key set, when present, wins).
        if ck == c.TLS_CERT and sec.data.get(c.OCSP_STAPLE):
            _check_staple(s, name, sec.data[c.OCSP_STAPLE], sec.data[ck], now)
    if s.mode == "SIMPLE" or not names:
        return
    if ca_ref:
        _check_ca_credential(s, ca_ref, secrets, now)
        return
    # MUTUAL / OPTIONAL_MUTUAL: Istio's CA precedence (first credential name only).
    name = names[0]
    ca_name = c.cacert_secret_name(name)
    ca_sec = secrets.get(ca_name)
    if ca_sec is not None:
        key = next((k for k in (c.GENERIC_CA, c.TLS_CA) if ca_sec.data.get(k)), None)
        if key is None:
            s.add(ca_name, CA, ERROR, f"Secret {ca_name} exists but has neither {c.GENERIC_CA} nor {c.TLS_CA} "
                                      f"(it has: {_keys(ca_sec)}); Istio does not fall back to Secret {name}",
                  _no_ca(s.mode))
            return
        _check_ca(s, ca_name, ca_sec.data[key], f"{ca_name}[{key}]", now)
        _check_crls(s, ca_name, ca_sec, key, secrets.get(name), now)
        return
    sec = secrets.get(name)
    if sec is None:
        s.add(ca_name, CA, ERROR, f"{_needs(s.mode)} a CA: there is neither Secret {ca_name} nor "
                                  f"Secret {name}", _no_ca(s.mode))
        return
    key = next((k for k in (c.GENERIC_CA, c.TLS_CA) if sec.data.get(k)), None)
    if key is None:
        s.add(name, CA, ERROR, f"{_needs(s.mode)} a CA: there is no Secret {ca_name} and Secret {name} "
                               f"has neither {c.GENERIC_CA} nor {c.TLS_CA}", _no_ca(s.mode))
        return
    _check_ca(s, name, sec.data[key], f"{name}[{key}]", now)
    _check_crls(s, name, sec, key, sec, now)


def _split_crls(raw: bytes) -> list[x509.CertificateRevocationList]:
    marker = b"-----BEGIN X509 CRL-----"
    out = []
    for part in raw.split(marker)[1:]:
        try:
            out.append(x509.load_pem_x509_crl(marker + part))
        except ValueError:
            return []  # one unreadable CRL: Istio hands Envoy the lot, and Envoy refuses it
    return out


def _chain_cas(bundle: list[x509.Certificate], served: SecretDoc | None) -> list[x509.Certificate]:
    """The CAs of the client chain the Secrets show: the bundle, then the CA certificates of the
    server's own chain that lead to it (kimpki's clients come from the same intermediates)."""
    cas = list(bundle)
    raw = (served.data.get(c.GENERIC_CERT) or served.data.get(c.TLS_CERT) or b"") if served else b""
    below = [cert for cert in _load_chain(raw)[1:] if _is_ca(cert)]
    grew = True
    while grew:
        subjects = {ca.subject for ca in cas}
        found = [cert for cert in below if cert.issuer in subjects and cert not in cas]
        cas += found
        grew = bool(found)
    return cas


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    try:
        return crl.issuer == ca.subject and crl.is_signature_valid(ca.public_key())
    except (TypeError, ValueError, UnsupportedAlgorithm):
        return False


def _check_crls(s: _Server, label: str, holder: SecretDoc, ca_key: str, served: SecretDoc | None,
                now: datetime) -> None:
    """crl_complete and crl_fresh for a MUTUAL credential whose CA Secret carries CRLs (Istio
    reads them from beside the CA: ``crl`` with ``cacert``, ``ca.crl`` with ``ca.crt``)."""
    from kimpki.pki.revocation import crl_refresh_due

    crl_key = c.GENERIC_CRL if ca_key == c.GENERIC_CA else c.TLS_CRL
    raw = holder.data.get(crl_key)
    if crl_key not in holder.data:
        return  # no revocation: Envoy checks no CRL
    where = f"{holder.name}[{crl_key}]"
    crls = _split_crls(raw or b"")
    if not crls:
        s.add(label, CRL_COMPLETE, ERROR, f"{where} holds no readable CRL: Envoy refuses the configuration, or "
                                          f"every client", "KIM0007")
        return
    cas = _chain_cas(_load_chain(holder.data[ca_key]), served)

    def name(ca: x509.Certificate) -> str:
        return ca.subject.rfc4514_string() or "(empty subject)"

    mine = {id(ca): next((crl for crl in crls if _signed_by(crl, ca)), None) for ca in cas}
    have = [ca for ca in cas if mine[id(ca)] is not None]
    lacking = [ca for ca in cas if mine[id(ca)] is None]
    if not have:
        s.add(label, CRL_COMPLETE, ERROR, f"{where} holds {len(crls)} CRL{'s' * (len(crls) != 1)}, none signed by a "
                                          f"CA of the chain ({'; '.join(map(name, cas))}): Envoy refuses every "
                                          f"client certificate", "KIM0007")
        return
    if lacking:
        s.add(label, CRL_COMPLETE, ERROR, f"{where} has CRLs of {'; '.join(map(name, have))} but none of "
                                          f"{'; '.join(map(name, lacking))}: Envoy refuses every client whose "
                                          f"chain holds {'it' if len(lacking) == 1 else 'one of them'}", "KIM0008")
    else:
        s.add(label, CRL_COMPLETE, OK, f"{where}: a CRL for every CA of the chain ({'; '.join(map(name, have))})")
    for ca in have:
        crl = mine[id(ca)]
        this, nxt = crl.last_update_utc, crl.next_update_utc
        what = f"CRL of {name(ca)}"
        if nxt is None:
            s.add(label, CRL_FRESH, OK, f"{what} has no nextUpdate")
        elif now >= nxt:
            s.add(label, CRL_FRESH, ERROR, f"{what} expired on {_rfc3339(nxt)}: Envoy refuses every client of this "
                                           f"CA; run 'kimpki renew' (or 'kimpki crl CA')", "KIM0009")
        elif now >= crl_refresh_due(this, nxt):
            s.add(label, CRL_FRESH, WARNING, f"{what} is in the last third of its validity (next update "
                                             f"{_rfc3339(nxt)}) and was not re-signed: is 'kimpki renew' "
                                             f"running?", "KIM0010")
        else:
            s.add(label, CRL_FRESH, OK, f"{what}: next update {_rfc3339(nxt)}")


def _check_staple(s: _Server, name: str, raw: bytes, cert_raw: bytes, now: datetime) -> None:
    """KIM0013, KIM0014: the OCSP staple Istio hands to Envoy with the certificate (Envoy's rule,
    as the local gateway applies it: :func:`kimpki.pki.revocation.staple_refusal`)."""
    from kimpki.pki.revocation import read_ocsp_staple, staple_refusal

    chain = _load_chain(cert_raw)
    if not chain:
        return  # no certificate to staple: already an IST0161
    where = f"{name}[{c.OCSP_STAPLE}]"
    why = staple_refusal(raw, chain[0].serial_number)
    if why is not None:
        s.add(name, OCSP, ERROR, f"{where} {why}: Envoy rejects the whole secret, so the server is not served",
              "KIM0013")
        return
    info = read_ocsp_staple(raw)
    said = info.status + (f" ({info.revocation_reason})" if info.revocation_reason else "")
    if info.next_update is None or now >= info.next_update:
        when = f"expired on {_rfc3339(info.next_update)}" if info.next_update else "has no nextUpdate"
        s.add(name, OCSP, WARNING, f"{where} {when} ({said}): Envoy serves the certificate without a staple; "
                                   f"'kimpki renew' re-signs it", "KIM0014")
        return
    s.add(name, OCSP, OK, f"{where}: {said}, next update {_rfc3339(info.next_update)}")


def _check_sources(s: _Server, tls: dict) -> None:
    """KIM0019: Istio takes one certificate source per server and ignores the others in silence."""
    used = [f for f in ("credentialName", "credentialNames", "tlsCertificates", "serverCertificate") if tls.get(f)]
    if len(used) > 1:
        wins = credential_names(tls)
        what = ("credentialNames " + ", ".join(wins)) if tls.get("credentialNames") else used[0]
        s.add(", ".join(wins) or "(none)", SOURCES, ERROR,
              f"{' and '.join(used)} are all set; Istio serves {what} and ignores the rest", "KIM0019")


def _check_algorithms(s: _Server, names: tuple[str, ...], secrets: SecretIndex) -> None:
    """KIM0020: two certificates of one key algorithm in credentialNames."""
    if len(names) < 2:
        return
    seen: dict[str, str] = {}
    for name in names:
        sec = secrets.get(name)
        raw = (sec.data.get(c.GENERIC_CERT) or sec.data.get(c.TLS_CERT)) if sec is not None else None
        chain = _load_chain(raw) if raw else []
        if not chain:
            continue  # reported by the credential checks
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        pub = chain[0].public_key()
        alg = "RSA" if isinstance(pub, rsa.RSAPublicKey) else "ECDSA" if isinstance(pub, ec.EllipticCurvePublicKey) \
            else type(pub).__name__
        if alg in seen:
            s.add(f"{seen[alg]}, {name}", ALGORITHMS, ERROR,
                  f"credentialNames {seen[alg]} and {name} both hold an {alg} certificate; Envoy takes one "
                  f"certificate per key algorithm (an RSA and an ECDSA one) and rejects the server", "KIM0020")
            return
        seen[alg] = name
    s.add(", ".join(names), ALGORITHMS, OK, "one certificate per key algorithm: " +
          ", ".join(f"{a} {n}" for a, n in seen.items()))


def _check_ca_credential(s: _Server, ref: str, secrets: SecretIndex, now: datetime) -> None:
    """caCertCredentialName: the MUTUAL CA from its own Secret or ConfigMap (KIM0021 when missing)."""
    kind, shown, _, doc = ca_credential_source(ref, secrets)
    if kind == "invalid":
        s.add(ref, CA, ERROR, f"caCertCredentialName {ref}: a ConfigMap is named configmap://NAMESPACE/NAME",
              "KIM0021")
        return
    if kind == "not-ca":
        s.add(ref, CA, ERROR, f"caCertCredentialName {ref}: Istio reads a Secret whose name does not end in "
                              f"{c.CACERT_SECRET_SUFFIX} as a certificate and key, never as a CA bundle; name the "
                              f"CA-only Secret {ref}{c.CACERT_SECRET_SUFFIX}", "KIM0021")
        return
    if doc is None:
        s.add(ref, CA, ERROR, f"caCertCredentialName: {kind} {shown} not found", "KIM0021")
        return
    key = next((k for k in (c.GENERIC_CA, c.TLS_CA) if doc.data.get(k)), None)
    if key is None:
        s.add(ref, CA, ERROR, f"caCertCredentialName: {kind} {shown} has neither {c.GENERIC_CA} nor {c.TLS_CA}",
              "KIM0003")
        return
    _check_ca(s, ref, doc.data[key], f"{kind} {doc.name}[{key}]", now)


def _mounted(path: str, secrets: SecretIndex, mounts: tuple[Mount, ...]):
    """``(raw bytes, where, secret name, problem (check, code, detail) or None)``."""
    try:
        secret_name, key = mount_for(path, mounts)
    except LookupError as e:
        return None, path, "", (TLS, "KIM0005", str(e))
    sec = secrets.get(secret_name)
    where = f"{secret_name}[{key}]"
    if sec is None:
        return None, where, secret_name, (FOUND, "IST0101", f"Secret {secret_name} not found in namespace "
                                                            f"{secrets.namespace}")
    if not sec.data.get(key):
        return None, where, secret_name, (VALID, "IST0161", f"{path}: Secret {secret_name} has no key {key} "
                                                            f"(it has: {_keys(sec)})")
    return sec.data[key], where, secret_name, None


def _check_files(s: _Server, tls: dict, secrets: SecretIndex, mounts: tuple[Mount, ...], now: datetime,
                 warn_days: int) -> None:
    cert_path, key_path = tls.get("serverCertificate"), tls.get("privateKey")
    if not cert_path or not key_path:
        s.add("(none)", TLS, ERROR, "tls needs credentialName, or serverCertificate and privateKey", "KIM0005")
        return
    cert_raw, cert_where, cert_secret, p1 = _mounted(str(cert_path), secrets, mounts)
    key_raw, key_where, key_secret, p2 = _mounted(str(key_path), secrets, mounts)
    secret_names = sorted({n for n in (cert_secret, key_secret) if n})
    label = ", ".join(secret_names) + " (mounted)" if secret_names else str(cert_path)
    problems = [p for p in (p1, p2) if p]
    for check, code, detail in dict.fromkeys(problems):
        s.add(label, check, ERROR, detail, code)
    if not problems:
        s.add(label, FOUND, OK, f"{cert_where}, {key_where} mounted as {cert_path}, {key_path}")
        _check_pair(s, label, cert_raw, key_raw, cert_where, key_where, now, warn_days)
    if s.mode == "SIMPLE":
        return
    ca_path = tls.get("caCertificates")
    if not ca_path:
        s.add(label, CA, ERROR, f"{_needs(s.mode)} caCertificates (or credentialName with a CA)", _no_ca(s.mode))
        return
    raw, where, ca_secret, p = _mounted(str(ca_path), secrets, mounts)
    ca_label = f"{ca_secret} (mounted)" if ca_secret else str(ca_path)
    if p:
        s.add(ca_label, CA, ERROR, p[2], _no_ca(s.mode) if p[1] != "IST0101" else "IST0101")
        return
    _check_ca(s, ca_label, raw, where, now)
    _check_ca_crl(s, tls, str(ca_path), secrets, mounts)


def _check_ca_crl(s: _Server, tls: dict, ca_path: str, secrets: SecretIndex, mounts: tuple[Mount, ...]) -> None:
    """A file-mounted MUTUAL server's ``caCrl``: the file must be there (KIM0011); and a CRL file
    kimpki wrote beside the CA file should be named by it (KIM0012)."""
    import posixpath

    from kimpki.istio.credential import crl_file_name

    crl_path = tls.get("caCrl")
    if not crl_path:
        beside = posixpath.join(posixpath.dirname(ca_path), crl_file_name(posixpath.basename(ca_path)))
        raw, where, secret, p = _mounted(beside, secrets, mounts)
        if p is None:
            s.add(f"{secret} (mounted)", CA_CRL, WARNING, f"{where} holds the CRLs of {ca_path}, but the server has "
                                                          f"no caCrl: revoked client certificates are admitted "
                                                          f"(add caCrl: {beside})", "KIM0012")
        return
    raw, where, secret, p = _mounted(str(crl_path), secrets, mounts)
    label = f"{secret} (mounted)" if secret else str(crl_path)
    if p is not None:
        s.add(label, CA_CRL, ERROR, f"caCrl {p[2]}; Envoy cannot build this server's listener without it",
              "KIM0011")
        return
    try:
        crls = x509.load_pem_x509_crl(raw)
    except ValueError:
        s.add(label, CA_CRL, ERROR, f"caCrl {crl_path}: {where} holds no PEM CRL", "KIM0011")
        return
    s.add(label, CA_CRL, OK, f"{where}: CRL of {crls.issuer.rfc4514_string()}"
                             + (" and more" if raw.count(b"BEGIN X509 CRL") > 1 else ""))


def analyse(gateways: Sequence[GatewayDoc], secrets: Iterable[SecretDoc], *, namespace: str = c.DEFAULT_NAMESPACE,
            mounts: Sequence[Mount] = DEFAULT_MOUNTS, now: datetime, warn_days: int = 30,
            notes: Sequence[str] = (), config_maps: Iterable[ConfigMapDoc] = ()) -> Report:
    """Every TLS-terminating server of ``gateways`` (protocol HTTPS/TLS, tls.mode SIMPLE, MUTUAL
    or OPTIONAL_MUTUAL), its credentials looked up among ``secrets`` in ``namespace``."""
    index = SecretIndex(secrets, namespace, config_maps)
    mounts = tuple(mounts)
    findings: list[Finding] = []
    servers = 0
    for gw in gateways:
        gw_label = f"{gw.namespace}/{gw.name}" if gw.namespace else gw.name
        for i, server in enumerate(gw.servers):
            port = server.get("port") if isinstance(server.get("port"), dict) else {}
            protocol = str(port.get("protocol") or "").upper()
            tls = server.get("tls") if isinstance(server.get("tls"), dict) else {}
            mode = str(tls.get("mode") or "PASSTHROUGH").upper()
            if protocol not in TLS_PROTOCOLS or mode not in TERMINATING_MODES:
                continue  # plain HTTP, passthrough, ISTIO_MUTUAL: no credential of ours
            servers += 1
            try:
                number = int(port.get("number"))
            except (TypeError, ValueError):
                number = None
            hosts = tuple(dict.fromkeys(_strip_ns(h).lower() for h in server.get("hosts") or []))
            s = _Server(gw_label, str(port.get("name") or f"#{i}"), number, hosts, mode, findings)
            names = credential_names(tls)
            _check_sources(s, tls)
            _check_algorithms(s, names, index)
            if names:
                _check_sds(s, names, index, now, warn_days, str(tls.get("caCertCredentialName") or "") or None)
            else:
                _check_files(s, tls, index, mounts, now, warn_days)
            _check_tls_params(s, tls, ", ".join(names) or str(tls.get("serverCertificate") or "(tls)"))
    return Report(tuple(findings), len(gateways), servers, tuple(notes))


# ---------------------------------------------------------------------------------------------
# rendering helpers (plain text; the CLI adds nothing but printing)
# ---------------------------------------------------------------------------------------------

HEADERS = ["GATEWAY", "SERVER", "HOST", "CREDENTIAL", "CHECK", "STATUS", "DETAIL"]


def rows(report: Report, only_problems: bool = False) -> list[list[str]]:
    out = []
    for f in report.findings:
        if only_problems and f.status == OK:
            continue
        status = f.status.upper() if f.status != OK else "ok"
        if f.code:
            status += f" {f.code}"
        server = f"{f.server}:{f.port}" if f.port is not None else f.server
        out.append([f.gateway, server, f.host or "-", f.credential, f.check, status, f.detail])
    return out


def summary_line(report: Report) -> str:
    if not report.servers:
        return f"no TLS-terminating Gateway servers found ({report.gateways} Gateway{'s' * (report.gateways != 1)} read)"
    e, w = report.errors, report.warnings
    verdict = "all credentials OK" if e == 0 and w == 0 else (
        f"{e} error{'s' * (e != 1)}, {w} warning{'s' * (w != 1)}")
    return (f"{verdict} ({report.servers} TLS server{'s' * (report.servers != 1)} in "
            f"{report.gateways} Gateway{'s' * (report.gateways != 1)}, {len(report.findings)} checks)")
