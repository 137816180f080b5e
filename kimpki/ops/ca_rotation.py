"""CA rotation with an overlap: ``kimpki ca rotate`` and ``kimpki ca retire``.

A hard CA cutover (the manual way) breaks clients at once: a gateway that checks client
certificates against the new CA refuses every client still holding one from the old CA, and
clients that trust only the old root refuse a server certificate from the new one. Rotation
with an overlap keeps both CAs good until nothing needs the old one:

1. **successor**: a new CA with the same O and a CN that tells generations apart
   (``example.com G2``); a root stays a root, an intermediate gets a new intermediate under the
   same parent. Name constraints carry over. A new *root* is also certified by the old root (a
   cross certificate, RFC 4210's newWithOld), sent after every leaf the new root signs while the
   old root is not retired: clients that trust only the old root still find a path (leaf →
   new-by-old → old root); clients that trust the new root stop at it.
2. **widen**: every MUTUAL credential publishing the old CA gets the bundle old + new
   (:func:`kimpki.ops.authority.trust_bundle` decides), so client certificates from either CA
   are accepted, before any client receives a certificate from the new CA.
3. **servers**: every credential serving a certificate from the old CA is rotated to the new one
   (:func:`kimpki.ops.rotation.rotate_credential`: pending version, in-place write, then current).
4. **clients**: every current client certificate from the old CA is re-issued from the new one.
   The old version stays on disk and valid, so each holder can switch when it is handed the new
   files; their ``ca.crt`` holds both roots during the overlap.

:func:`retire` ends the overlap once nothing depends on the old CA (it refuses, naming what
still does): the old CA is marked retired, may no longer issue, and the MUTUAL bundles are
rewritten to the new CA only.

Each step skips what is already done (a recorded successor is reused, credentials already served
from the new CA and clients already re-issued are left alone, unchanged Secrets are not
written), so running the same command again finishes an interrupted rotation.
"""

from __future__ import annotations

import base64
import re
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import datetime

from cryptography import x509
from cryptography.x509.oid import NameOID

from kimpki.errors import KimpkiError, OperationError, UsageError
from kimpki.istio import contract as c
from kimpki.istio.credential import (ANN_CA, ANN_CREDENTIAL, ANN_FORMAT, ANN_ROLE, ROLE_CA, ROLE_CA_ONLY,
                                     default_ca_file_name)
from kimpki.ops import authority, constraints
from kimpki.ops.credentials import (ManagedCredential, deployment_record, managed_credential, prepare_record,
                                    publish)
from kimpki.ops.issuing import issue
from kimpki.ops.places import ClusterPlace, ManifestsPlace, SecretPlace
from kimpki.ops.rotation import rotate_credential
from kimpki.pki import keys, parse, profiles
from kimpki.pki.chain import issued_by
from kimpki.pki.names import safe_store_name
from kimpki.store import CaRecord, CertRecord, Store

_CN_GENERATION = re.compile(r"^(?P<base>.+) G(?P<n>\d+)$")


# ---------------------------------------------------------------------------------------------
# Where the credentials are
# ---------------------------------------------------------------------------------------------

@dataclass
class Target:
    """One place to look for credentials, and the namespace to look in (None: all)."""

    place: SecretPlace
    namespace: str | None


@dataclass
class Found:
    target: Target
    cred: ManagedCredential

    @property
    def place(self) -> SecretPlace:
        return self.target.place


def open_targets(stack: ExitStack, *, manifests: tuple[str, ...] | list[str] = (), cluster: bool = False,
                 kubeconfig: str | None = None, context: str | None = None,
                 namespace: str | None = None) -> list[Target]:
    """The folders of manifests, plus the cluster when asked or when no folder was given. In a
    cluster the namespace defaults to istio-system; in folders every namespace is searched."""
    targets = [Target(stack.enter_context(ManifestsPlace(d)), namespace) for d in manifests]
    if cluster or not manifests:
        place = stack.enter_context(ClusterPlace.connect(kubeconfig=kubeconfig, context=context))
        targets.append(Target(place, namespace or c.DEFAULT_NAMESPACE))
    return targets


def managed_credentials(target: Target, warnings: list[str]) -> list[Found]:
    """Every credential Secret kimpki manages in ``target`` (CA-only Secrets belong to theirs)."""
    secrets = list(target.place.managed(target.namespace))
    ca_secrets = set()
    for s in secrets:
        meta = s.get("metadata") or {}
        ann = meta.get("annotations") or {}
        if ann.get(ANN_ROLE) == ROLE_CA:
            ca_secrets.add((meta.get("namespace") or c.DEFAULT_NAMESPACE, meta.get("name"), ann.get(ANN_CREDENTIAL)))
    found = []
    for s in secrets:
        meta = s.get("metadata") or {}
        if (meta.get("annotations") or {}).get(ANN_ROLE) in (ROLE_CA, ROLE_CA_ONLY):
            continue
        name, ns = meta.get("name"), meta.get("namespace") or target.namespace or c.DEFAULT_NAMESPACE
        # Istio reads a MUTUAL server's CA from NAME-cacert first: keep using it if kimpki wrote one.
        ca_secret = (ns, c.cacert_secret_name(name or ""), name) in ca_secrets
        try:
            found.append(Found(target, managed_credential(s, default_namespace=ns, ca_secret=ca_secret)))
        except KimpkiError as e:
            warnings.append(f"skipped Secret {ns}/{name} ({target.place.description}): {e}")
    return found


def rewrite_ca_only(store: Store, targets: list[Target], ca: str, publish_ca: str, *, now: datetime,
                    dry_run: bool) -> list[dict]:
    """The CA-only Secrets and ConfigMaps (``secret create --ca-only [--config-map]``, read through
    ``caCertCredentialName``) that publish CA ``ca``, written again in place (guarded as they were
    read) with the bundle of ``publish_ca`` as every MUTUAL bundle is:
    old + new while a rotation overlaps (``publish_ca`` = the old CA), the new one alone after
    retirement (``publish_ca`` = the successor). Report items, like the credentials'."""
    from kimpki.ops.credentials import prepare_ca_only

    out = []
    for t in targets:
        for s in [*t.place.managed(t.namespace), *t.place.managed_config_maps(t.namespace)]:
            meta = s.get("metadata") or {}
            ann = meta.get("annotations") or {}
            if ann.get(ANN_ROLE) != ROLE_CA_ONLY or ann.get(ANN_CA) != ca:
                continue
            ns = meta.get("namespace") or t.namespace or c.DEFAULT_NAMESPACE
            config_map = s.get("kind") == "ConfigMap"
            item = {"secret": meta.get("name"), "namespace": ns, "place": t.place.description, "ca": publish_ca}
            if config_map:
                item["kind"] = "ConfigMap"
            if dry_run:
                out.append({**item, "action": "would update"})
                continue
            _, obj = prepare_ca_only(store, meta["name"], namespace=ns, ca_name=publish_ca, now=now,
                                     format=ann.get(ANN_FORMAT) or "generic", config_map=config_map)
            if not meta.get("namespace"):
                obj["metadata"].pop("namespace", None)
            res = t.place.write(obj, current=s)
            out.append({**item, "action": res.action})
    return out


def _all_credentials(targets: list[Target], warnings: list[str]) -> list[Found]:
    return [f for t in targets for f in managed_credentials(t, warnings)]


def _keep_ca_file_name(store: Store, place: SecretPlace, cred: ManagedCredential) -> ManagedCredential:
    """A file-mounted MUTUAL gateway reads its CA from one file of istio-ingressgateway-ca-certs,
    named in its Gateway's caCertificates after the CA first published (``example.com.crt``):
    keep writing that file through every generation. (The annotations record the CA, not the
    file, so the file is found by the names of the CA's generations.)"""
    spec = cred.spec
    if not (spec.file_mounted and spec.mutual) or spec.ca_file_name is not None:
        return cred
    held = (place.get(cred.namespace, c.FILE_MOUNTED_CA_SECRET) or {}).get("data") or {}
    for g in authority.generations(store, cred.ca):
        if default_ca_file_name(g.name) in held:
            return replace(cred, spec=replace(spec, ca_file_name=default_ca_file_name(g.name)))
    return cred


def _where(found: Found) -> dict:
    return {"secret": found.cred.name, "namespace": found.cred.namespace, "place": found.place.description}


def republish(store: Store, found: Found, ca_name: str, *, now: datetime,
              signing: authority.PassphraseSource | None = None) -> dict:
    """Write the credential again with the certificate it serves now and the CA bundle of
    ``ca_name`` (as :func:`authority.trust_bundle` makes it). Returns a report item. A staple
    that still serves is kept (``signing``: the issuing CA's key, when it must be re-signed)."""
    cred = found.cred
    rec = store.find_version(cred.store_name, cred.served_serial) if cred.served_serial else None
    if rec is None:
        raise OperationError(f"Secret {cred.namespace}/{cred.name} serves serial {cred.served_serial or '(none)'}, "
                             f"which is not in this store as {cred.store_name}: cannot rebuild its CA bundle")
    cred = _keep_ca_file_name(store, found.place, cred)
    prepared = prepare_record(store, rec, cred.spec, now=now, ca_name=ca_name, passphrase=signing,
                              current=cred.secret)
    written, warnings = publish(found.place, prepared)
    changed = [w for w in written if w["action"] != "unchanged"]
    if changed:
        cluster = getattr(found.place, "cluster", None)
        folder = getattr(found.place, "folder", None)
        with store.locked():
            for s in prepared.secrets:
                store.record_deployment(rec.id, deployment_record(
                    s, context=getattr(cluster, "context", None), kubeconfig=None,
                    manifests=str(folder.resolve()) if folder is not None else None))
    return {**_where(found), "action": "updated" if changed else "unchanged", "ca": ca_name,
            "serial": rec.serial, "secrets": [{"name": w["name"], "action": w["action"]} for w in written],
            "warnings": warnings}


def published_bundle(place: SecretPlace, cred: ManagedCredential) -> list[x509.Certificate]:
    """The CA certificates a MUTUAL credential publishes now, read where Istio reads them."""
    if cred.spec.file_mounted:
        holder = place.get(cred.namespace, c.FILE_MOUNTED_CA_SECRET)
        keys_ = [cred.spec.ca_file_name or default_ca_file_name(cred.ca)]
    elif cred.spec.ca_secret:
        holder = place.get(cred.namespace, c.cacert_secret_name(cred.name))
        keys_ = [c.GENERIC_CA, c.TLS_CA]
    else:
        holder, keys_ = cred.secret, [c.GENERIC_CA, c.TLS_CA]
    data = (holder or {}).get("data") or {}
    for k in keys_:
        if data.get(k):
            try:
                return parse.load_certificates(base64.b64decode(data[k]), f"{cred.name}/{k}")
            except (KimpkiError, ValueError):
                return []
    return []


# ---------------------------------------------------------------------------------------------
# What still depends on a CA
# ---------------------------------------------------------------------------------------------

def dependents(store: Store, old: CaRecord, found: list[Found]) -> list[str]:
    """Everything that would break if ``old`` left the bundles: credentials serving a certificate
    it issued, current certificates in the store it issued, intermediates under it."""
    old_cert = authority.read_ca_cert(old)
    out = []
    named = set()  # (store name, serial) already named through a credential serving it
    for f in found:
        if issued_by(f.cred.served, old_cert):
            out.append(f"{f.cred.name} ({f.cred.namespace}) still serves serial {f.cred.served_serial} from {old.name}")
            named.add((f.cred.store_name, f.cred.served_serial))
    from kimpki.store import revocations

    revoked = revocations.revoked_serials(store)  # a revoked certificate is shut out anyway
    for rec in store.list_certs():
        if rec.ca == old.name and (rec.name, rec.serial) not in named and (rec.ca, rec.serial) not in revoked:
            out.append(f"{rec.kind} certificate {rec.name} is current and was issued by {old.name}")
    for ca in store.list_cas():
        if ca.parent == old.name and ca.retired_at is None:
            out.append(f"intermediate CA {ca.name} was issued by {old.name}")
    return out


# ---------------------------------------------------------------------------------------------
# The successor CA
# ---------------------------------------------------------------------------------------------

def _subject_attr(cert: x509.Certificate, oid) -> str | None:
    attrs = cert.subject.get_attributes_for_oid(oid)
    return str(attrs[0].value) if attrs else None


def successor_names(store: Store, old: CaRecord, old_cert: x509.Certificate) -> tuple[str, str]:
    """(store name, CN) for the next generation: ``example.com`` → ``example.com-g2`` with CN
    ``example.com G2``; ``example.com-g2`` → ``example.com-g3``."""
    line = authority.generations(store, old.name)
    n = len(line) + 1
    cn = _subject_attr(old_cert, NameOID.COMMON_NAME) or old.name
    m = _CN_GENERATION.match(cn)
    if m:
        cn = m.group("base")
    suffix = f" G{n}"
    return f"{line[0].name}-g{n}", cn[:profiles.MAX_CN_LENGTH - len(suffix)] + suffix


def _lifetime_days(not_before: datetime, not_after: datetime) -> int:
    return max(1, round((not_after - not_before).total_seconds() / 86400))


def create_successor(store: Store, old: CaRecord, *, new_name: str | None, days: float | None,
                     key_type: keys.KeyType | None, passphrase: bytes | None,
                     signing: authority.PassphraseSource, now: datetime) -> CaRecord:
    """Create the CA that replaces ``old`` (see the module doc), all in one store transaction."""
    old_cert = authority.read_ca_cert(old)
    default_name, cn = successor_names(store, old, old_cert)
    name = safe_store_name(new_name or default_name)
    if old.encrypted and not passphrase:
        raise UsageError(f"the key of CA {old.name!r} is encrypted: give --passphrase-file (or "
                         f"KIMPKI_CA_PASSPHRASE) so that its successor's key is encrypted too")
    kt = key_type or (keys.KeyType(old.key_type) if old.key_type in keys.KEY_TYPES else keys.DEFAULT_KEY_TYPE)
    key = keys.generate_key(kt)  # outside the lock: RSA-4096 can take a second
    with store.locked():
        res = authority.create_ca(store, name, key, key_type=kt, org=_subject_attr(old_cert, NameOID.ORGANIZATION_NAME),
                                  common_name=cn, days=days or _lifetime_days(old.not_before, old.not_after),
                                  passphrase=passphrase, parent=old.parent, parent_passphrase=signing, now=now,
                                  # a key kept in the clear by choice: its successor's too
                                  unencrypted_key=not old.encrypted and not passphrase)
        if old.parent is None:
            issuer = authority.load_issuer(store, old, signing)
            serial = authority.fresh_serial(store, old.name)
            cross = profiles.make_cross_certificate(res.cert, issuer, now - profiles.BACKDATE,
                                                    res.cert.not_valid_after_utc, serial)
            store.record_serial(old.name, parse.serial_hex(cross))
            store.write_cross_certificate(name, parse.certs_to_pem([cross]))
        rules = constraints.load(store, old.name)
        if rules is not None:
            constraints.save(store, name, rules)
        store.set_successor(old.name, name)
        if store.get_setting("default_ca") == old.name:
            store.set_setting("default_ca", name)
    return store.get_ca(name)


# ---------------------------------------------------------------------------------------------
# ca rotate
# ---------------------------------------------------------------------------------------------

@dataclass
class RotationReport:
    ca: str
    successor: str
    successor_action: str  # created | reused | would create
    dry_run: bool
    places: list[str]
    default: str | None = None
    cross_certificate: str | None = None
    widened: list[dict] = field(default_factory=list)
    servers: list[dict] = field(default_factory=list)
    clients: list[dict] = field(default_factory=list)
    remaining: list[str] | None = None  # what still depends on the old CA (None for a dry run)
    warnings: list[str] = field(default_factory=list)
    failed: dict | None = None  # {"step", "error"} when a step failed (the ones before it are done)
    crls: list[str] = field(default_factory=list)  # CAs whose CRL was signed (the tree uses revocation)
    crl_republished: list[dict] = field(default_factory=list)  # credentials given the tree's new CRL set

    def to_dict(self) -> dict:
        return {
            "ca": self.ca,
            "successor": self.successor,
            "successor_action": self.successor_action,
            "default_ca": self.default,
            "cross_certificate": self.cross_certificate,
            "dry_run": self.dry_run,
            "places": self.places,
            "widened": self.widened,
            "servers": self.servers,
            "clients": self.clients,
            "remaining": self.remaining,
            "ready_to_retire": self.remaining == [] and self.failed is None,
            "warnings": self.warnings,
            "failed": self.failed,
            "crls_signed": self.crls,
            "crls_republished": self.crl_republished,
        }


def _check_rotatable(store: Store, old: CaRecord) -> None:
    if old.retired_at is not None:
        raise OperationError(f"CA {old.name!r} is retired" + (f"; its successor is {old.successor!r}" if old.successor else ""))
    if old.predecessor:
        before = store.find_ca(old.predecessor)
        if before is not None and before.retired_at is None:
            raise OperationError(f"CA {old.name!r} is itself replacing {before.name!r}, which is not retired yet: "
                                 f"finish that rotation first ('kimpki ca retire {before.name}')")


def rotate(store: Store, targets: list[Target], name: str, *, now: datetime, new_name: str | None = None,
           days: float | None = None, key_type: keys.KeyType | None = None, passphrase: bytes | None = None,
           signing: authority.PassphraseSource = authority.no_passphrase, dry_run: bool = False) -> RotationReport:
    """Rotate CA ``name`` to a successor with an overlap (see the module doc). A failing step is
    recorded in ``report.failed`` (the steps before it stay done); the caller reports it."""
    old = store.get_ca(name)
    _check_rotatable(store, old)
    if new_name is not None and old.successor and safe_store_name(new_name) != old.successor:
        raise OperationError(f"CA {old.name!r} is already being replaced by {old.successor!r}; run "
                             f"'kimpki ca rotate {old.name}' without --new-name to finish that rotation")
    report = RotationReport(ca=old.name, successor="", successor_action="", dry_run=dry_run,
                            places=[t.place.description for t in targets])
    old_cert = authority.read_ca_cert(old)
    if old.successor:
        new = store.get_ca(old.successor)
        report.successor, report.successor_action = new.name, "reused"
        if not dry_run and store.get_setting("default_ca") == old.name:
            with store.locked():
                store.set_setting("default_ca", new.name)
    elif dry_run:
        new = None
        report.successor = safe_store_name(new_name or successor_names(store, old, old_cert)[0])
        report.successor_action = "would create"
    else:
        new = create_successor(store, old, new_name=new_name, days=days, key_type=key_type,
                               passphrase=passphrase, signing=signing, now=now)
        report.successor, report.successor_action = new.name, "created"
    if new is not None and not dry_run:
        # The successor joins a tree whose MUTUAL credentials may carry CRLs: it needs one too.
        from kimpki.ops.cluster_revocations import for_places
        from kimpki.ops.revoking import ensure_tree_crls

        mirror = for_places([(t.place, t.namespace) for t in targets])  # a cluster keeps the numbers
        if mirror:
            mirror.sync(store)
        report.crls = [c.ca for c in ensure_tree_crls(store, new, now=now, passphrase=signing,
                                                      mirror=mirror or None)]
    if new is not None:
        report.default = store.get_setting("default_ca")
        if new.cross_path.exists():
            report.cross_certificate = str(new.cross_path)

    found = _all_credentials(targets, report.warnings)
    step = "widen"
    try:
        _widen(store, report, found, old, old_cert, now=now, dry_run=dry_run, signing=signing)
        report.widened += rewrite_ca_only(store, targets, old.name, old.name, now=now, dry_run=dry_run)
        if report.crls:  # credentials trusting a root above a new intermediate: its CRL joins theirs
            from kimpki.ops.revoking import republish_crls

            step = "crls"
            for t in targets:
                report.crl_republished += republish_crls(store, t.place, new.name, now=now, namespace=t.namespace)
            found = _all_credentials(targets, [])  # read again: what a later step writes is guarded by it
        step = "servers"
        _rotate_servers(store, report, found, old, old_cert, new, now=now, signing=signing, dry_run=dry_run)
        step = "clients"
        _reissue_clients(store, report, old, new, now=now, signing=signing, dry_run=dry_run)
        if not dry_run:
            step = "check"
            report.remaining = dependents(store, old, _all_credentials(targets, []))
    except KimpkiError as e:
        report.failed = {"step": step, "error": str(e)}
    return report


def _widen(store: Store, report: RotationReport, found: list[Found], old: CaRecord, old_cert: x509.Certificate,
           *, now: datetime, dry_run: bool, signing: authority.PassphraseSource | None = None) -> None:
    for f in found:
        if not f.cred.spec.mutual or f.cred.ca != old.name:
            continue
        if dry_run:
            report.widened.append({**_where(f), "action": "would update", "ca": old.name})
            continue
        try:
            item = republish(store, f, old.name, now=now, signing=signing)
        except KimpkiError as e:
            if not issued_by(f.cred.served, old_cert):
                raise
            # Its certificate cannot be published again as it is (expired, say), but the next
            # step replaces it, and the replacement carries the wide bundle.
            item = {**_where(f), "action": "deferred", "ca": old.name,
                    "reason": f"{e}; the next step re-issues it with the old + new bundle"}
        report.widened.append(item)
        report.warnings += item.pop("warnings", [])


def _rotate_servers(store: Store, report: RotationReport, found: list[Found], old: CaRecord,
                    old_cert: x509.Certificate, new: CaRecord | None, *, now: datetime,
                    signing: authority.PassphraseSource, dry_run: bool) -> None:
    new_cert = authority.read_ca_cert(new) if new is not None else None
    for f in found:
        cred = f.cred
        if new_cert is not None and issued_by(cred.served, new_cert):
            report.servers.append({**_where(f), "action": "already rotated", "serial": cred.served_serial})
            continue
        if not issued_by(cred.served, old_cert):
            continue
        if cred.spec.mutual and cred.ca not in (old.name, report.successor):
            # Rotating would also make it publish the new CA instead of the one its clients use.
            report.servers.append({**_where(f), "action": "skipped", "serial": cred.served_serial,
                                   "reason": f"it checks clients against CA {cred.ca}, not {old.name}; "
                                             f"re-issue its certificate with 'kimpki issue' and 'kimpki secret create'"})
            continue
        if dry_run:
            report.servers.append({**_where(f), "action": "would rotate", "old_serial": cred.served_serial})
            continue
        res = rotate_credential(store, f.place, cred.name, cred.namespace, now=now, passphrase=signing,
                                new_ca=new.name, cred=_keep_ca_file_name(store, f.place, cred))
        report.servers.append({**_where(f), "action": res.action, "old_serial": res.old_serial,
                               "new_serial": res.new_serial, "new_not_after": res.new_not_after,
                               "secrets": res.secrets})
        report.warnings += res.warnings


def _reissue_clients(store: Store, report: RotationReport, old: CaRecord, new: CaRecord | None, *,
                     now: datetime, signing: authority.PassphraseSource, dry_run: bool) -> None:
    from kimpki.store import revocations

    revoked = revocations.revoked_serials(store)
    for rec in store.list_certs():
        if rec.kind != "client" or rec.ca != old.name:
            continue
        rev = revoked.get((rec.ca, rec.serial))
        if rev is not None:  # carrying it forward would let the revoked holder in through the new CA
            report.clients.append({"name": rec.name, "action": "skipped", "old_serial": rec.serial,
                                   "reason": f"revoked on {parse.rfc3339(rev.revoked_at)} ({rev.reason}): not "
                                             f"re-issued from {report.successor}"})
            continue
        if not rec.has_key:
            report.clients.append({"name": rec.name, "action": "skipped", "old_serial": rec.serial,
                                   "reason": f"signed from a CSR (its holder has the key): sign a new CSR "
                                             f"with 'kimpki sign CSR --client --ca {report.successor}'"})
            continue
        if dry_run:
            report.clients.append({"name": rec.name, "action": "would reissue", "old_serial": rec.serial})
            continue
        report.clients.append(reissue_client(store, rec, new, now=now, signing=signing))


def reissue_client(store: Store, rec: CertRecord, new: CaRecord, *, now: datetime,
                   signing: authority.PassphraseSource) -> dict:
    """The same client certificate (hosts, O, lifetime, key type), new key, from ``new``. The old
    version keeps its files and stays valid until its holder switches."""
    old_leaf = parse.load_certificates(rec.cert_path.read_bytes(), str(rec.cert_path))[0]
    kt = keys.KeyType(rec.key_type) if rec.key_type in keys.KEY_TYPES else keys.DEFAULT_KEY_TYPE
    res = issue(store, rec.hosts, kind=profiles.LeafKind.CLIENT, ca_name=new.name,
                org=_subject_attr(old_leaf, NameOID.ORGANIZATION_NAME),
                days=_lifetime_days(rec.not_before, rec.not_after), key_type=kt, name=rec.name, now=now,
                passphrase=signing)
    r = res.record
    return {"name": r.name, "action": "reissued", "old_serial": rec.serial, "new_serial": r.serial,
            "new_not_after": parse.rfc3339(r.not_after), "cert": str(r.cert_path), "key": str(r.key_path),
            "ca_bundle": str(r.ca_path), "old_cert": str(rec.cert_path), "old_key": str(rec.key_path)}


# ---------------------------------------------------------------------------------------------
# ca retire
# ---------------------------------------------------------------------------------------------

@dataclass
class RetireReport:
    ca: str
    successor: str
    action: str  # retired | already retired | would retire
    retired_at: datetime | None
    dry_run: bool
    places: list[str]
    default: str | None = None
    rewritten: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    failed: dict | None = None

    def to_dict(self) -> dict:
        return {
            "ca": self.ca,
            "successor": self.successor,
            "action": self.action,
            "retired_at": parse.rfc3339(self.retired_at) if self.retired_at else None,
            "default_ca": self.default,
            "dry_run": self.dry_run,
            "places": self.places,
            "rewritten": self.rewritten,
            "warnings": self.warnings,
            "failed": self.failed,
        }


def retire(store: Store, targets: list[Target], name: str, *, now: datetime, dry_run: bool = False) -> RetireReport:
    """Retire CA ``name`` after a rotation: refuse (one line naming what still depends on it)
    while anything does; otherwise mark it retired and rewrite MUTUAL bundles to the successor."""
    old = store.get_ca(name)
    if old.successor is None:
        raise OperationError(f"CA {old.name!r} has no successor, so nothing would take its place in the "
                             f"bundles: run 'kimpki ca rotate {old.name}' first")
    new = store.get_ca(old.successor)
    warnings: list[str] = []
    found = _all_credentials(targets, warnings)
    deps = dependents(store, old, found)
    if deps:
        raise OperationError(f"cannot retire CA {old.name!r}: {'; '.join(deps)} "
                             f"(move them to {new.name} with 'kimpki ca rotate {old.name}')")
    action = "already retired" if old.retired_at is not None else ("would retire" if dry_run else "retired")
    report = RetireReport(ca=old.name, successor=new.name, action=action, retired_at=old.retired_at,
                          dry_run=dry_run, places=[t.place.description for t in targets], warnings=warnings)
    if not dry_run and old.retired_at is None:
        with store.locked():
            store.retire_ca(old.name, now)
            # A retired CA cannot issue, so it cannot stay the default.
            if store.get_setting("default_ca") == old.name:
                store.set_setting("default_ca", new.name)
        report.retired_at = store.get_ca(old.name).retired_at
    report.default = store.get_setting("default_ca")
    old_cert = authority.read_ca_cert(old)
    for f in found:
        if not f.cred.spec.mutual or f.cred.ca not in (old.name, new.name):
            continue
        if dry_run:
            bundle = published_bundle(f.place, _keep_ca_file_name(store, f.place, f.cred))
            stale = old_cert in bundle or f.cred.ca == old.name
            report.rewritten.append({**_where(f), "action": "would update" if stale else "unchanged", "ca": new.name})
            continue
        try:
            item = republish(store, f, new.name, now=now)
        except KimpkiError as e:
            report.failed = {"step": "rewrite", "error": f"{f.cred.name} ({f.cred.namespace}): {e}"}
            break
        report.rewritten.append(item)
        report.warnings += item.pop("warnings", [])
    if report.failed is None:
        try:
            report.rewritten += rewrite_ca_only(store, targets, old.name, new.name, now=now, dry_run=dry_run)
            # CA-only Secrets made for the successor during the overlap hold old + new too: narrow them.
            report.rewritten += [i for i in rewrite_ca_only(store, targets, new.name, new.name, now=now,
                                                            dry_run=dry_run) if i["action"] != "unchanged"]
        except KimpkiError as e:
            report.failed = {"step": "rewrite", "error": str(e)}
    return report
