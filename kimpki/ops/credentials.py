"""From a certificate in the store to the credential Secret(s) an Istio gateway reads.

istiod pushes whatever a Secret holds, even an expired certificate or a key that does not fit,
and the gateway then fails every handshake for that host. So before anything is written, the
material is checked here, and refused with a one-line :class:`OperationError` when:

* it is a client certificate (extendedKeyUsage clientAuth only): not a server credential;
* the store has no private key for it (a signed CSR: the requester kept the key);
* the certificate is expired or not yet valid;
* the private key does not match the certificate;
* the chain (leaf + intermediates) does not lead to the CA being published (MUTUAL) or, for
  SIMPLE, to the root it was issued under;
* (MUTUAL) a CA of the client trust uses revocation, and some CA of it has no CRL or an expired
  one: every CRL of that trust travels with the CA bundle, or none (Envoy's rule).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from kimpki.errors import KimpkiError, NotFoundError, OperationError, UsageError
from kimpki.istio import contract as c
from kimpki.istio.credential import (ANN_ROLE, ROLE_CA, ROLE_CA_ONLY, CredentialMaterial, CredentialSpec,
                                     Provenance, SdsCredential, build_ca_only, build_credential, crl_file_name,
                                     default_ca_file_name, is_managed, read_provenance, served_certificate_pem)
from kimpki.ops import stapling
from kimpki.ops.authority import PassphraseSource, root_of, trust_bundle
from kimpki.ops.places import SecretPlace
from kimpki.ops.revoking import client_trust_crls, known_ca_subjects, refuse_dropping_unknown_crls
from kimpki.pki import chain, keys, parse
from kimpki.store import CertRecord, Store


@dataclass(frozen=True)
class PreparedCredential:
    record: CertRecord
    ca_name: str  # the store CA whose certificate is published (or that issued the leaf, for SIMPLE)
    credential: SdsCredential
    known_cas: frozenset[str] = frozenset()  # subjects of the home's CAs (which CRLs it may drop)

    @property
    def secrets(self) -> tuple[dict, ...]:
        return self.credential.secrets


def find_certificate(store: Store, name: str) -> CertRecord:
    """The current certificate stored as ``name``, else the current server certificate for host ``name``."""
    rec = store.find_cert(name)
    if rec is None:
        rec = store.current_for_host(name)
    if rec is None:
        raise NotFoundError(f"no certificate named {name!r} in the store (see 'kimpki list')")
    return rec


def _read(path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise OperationError(f"cannot read the {what} {path}: {e.strerror}") from None


def _parse_ca_certificates(ca_pem: bytes, ca_label: str) -> list[x509.Certificate]:
    try:
        return parse.load_certificates(ca_pem, ca_label)
    except KimpkiError as e:
        raise OperationError(f"cannot read the CA certificate {ca_label}: {e}") from None


def ca_certificates(store: Store, ca_pem: bytes, ca_label: str) -> list[x509.Certificate]:
    """``ca_pem`` parsed, once per store batch (a renewal checks 100 credentials of one CA in one)."""
    return store.memo(("ca_certificates", ca_pem, ca_label), lambda: _parse_ca_certificates(ca_pem, ca_label))


def check_server_material(rec: CertRecord, chain_pem: bytes, key_pem: bytes, ca_pem: bytes, ca_label: str,
                          now: datetime, roots: list[x509.Certificate] | None = None) -> None:
    """Raise a one-line OperationError unless the material is fit to serve (see the module doc).
    ``roots``: ``ca_pem`` already parsed (:func:`ca_certificates`)."""
    name = rec.name
    try:
        certs = parse.load_certificates(chain_pem, str(rec.cert_path))
    except KimpkiError as e:  # a UsageError from the parser: the store file is damaged
        raise OperationError(f"{name}: the stored certificate chain is unreadable ({e})") from None
    leaf = certs[0]
    ekus = parse.extended_key_usages(leaf)
    if rec.kind == "client" or (ekus and "server_auth" not in ekus):
        raise OperationError(f"{name} is a client certificate (extendedKeyUsage {', '.join(ekus) or 'clientAuth'}), "
                             f"not a server credential: issue one with 'kimpki issue {rec.hosts[0] if rec.hosts else 'HOST'}'")
    if now < leaf.not_valid_before_utc:
        raise OperationError(f"{name} (serial {parse.serial_hex(leaf)}) is not valid yet: it starts "
                             f"{parse.rfc3339(leaf.not_valid_before_utc)}; refusing to publish it")
    if now > leaf.not_valid_after_utc:
        raise OperationError(f"{name} (serial {parse.serial_hex(leaf)}) expired on "
                             f"{parse.rfc3339(leaf.not_valid_after_utc)}; renew it with 'kimpki issue' first")
    key = keys.load_key(key_pem, what=f"private key of {name}")
    if not keys.key_matches(key, leaf.public_key()):
        raise OperationError(f"{name}: the private key in {rec.key_path} does not match the certificate "
                             f"(serial {parse.serial_hex(leaf)}); refusing to publish a credential that cannot "
                             f"complete a handshake")
    if roots is None:
        roots = _parse_ca_certificates(ca_pem, ca_label)
    try:
        chain.build_path(leaf, certs[1:], roots, now)
    except chain.ChainError as e:
        raise OperationError(f"{name} does not chain to CA {ca_label}: {e}") from None


def prepare(store: Store, cert_name: str, spec: CredentialSpec, *, now: datetime,
            ca_name: str | None = None, passphrase: PassphraseSource | None = None,
            current: dict | None = None) -> PreparedCredential:
    """Check the stored certificate ``cert_name`` and build the Secret dict(s) for ``spec``.

    ``ca_name`` chooses the store CA whose certificate is published for MUTUAL (the one client
    certificates are checked against); by default the root the certificate was issued under.
    With ``spec.ocsp_staple`` the issuing CA signs a staple (its key: ``passphrase``), unless
    ``current`` (the credential Secret as it is now) holds one that still serves.
    """
    return prepare_record(store, find_certificate(store, cert_name), spec, now=now, ca_name=ca_name,
                          passphrase=passphrase, current=current)


def prepare_record(store: Store, rec: CertRecord, spec: CredentialSpec, *, now: datetime,
                   ca_name: str | None = None, passphrase: PassphraseSource | None = None,
                   current: dict | None = None) -> PreparedCredential:
    """:func:`prepare` for one given version (current or pending) of a certificate."""
    if not rec.has_key:
        raise OperationError(f"{rec.name} has no private key in the store (it was signed from a CSR; "
                             f"the requester kept the key), so kimpki cannot build its credential")
    chain_pem = _read(rec.cert_path, "certificate chain")
    key_pem = _read(rec.key_path, "private key")
    if ca_name is not None:
        ca = store.get_ca(ca_name)
        ca_pem = _read(ca.cert_path, "CA certificate")
        published_ca, ca_label = ca.name, f"{ca.name!r}"
    else:
        # The root the certificate chains to (rec.ca_path holds it), recorded by its own name: an
        # intermediate's certificate alone is no trust anchor for Envoy, so a later rotation that
        # republishes "the CA in the annotation" must find the root there too.
        ca_pem = _read(rec.ca_path, "CA certificate")
        issuer = store.find_ca(rec.ca)
        published_ca = root_of(store, issuer).name if issuer is not None else rec.ca
        ca_label = f"{published_ca!r}"
    check_server_material(rec, chain_pem, key_pem, ca_pem, ca_label, now,
                          roots=ca_certificates(store, ca_pem, ca_label))
    bundle = trust_bundle(store, published_ca, ca_pem) if spec.mutual else None
    crls = client_trust_crls(store, bundle, now) if spec.mutual else None
    staple = (stapling.staple_for(store, rec, now=now, passphrase=passphrase, current=stapling.secret_staple(current))
              if spec.ocsp_staple else None)
    material = CredentialMaterial(chain_pem, key_pem, bundle, crls, staple)
    prov = Provenance(store_name=rec.name, hosts=tuple(rec.hosts), ca=published_ca, serial=rec.serial,
                      not_after=parse.rfc3339(rec.not_after))
    return PreparedCredential(rec, published_ca, build_credential(spec, material, prov),
                              known_ca_subjects(store) if crls else frozenset())


def prepare_pair(store: Store, cert_name: str, spec: CredentialSpec, *, now: datetime,
                 ca_name: str | None = None, passphrase: PassphraseSource | None = None,
                 read: dict[str, dict] | None = None) -> list[PreparedCredential]:
    """An RSA+ECDSA pair (:mod:`kimpki.ops.pairs`): certificate ``cert_name`` as Secret ``spec.name``
    (with the CA, for MUTUAL: Istio reads it from the first credentialName), and its partner
    certificate as Secret ``spec.name-rsa`` (or ``-ecdsa``), each annotated with the other's name.
    ``read``: the Secrets as they are now, by name (each keeps an OCSP staple that still serves)."""
    from dataclasses import replace

    from kimpki.ops import pairs

    if spec.file_mounted:
        raise UsageError("--dual is for SDS credentials (credentialNames); a file-mounted server reads one "
                         "certificate file")
    first = find_certificate(store, cert_name)
    second = pairs.require_partner(store, first)
    partner = pairs.partner_name(spec.secret_name, pairs.algorithm_of(second.key_type))
    first_spec = replace(spec, pair=partner)
    second_spec = replace(spec, name=partner, mutual=False, ca_secret=False, pair=spec.secret_name)
    read = read or {}
    return [prepare_record(store, first, first_spec, now=now, ca_name=ca_name, passphrase=passphrase,
                           current=read.get(first_spec.secret_name)),
            prepare_record(store, second, second_spec, now=now, passphrase=passphrase,
                           current=read.get(second_spec.secret_name))]


def prepare_ca_only(store: Store, name: str, *, namespace: str, ca_name: str | None, now: datetime,
                    format: str = "generic", config_map: bool = False) -> tuple[str, dict]:
    """The CA-only Secret (or ConfigMap) ``name`` for ``tls.caCertCredentialName``: the bundle of
    store CA ``ca_name`` (the default CA when None) as a MUTUAL credential would publish it, with
    the CRLs of that trust. Istio reads a Secret as CA-only only when its name ends in ``-cacert``
    (pilot/pkg/xds/sds.go); other names are fetched as certificate and key, so they are refused."""
    if not config_map and not name.endswith(c.CACERT_SECRET_SUFFIX):
        raise UsageError(f"a CA-only Secret for caCertCredentialName must be named ...{c.CACERT_SECRET_SUFFIX} "
                         f"(Istio reads any other name as a certificate and key): e.g. {name}{c.CACERT_SECRET_SUFFIX}, "
                         f"or write a ConfigMap with --config-map")
    ca = store.get_ca(ca_name)
    ca_pem = _read(ca.cert_path, "CA certificate")
    bundle = trust_bundle(store, ca.name, ca_pem)
    crls = client_trust_crls(store, bundle, now)
    return ca.name, build_ca_only(name, namespace, bundle, crls, ca.name, format=format, config_map=config_map)


def publish(place: SecretPlace, prepared: PreparedCredential, *, force: bool = False,
            dry_run: bool = False, read: dict[str, dict] | None = None) -> tuple[list[dict], list[str]]:
    """Write the credential's Secrets to ``place``, in place, CA Secret first (a MUTUAL credential
    never appears without its CA). Returns ``[{name, action, object}]`` in build order (credential
    first) and warning lines. A failure names what was already written. ``read``: Secrets the
    caller has just read from ``place``, by name (their resourceVersion guards the update)."""
    spec = prepared.credential.spec
    secrets = list(prepared.secrets)
    ordered = sorted(secrets, key=lambda s: 0 if s["metadata"]["annotations"].get(ANN_ROLE) == ROLE_CA else 1)
    done: list[dict] = []
    warnings: list[str] = []
    for s in ordered:
        meta = s["metadata"]
        if meta["name"] == c.FILE_MOUNTED_CA_SECRET:
            held = place.get(meta["namespace"], meta["name"])
            _refuse_dropping_crls(held, s, prepared.ca_name, prepared.known_cas, _crl_keys_of(spec, prepared))
            s = _keep_other_ca_files(held, s)
        else:
            _refuse_dropping_crls((read or {}).get(meta["name"]), s, prepared.ca_name, prepared.known_cas)
        try:
            res = place.write(s, force=force, dry_run=dry_run, current=(read or {}).get(meta["name"]))
        except KimpkiError as e:
            if done:
                written = ", ".join(f"secret/{d['name']} ({d['action']})" for d in done)
                raise type(e)(f"{e} (already written: {written})") from None
            raise
        done.append({"name": meta["name"], "action": res.action, "object": res.object})
        if res.tightened:
            warnings.append(f"{res.tightened} was readable by other users; made it 0600 (it holds the private "
                            f"key of secret/{meta['name']})")
    if spec.mutual and not spec.ca_secret and not spec.file_mounted:
        stale = c.cacert_secret_name(spec.secret_name)
        if place.get(spec.namespace, stale) is not None:
            warnings.append(f"Secret {stale} exists, and Istio reads a MUTUAL server's CA from it rather than "
                            f"from {spec.secret_name}; update it with --ca-secret, or delete it")
    by_name = {d["name"]: d for d in done}
    return [by_name[s["metadata"]["name"]] for s in secrets], warnings


def _crl_keys_of(spec: CredentialSpec, prepared: PreparedCredential) -> tuple[str, ...]:
    """The key of istio-ingressgateway-ca-certs that holds this credential's CRLs (beside its CA file)."""
    return (crl_file_name(spec.ca_file_name or default_ca_file_name(prepared.ca_name)),)


def _refuse_dropping_crls(current: dict | None, new: dict, ca: str, known: frozenset[str],
                          keys: tuple[str, ...] = (c.GENERIC_CRL, c.TLS_CRL)) -> None:
    """A Secret that carries CRLs must not be rewritten without them: the gateway would admit the
    revoked clients again. It happens when the home doing the write has no revocation state for
    the CA (another machine's home, or the CronJob's memory home). ``keys``: where the CRLs sit
    (istio-ingressgateway-ca-certs: the file beside this credential's CA file; other CA files
    there belong to other credentials). Nor without the CRL of a CA not among ``known`` (the
    home's CA subjects): :func:`kimpki.ops.revoking.refuse_dropping_unknown_crls`."""
    had = current is not None and any((current.get("data") or {}).get(k) for k in keys)
    if had and not any((new.get("data") or {}).get(k) for k in keys):
        meta = new["metadata"]
        raise OperationError(f"Secret {meta.get('namespace')}/{meta['name']} carries CRLs, but this kimpki home has "
                             f"no revocation state for CA {ca!r}: writing it would admit revoked client "
                             f"certificates again; run this from the home that revoked them")
    for key in keys if had else ():
        old_value, new_value = (current.get("data") or {}).get(key), (new.get("data") or {}).get(key)
        if old_value and new_value:
            meta = new["metadata"]
            refuse_dropping_unknown_crls(base64.b64decode(old_value), base64.b64decode(new_value), known,
                                         f"Secret {meta.get('namespace')}/{meta['name']}")


def _keep_other_ca_files(current: dict | None, secret: dict) -> dict:
    """istio-ingressgateway-ca-certs may hold several CA files (one per MUTUAL host): keep the
    others (``current``: the Secret as the place holds it), replace only ours."""
    if not current or not current.get("data"):
        return secret
    merged = dict(secret)
    merged["data"] = {**current["data"], **secret["data"]}
    return merged


def deployment_record(secret: dict, *, context: str | None, kubeconfig: str | None,
                      manifests: str | None = None) -> dict:
    """What the store remembers about where a Secret went (stable keys: re-runs replace, not add)."""
    meta = secret["metadata"]
    where = {"kind": "Secret", "namespace": meta.get("namespace") or c.DEFAULT_NAMESPACE, "name": meta["name"]}
    if manifests:
        where["manifests"] = manifests
    if context:
        where["context"] = context
    if kubeconfig:
        where["kubeconfig"] = kubeconfig
    return where


@dataclass(frozen=True)
class ManagedCredential:
    """What a managed credential Secret says about itself: its kimpki.io/* annotations (how to
    rebuild it) and the certificate it actually serves (what is due, what rotation replaces)."""

    secret: dict
    store_name: str
    hosts: tuple[str, ...]
    ca: str
    spec: CredentialSpec
    served: x509.Certificate | None

    @property
    def name(self) -> str:
        return self.spec.secret_name

    @property
    def namespace(self) -> str:
        return self.spec.namespace

    @property
    def served_serial(self) -> str | None:
        return parse.serial_hex(self.served) if self.served is not None else None


def managed_credential(secret: dict, *, default_namespace: str = c.DEFAULT_NAMESPACE,
                       ca_secret: bool = False) -> ManagedCredential:
    """Read a credential Secret kimpki wrote. One-line OperationError when it cannot be rebuilt
    from its annotations (not kimpki's, a CA-only Secret, annotations edited away)."""
    meta = secret.get("metadata") or {}
    name = meta.get("name") or "?"
    namespace = meta.get("namespace") or default_namespace
    prov = read_provenance(secret)
    if not is_managed(secret) or not prov:
        raise OperationError(f"Secret {namespace}/{name} was not written by kimpki (no {c.MANAGED_BY_LABEL}="
                             f"{c.MANAGED_BY_VALUE} label or kimpki.io/* annotations): nothing to rebuild it from")
    if prov.get("role") == ROLE_CA_ONLY:
        raise OperationError(f"Secret {namespace}/{name} holds only the CA bundle of CA {prov.get('ca')} "
                             f"(caCertCredentialName): 'kimpki ca rotate {prov.get('ca')}' rewrites it")
    if prov.get("role") == ROLE_CA:
        owner = prov.get("credential") or "its credential"
        raise OperationError(f"Secret {namespace}/{name} holds only the CA bundle of {owner}; rotate {owner}")
    missing = [k for k in ("store_name", "hosts", "ca") if not prov.get(k)]
    if missing:
        raise OperationError(f"Secret {namespace}/{name} lacks the annotation(s) "
                             f"{', '.join(c.ANNOTATION_PREFIX + m.replace('_', '-') for m in missing)}; "
                             f"re-create it with 'kimpki secret create'")
    delivery = str(prov.get("delivery") or "sds")
    mutual = prov.get("mode") == "mutual"
    file_mounted = delivery == "file-mounted"
    try:
        ca_file_name = prov.get("ca_file_name") if file_mounted and mutual else None
        spec = CredentialSpec(name=name, namespace=namespace, format=str(prov.get("format") or "generic"),
                              mutual=mutual, ca_secret=ca_secret and mutual and not file_mounted,
                              file_mounted=file_mounted, ca_file_name=str(ca_file_name) if ca_file_name else None,
                              ocsp_staple=prov.get("ocsp_staple") == "true",
                              pair=str(prov["pair"]) if prov.get("pair") and not file_mounted else None)
    except KimpkiError as e:
        raise OperationError(f"Secret {namespace}/{name}: its kimpki.io annotations do not make sense: {e}") from None
    served = None
    pem = served_certificate_pem(secret)
    if pem:
        try:
            # A sweep (status, renew) of thousands reads only the serial and validity of most:
            # the other parts are not parsed here (see parse.load_certificates).
            served = parse.load_certificates(pem, f"Secret {namespace}/{name}", check_parts=False)[0]
        except KimpkiError:
            served = None
    return ManagedCredential(secret, str(prov["store_name"]), tuple(prov["hosts"]), str(prov["ca"]), spec, served)
