"""Credential Secrets for an Istio ingress gateway, built from PEM bytes (pure: values in, dicts out).

Two key sets, both read by Istio (see :mod:`kimpki.istio.contract`):

* ``generic``: type ``Opaque``, keys ``key``/``cert``/``cacert``: exactly what
  ``kubectl create secret generic NAME --from-file=key=... --from-file=cert=... --from-file=cacert=...``
  makes (kubectl leaves ``type`` out; the API server defaults it to ``Opaque``).
* ``tls``: type ``kubernetes.io/tls``, keys ``tls.crt``/``tls.key``/``ca.crt``, as cert-manager writes.

For MUTUAL the CA bundle goes into the credential itself, or (``ca_secret=True``) into a second
Secret ``NAME-cacert`` with the key ``cacert`` (generic) or ``ca.crt`` (tls); that Secret is
always ``Opaque`` because the API server insists that a ``kubernetes.io/tls`` Secret holds a key.
CRLs, when given, sit beside the CA: ``crl`` (generic) or ``ca.crl`` (tls), where Istio reads them.
An OCSP staple (a DER OCSP response for the served certificate) goes into ``tls.ocsp-staple``,
which Istio reads only in the TLS form (``ocsp_staple``: the tls key set, SDS only).

File-mounted (legacy) gateways read files, not Secrets: the credential defaults to
``istio-ingressgateway-certs`` in the TLS form (``tls.crt``, ``tls.key``), and for MUTUAL the CA
goes into ``istio-ingressgateway-ca-certs`` under ``<ca-name>.crt`` (``example.com.crt`` in the manual steps),
with the CRLs, when given, beside it as ``<ca-name>.crl`` (:func:`crl_file_name`), the file a Gateway's
``tls.caCrl`` names (Istio ≥ 1.22; file-mounted servers only).

The certificate value is always the leaf plus intermediates, never the root: clients hold the
root already, and a root in the served chain only costs bytes. Every Secret carries the label
``app.kubernetes.io/managed-by=kimpki`` and ``kimpki.io/*`` annotations recording where it came
from, so that rotation, renewal and status can work from the cluster alone
(:func:`read_provenance` reads them back).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from kimpki.errors import UsageError
from kimpki.istio import contract as c

FORMATS = ("generic", "tls")
MODES = ("simple", "mutual")
DELIVERIES = ("sds", "file-mounted")

# The kimpki.io/* annotations every managed Secret carries.
ANN_STORE_NAME = c.ANNOTATION_PREFIX + "store-name"  # the certificate's name in the local store
ANN_HOSTS = c.ANNOTATION_PREFIX + "hosts"  # comma-separated DNS names and IPs (the SANs)
ANN_CA = c.ANNOTATION_PREFIX + "ca"  # the store name of the CA published (MUTUAL) / that issued it
ANN_SERIAL = c.ANNOTATION_PREFIX + "serial"  # the leaf's serial, hex
ANN_NOT_AFTER = c.ANNOTATION_PREFIX + "not-after"  # RFC 3339
ANN_FORMAT = c.ANNOTATION_PREFIX + "format"  # generic | tls
ANN_MODE = c.ANNOTATION_PREFIX + "mode"  # simple | mutual
ANN_DELIVERY = c.ANNOTATION_PREFIX + "delivery"  # sds | file-mounted
ANN_ROLE = c.ANNOTATION_PREFIX + "role"  # credential | ca
ANN_CREDENTIAL = c.ANNOTATION_PREFIX + "credential"  # on a CA Secret: the credential it belongs to
ANN_CA_FILE_NAME = c.ANNOTATION_PREFIX + "ca-file-name"  # file-mounted MUTUAL: the CA's file (key) name
ANN_OCSP_STAPLE = c.ANNOTATION_PREFIX + "ocsp-staple"  # "true": kimpki keeps an OCSP staple in it
ANN_PAIR = c.ANNOTATION_PREFIX + "pair"  # RSA+ECDSA (credentialNames): the other Secret of the pair

ROLE_CREDENTIAL = "credential"
ROLE_CA = "ca"
ROLE_CA_ONLY = "ca-only"  # a CA bundle of its own, for tls.caCertCredentialName (no key material)


@dataclass(frozen=True)
class CredentialSpec:
    """What to build: the Secret's name and place, its key set, and how the gateway uses it.

    ``name=None`` is allowed only with ``file_mounted`` and means ``istio-ingressgateway-certs``.
    ``ca_file_name`` (file-mounted MUTUAL) is the data key in ``istio-ingressgateway-ca-certs``,
    and therefore the file name under ``/etc/istio/ingressgateway-ca-certs``.
    """

    name: str | None
    namespace: str = c.DEFAULT_NAMESPACE
    format: str = "generic"
    mutual: bool = False
    ca_secret: bool = False
    file_mounted: bool = False
    ca_file_name: str | None = None
    ocsp_staple: bool = False  # an OCSP response for the certificate in tls.ocsp-staple
    pair: str | None = None  # the other Secret of an RSA+ECDSA pair (see kimpki.ops.pairs)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise UsageError(f"unknown credential format {self.format!r}: choose generic or tls")
        if self.ocsp_staple:
            if self.file_mounted:
                raise UsageError("--ocsp-staple is for SDS credentials: a file-mounted gateway reads only the "
                                 "certificate and key files")
            if self.format != "tls":
                raise UsageError(f"--ocsp-staple needs the tls key set: Istio reads {c.OCSP_STAPLE} only beside "
                                 f"{c.TLS_CERT}/{c.TLS_KEY} (drop --format generic)")
        if self.file_mounted:
            if self.format != "tls":
                raise UsageError("a file-mounted credential is always in the TLS form (tls.crt, tls.key): "
                                 "drop --format generic")
            if self.ca_secret:
                raise UsageError("--ca-secret is for SDS credentials; a file-mounted MUTUAL gateway reads "
                                 f"its CA from Secret {c.FILE_MOUNTED_CA_SECRET}")
        elif not self.name:
            raise UsageError("give the Secret's NAME (only --file-mounted has a default name)")
        if self.ca_secret and not self.mutual:
            raise UsageError("--ca-secret only makes sense with --mutual")
        if self.ca_file_name is not None and not (self.file_mounted and self.mutual):
            raise UsageError("--ca-file-name only makes sense with --file-mounted --mutual")
        if self.ca_file_name is not None and ("/" in self.ca_file_name or self.ca_file_name in ("", ".", "..")):
            raise UsageError(f"--ca-file-name must be a plain file name, not {self.ca_file_name!r}")

    @property
    def secret_name(self) -> str:
        return self.name or c.FILE_MOUNTED_CERTS_SECRET

    @property
    def mode(self) -> str:
        return "mutual" if self.mutual else "simple"

    @property
    def delivery(self) -> str:
        return "file-mounted" if self.file_mounted else "sds"


@dataclass(frozen=True)
class CredentialMaterial:
    """PEM bytes, exactly as they go into the Secret (no re-encoding)."""

    cert_chain_pem: bytes  # leaf + intermediates
    key_pem: bytes
    ca_pem: bytes | None = None  # the CA bundle client certificates are checked against (MUTUAL)
    crl_pem: bytes | None = None  # MUTUAL: the CRLs of every CA of that trust (Envoy needs all or none)
    ocsp_staple: bytes | None = None  # DER OCSP response for the leaf (spec.ocsp_staple)


@dataclass(frozen=True)
class Provenance:
    """Where the credential came from; written as ``kimpki.io/*`` annotations."""

    store_name: str
    hosts: tuple[str, ...]
    ca: str
    serial: str
    not_after: str  # RFC 3339
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SdsCredential:
    """The Secrets that make up one credential: the certificate Secret, and maybe a CA Secret."""

    spec: CredentialSpec
    secrets: tuple[dict, ...]

    @property
    def credential(self) -> dict:
        return self.secrets[0]

    @property
    def names(self) -> list[str]:
        return [s["metadata"]["name"] for s in self.secrets]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _secret(name: str, namespace: str, type_: str, data: dict[str, bytes], annotations: dict[str, str]) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {c.MANAGED_BY_LABEL: c.MANAGED_BY_VALUE},
            "annotations": dict(sorted(annotations.items())),
        },
        "type": type_,
        "data": {k: b64(v) for k, v in sorted(data.items())},
    }


def annotations_for(spec: CredentialSpec, prov: Provenance, role: str = ROLE_CREDENTIAL) -> dict[str, str]:
    ann = {
        ANN_STORE_NAME: prov.store_name,
        ANN_HOSTS: ",".join(prov.hosts),
        ANN_CA: prov.ca,
        ANN_SERIAL: prov.serial,
        ANN_NOT_AFTER: prov.not_after,
        ANN_FORMAT: spec.format,
        ANN_MODE: spec.mode,
        ANN_DELIVERY: spec.delivery,
        ANN_ROLE: role,
    }
    if role == ROLE_CA:
        ann[ANN_CREDENTIAL] = spec.secret_name
    elif spec.pair:
        ann[ANN_PAIR] = spec.pair
    if spec.file_mounted and spec.mutual:
        # The Gateway's caCertificates names this file: rotation must keep writing the same one.
        ann[ANN_CA_FILE_NAME] = spec.ca_file_name or default_ca_file_name(prov.ca)
    if spec.ocsp_staple and role == ROLE_CREDENTIAL:
        ann[ANN_OCSP_STAPLE] = "true"
    ann.update(prov.extra)
    return ann


def default_ca_file_name(ca_name: str) -> str:
    """``example.com`` → ``example.com.crt``: the manual steps' file name for the CA of a file-mounted gateway."""
    return ca_name if ca_name.endswith(".crt") else ca_name + ".crt"


def crl_file_name(ca_file_name: str) -> str:
    """The CRL file beside a file-mounted CA file: ``example.com.crt`` → ``example.com.crl``
    (another name gets ``.crl`` appended). Derived, never recorded: the Gateway's ``caCrl`` and
    every republication find it from the CA file name alone."""
    stem = ca_file_name[:-len(".crt")] if ca_file_name.endswith(".crt") else ca_file_name
    return stem + ".crl"


def build_credential(spec: CredentialSpec, material: CredentialMaterial, prov: Provenance) -> SdsCredential:
    """The Secret dict(s) for ``spec``: the credential first, then the CA Secret if there is one."""
    if spec.mutual and not material.ca_pem:
        raise UsageError("a MUTUAL credential needs a CA bundle")
    ann = annotations_for(spec, prov)
    ca_ann = annotations_for(spec, prov, ROLE_CA)
    name, ns = spec.secret_name, spec.namespace

    if spec.file_mounted:
        secrets = [_secret(name, ns, c.SECRET_TYPE_TLS,
                           {c.TLS_CERT: material.cert_chain_pem, c.TLS_KEY: material.key_pem}, ann)]
        if spec.mutual:
            file_name = spec.ca_file_name or default_ca_file_name(prov.ca)
            files = {file_name: material.ca_pem}
            if material.crl_pem:
                files[crl_file_name(file_name)] = material.crl_pem
            secrets.append(_secret(c.FILE_MOUNTED_CA_SECRET, ns, c.SECRET_TYPE_OPAQUE, files, ca_ann))
        return SdsCredential(spec, tuple(secrets))

    if spec.format == "generic":
        type_, cert_key, key_key, ca_key = c.SECRET_TYPE_OPAQUE, c.GENERIC_CERT, c.GENERIC_KEY, c.GENERIC_CA
    else:
        type_, cert_key, key_key, ca_key = c.SECRET_TYPE_TLS, c.TLS_CERT, c.TLS_KEY, c.TLS_CA
    data = {cert_key: material.cert_chain_pem, key_key: material.key_pem}
    if spec.ocsp_staple and material.ocsp_staple:
        data[c.OCSP_STAPLE] = material.ocsp_staple
    # Istio reads the CRL beside the CA key it took: crl with cacert, ca.crl with ca.crt.
    trust = {ca_key: material.ca_pem}
    if spec.mutual and material.crl_pem:
        trust[c.GENERIC_CRL if ca_key == c.GENERIC_CA else c.TLS_CRL] = material.crl_pem
    secrets = []
    if spec.mutual and not spec.ca_secret:
        data.update(trust)
    secrets.append(_secret(name, ns, type_, data, ann))
    if spec.mutual and spec.ca_secret:
        secrets.append(_secret(c.cacert_secret_name(name), ns, c.SECRET_TYPE_OPAQUE, trust, ca_ann))
    return SdsCredential(spec, tuple(secrets))


def build_ca_only(name: str, namespace: str, ca_pem: bytes, crl_pem: bytes | None, ca_name: str, *,
                  format: str = "generic", config_map: bool = False) -> dict:
    """A Secret (or ConfigMap) holding only a CA bundle, for ``tls.caCertCredentialName``: ``cacert``
    (generic) or ``ca.crt`` (tls), CRLs beside it, as Istio's ExtractRoot reads them. No key, so
    trust can be handed out without key material. The ConfigMap's data are plain strings."""
    if format not in FORMATS:
        raise UsageError(f"unknown credential format {format!r}: choose generic or tls")
    ca_key, crl_key = (c.GENERIC_CA, c.GENERIC_CRL) if format == "generic" else (c.TLS_CA, c.TLS_CRL)
    data = {ca_key: ca_pem}
    if crl_pem:
        data[crl_key] = crl_pem
    ann = {ANN_CA: ca_name, ANN_ROLE: ROLE_CA_ONLY, ANN_FORMAT: format, ANN_MODE: "mutual",
           ANN_DELIVERY: "configmap" if config_map else "sds"}
    if not config_map:
        return _secret(name, namespace, c.SECRET_TYPE_OPAQUE, data, ann)
    obj = _secret(name, namespace, "", {}, ann)
    del obj["type"], obj["data"]
    obj["kind"] = "ConfigMap"
    obj["data"] = {k: v.decode("ascii") for k, v in sorted(data.items())}
    return obj


def is_managed(obj: dict | None) -> bool:
    """True when a Secret (or any object) carries kimpki's managed-by label."""
    labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
    return labels.get(c.MANAGED_BY_LABEL) == c.MANAGED_BY_VALUE


def read_provenance(obj: dict) -> dict[str, str | list[str]]:
    """The ``kimpki.io/*`` annotations of a Secret as a plain dict (``hosts`` split into a list)."""
    ann = (obj.get("metadata") or {}).get("annotations") or {}
    out: dict[str, str | list[str]] = {}
    for k, v in ann.items():
        if k.startswith(c.ANNOTATION_PREFIX):
            key = k[len(c.ANNOTATION_PREFIX):].replace("-", "_")
            out[key] = [h for h in v.split(",") if h] if k == ANN_HOSTS else v
    return out


def as_list(objs: list[dict] | tuple[dict, ...]) -> dict:
    """Several objects as one ``kind: List`` document (what ``kubectl apply -f -`` takes as JSON)."""
    return {"apiVersion": "v1", "kind": "List", "items": list(objs)}


def served_certificate_pem(secret: dict) -> bytes | None:
    """The certificate chain PEM a gateway would serve from this Secret, by Istio's rule: the
    generic ``cert`` (with ``key``) wins over ``tls.crt``. None when neither is there."""
    data = secret.get("data") or {}
    for cert_key, key_key in ((c.GENERIC_CERT, c.GENERIC_KEY), (c.TLS_CERT, c.TLS_KEY)):
        if data.get(cert_key) and data.get(key_key):
            try:
                return base64.b64decode(data[cert_key], validate=True)
            except ValueError:
                return None
    return None
