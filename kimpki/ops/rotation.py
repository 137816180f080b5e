"""Rotate a credential: a new key and certificate, the Secret updated in place, nothing lost.

The order is what makes a failure harmless:

1. read the Secret; its ``kimpki.io/*`` annotations say how to rebuild it (hosts, CA, key set,
   SIMPLE/MUTUAL, SDS/file-mounted) and its certificate says what is served now;
2. issue the new certificate into the store as a *pending* version (``current`` does not move), or
   reuse the pending version an earlier, failed run left behind;
3. write the Secret(s) through the :class:`~kimpki.ops.places.SecretPlace`, in place (cluster:
   ``resourceVersion``-guarded update; manifests: one document rewritten atomically);
4. only then promote the pending version to ``current`` and record where it went.

A failure in 3 (API error, timeout, dropped connection, kill) leaves the old Secret as it was, so
the gateway keeps serving the old certificate; the new one waits in the store, and running the
same command again finishes the job with it. When an earlier write did land but its answer was
lost, the Secret already serves the pending serial, and the re-run only promotes it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from datetime import datetime

from cryptography.x509.oid import NameOID

from kimpki.errors import KimpkiError, NotFoundError, OperationError
from kimpki.istio import contract as c
from kimpki.istio.credential import (ANN_CREDENTIAL, ANN_ROLE, ROLE_CA, default_ca_file_name, is_managed,
                                     read_provenance)
from kimpki.ops.authority import PassphraseSource
from kimpki.ops.credentials import ManagedCredential, deployment_record, managed_credential, prepare_record, publish
from kimpki.ops.issuing import issue
from kimpki.ops.places import SecretPlace
from kimpki.pki import keys, parse, profiles
from kimpki.store import CertRecord, Store

DEFAULT_DAYS = 90


@dataclass
class RotationResult:
    secret: str
    namespace: str
    place: str
    store_name: str
    hosts: list[str]
    ca: str
    old_serial: str | None
    old_not_after: str | None
    new_serial: str | None
    new_not_after: str | None
    action: str  # "rotated", "resumed" (a pending version from an earlier run was used), "would rotate"
    secrets: list[dict] = field(default_factory=list)  # [{name, action}]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "secret": self.secret,
            "namespace": self.namespace,
            "place": self.place,
            "certificate": self.store_name,
            "hosts": self.hosts,
            "ca": self.ca,
            "action": self.action,
            "old_serial": self.old_serial,
            "old_not_after": self.old_not_after,
            "new_serial": self.new_serial,
            "new_not_after": self.new_not_after,
            "secrets": self.secrets,
            "warnings": self.warnings,
        }


def read_managed(place: SecretPlace, name: str, namespace: str | None, *, force: bool = False) -> ManagedCredential:
    """The managed credential Secret ``name``; one-line errors for missing or foreign Secrets.

    ``namespace=None`` (a manifests folder) finds NAME wherever it is. A Secret that carries
    kimpki's annotations but lost its managed-by label is refused unless ``force``.
    """
    secret = place.get(namespace, name)
    if secret is None:
        where = f"in namespace {namespace} " if namespace else ""
        raise NotFoundError(f"no Secret {name} {where}({place.description})")
    meta = secret.get("metadata") or {}
    ns = meta.get("namespace") or namespace or c.DEFAULT_NAMESPACE
    prov = read_provenance(secret)
    if not prov:
        if is_managed(secret):
            raise OperationError(f"Secret {ns}/{name} carries kimpki's label but none of its kimpki.io/* "
                                 f"annotations, so kimpki cannot tell which hosts and CA it was made for; "
                                 f"re-create it with 'kimpki secret create {name} --cert CERT'")
        raise OperationError(f"Secret {ns}/{name} was not written by kimpki (no {c.MANAGED_BY_LABEL}="
                             f"{c.MANAGED_BY_VALUE} label or kimpki.io/* annotations): nothing to rebuild it from; "
                             f"replace it with 'kimpki secret create {name} --cert CERT --force'")
    if not is_managed(secret):
        if not force:
            raise OperationError(f"Secret {ns}/{name} has kimpki.io/* annotations but not the label "
                                 f"{c.MANAGED_BY_LABEL}={c.MANAGED_BY_VALUE}, so kimpki no longer manages it: "
                                 f"give --force to rotate it anyway (the label is put back)")
        # Read it as managed; the write (with force) puts the label back.
        secret = {**secret, "metadata": {**meta, "labels": {**(meta.get("labels") or {}),
                                                            c.MANAGED_BY_LABEL: c.MANAGED_BY_VALUE}}}
    mode = (meta.get("annotations") or {}).get(c.ANNOTATION_PREFIX + "mode")
    delivery = (meta.get("annotations") or {}).get(c.ANNOTATION_PREFIX + "delivery")
    ca_secret = False
    if mode == "mutual" and delivery != "file-mounted":
        # Istio reads the CA from NAME-cacert first: if kimpki wrote one for this credential, keep using it.
        cacert = place.get(ns, c.cacert_secret_name(name))
        ann = ((cacert or {}).get("metadata") or {}).get("annotations") or {}
        ca_secret = bool(cacert and is_managed(cacert) and ann.get(ANN_ROLE) == ROLE_CA
                         and ann.get(ANN_CREDENTIAL, name) == name)
    cred = managed_credential(secret, default_namespace=ns, ca_secret=ca_secret)
    if cred.spec.file_mounted and cred.spec.mutual:
        cred = _keep_ca_file_name(place, cred)
    return cred


def _keep_ca_file_name(place: SecretPlace, cred: ManagedCredential) -> ManagedCredential:
    """A file-mounted MUTUAL gateway reads its CA from one file of istio-ingressgateway-ca-certs,
    named in its Gateway (``caCertificates``): keep writing that file, even with another CA.
    The annotations record the CA, not the file name, so the file is the CA's default name
    when the Secret holds it."""
    ca_certs = place.get(cred.namespace, c.FILE_MOUNTED_CA_SECRET)
    file_name = default_ca_file_name(cred.ca)
    if ca_certs is not None and file_name in (ca_certs.get("data") or {}):
        return replace(cred, spec=replace(cred.spec, ca_file_name=file_name))
    return cred


def _lifetime_days(cred: ManagedCredential, current: CertRecord | None) -> float:
    if cred.served is not None:
        span = cred.served.not_valid_after_utc - cred.served.not_valid_before_utc
    elif current is not None:
        span = current.not_after - current.not_before
    else:
        return DEFAULT_DAYS
    # Leaves are backdated a few minutes for clock skew: round to whole days (at least one).
    return max(1, round(span.total_seconds() / 86400))


def _key_type(cred: ManagedCredential, current: CertRecord | None) -> keys.KeyType:
    if current is not None and current.key_type:
        try:
            return keys.KeyType(current.key_type)
        except ValueError:
            pass
    if cred.served is not None:
        kt = keys.key_type_of(cred.served.public_key())
        if kt is not None:
            return kt
    return keys.DEFAULT_KEY_TYPE


def _organization(cred: ManagedCredential, current: CertRecord | None) -> str | None:
    """The subject's O of the certificate being replaced: a rotation keeps the subject."""
    cert = cred.served
    if cert is None and current is not None:
        try:
            cert = parse.load_certificates(current.cert_path.read_bytes(), str(current.cert_path))[0]
        except (OSError, KimpkiError):
            return None
    attrs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME) if cert is not None else []
    return str(attrs[0].value) if attrs else None


def _usable_pending(rec: CertRecord | None, hosts: tuple[str, ...], ca: str, now: datetime,
                    key_type: keys.KeyType | None = None) -> CertRecord | None:
    """``rec``, the pending version an earlier run left, if it still fits: same hosts and CA (and
    key type, when one is asked for), a key, valid."""
    if rec is None or not rec.has_key or rec.ca != ca or rec.kind != "server":
        return None
    if sorted(rec.hosts) != sorted(hosts) or not rec.not_before <= now < rec.not_after:
        return None
    if key_type is not None and rec.key_type != key_type.value:
        return None
    return rec


def landed_pending(store: Store, cred: ManagedCredential) -> CertRecord | None:
    """The pending version the Secret already serves: an earlier run's write landed but its
    answer was lost (dropped connection, timeout, kill) before the store was told."""
    return _served(store.find_cert(cred.store_name, state="pending"), cred)


def _served(pending: CertRecord | None, cred: ManagedCredential) -> CertRecord | None:
    """``pending`` when the Secret serves it (see :func:`landed_pending`)."""
    if pending is not None and cred.served_serial is not None and pending.serial == cred.served_serial:
        return pending
    return None


def _unsure_whether_written(error: KimpkiError) -> bool:
    """True when a write got no answer: the Secret may hold the old or the new certificate."""
    from kimpki.kube.errors import ConnectionLost, Timeout  # plain classes; kubernetes is not imported

    return isinstance(error, (ConnectionLost, Timeout))


@dataclass
class Rotation:
    """One credential's rotation between the steps of the module doc. Several go through each
    step together in a renewal run (:mod:`kimpki.ops.renewing`): one store batch for their
    pending versions, their Secret writes side by side, one store batch to promote them."""

    place: SecretPlace
    cred: ManagedCredential
    result: RotationResult
    issuer: str
    published: str
    pending: CertRecord | None = None  # the version the Secret gets (reused, or issued in step 2)
    issue_args: dict | None = None  # how to issue it when there is none yet
    key: keys.PrivateKey | None = None  # its key, made before the store is locked
    failure: KimpkiError | None = None  # why step 2 (the old Secret is untouched) or step 4 failed
    prepared: object = None
    written: list[dict] = field(default_factory=list)


def plan_rotation(store: Store, place: SecretPlace, cred: ManagedCredential, *, now: datetime,
                  new_ca: str | None = None, dry_run: bool = False, days: float | None = None,
                  key_type: keys.KeyType | None = None) -> Rotation:
    """Step 1 (the Secret is read): what to issue, from which CA, or which pending version to reuse."""
    current = store.find_cert(cred.store_name)
    pending = store.find_cert(cred.store_name, state="pending")  # read once: landed, or reusable
    landed = _served(pending, cred)
    if landed is not None:
        # Finish what the earlier run wrote (its issuer, and the CA its Secret names), whatever asked now.
        issuer, published = landed.ca, cred.ca
    else:
        issuer = new_ca or (current.ca if current is not None and current.kind == "server" else cred.ca)
        published = new_ca or cred.ca
    store.get_ca(issuer)  # a clear error now rather than after the key is generated
    old_serial = cred.served_serial
    old_not_after = parse.rfc3339(cred.served.not_valid_after_utc) if cred.served is not None else None
    if landed is not None and current is not None:
        # The Secret shows the new certificate already; what it replaced is the store's current one.
        old_serial, old_not_after = current.serial, parse.rfc3339(current.not_after)
    result = RotationResult(secret=cred.name, namespace=cred.namespace, place=place.description,
                            store_name=cred.store_name, hosts=list(cred.hosts), ca=published,
                            old_serial=old_serial, old_not_after=old_not_after, new_serial=None,
                            new_not_after=None, action="would rotate")
    rot = Rotation(place, cred, result, issuer, published)
    if dry_run:
        return rot
    rot.pending = landed or _usable_pending(pending, cred.hosts, issuer, now, key_type)
    if rot.pending is not None:
        result.action = "resumed"
    else:
        chosen = key_type or _key_type(cred, current)
        rot.issue_args = dict(kind=profiles.LeafKind.SERVER, ca_name=issuer, org=_organization(cred, current),
                              days=days or _lifetime_days(cred, current), key_type=chosen, name=cred.store_name)
        result.action = "rotated"
    return rot


def issue_pending(store: Store, rotations: list[Rotation], *, now: datetime, passphrase: PassphraseSource) -> None:
    """Step 2 for many: each rotation without a pending version gets one, all in one store batch
    (one lock, one commit, one file-system sync; keys made before the lock). A rotation whose
    issuance fails gets ``failure`` and the others go on."""
    todo = [r for r in rotations if r.pending is None and r.issue_args is not None and r.failure is None]
    for r in todo:
        r.key = keys.generate_key(r.issue_args["key_type"])
    issued: list[tuple[Rotation, CertRecord]] = []
    if todo:
        # One credential (kimpki rotate) keeps the plain per-file fsyncs: a batch's file-system
        # sync only pays off for many, and it flushes whatever else waits on that file system.
        with store.batch() if len(todo) > 1 else contextlib.nullcontext():
            for r in todo:
                try:
                    res = issue(store, list(r.cred.hosts), **r.issue_args, key=r.key, now=now,
                                passphrase=passphrase, state="pending")
                except KimpkiError as e:
                    r.failure = e
                    continue
                issued.append((r, res.record))
    for r, record in issued:  # committed: now they count
        r.pending = record
    for r in rotations:
        r.key = None
        if r.pending is not None:
            r.result.new_serial, r.result.new_not_after = r.pending.serial, parse.rfc3339(r.pending.not_after)


def prepare_rotation(store: Store, rot: Rotation, *, now: datetime,
                     passphrase: PassphraseSource | None = None) -> None:
    """Step 3, first half: the Secret(s) the pending version makes (reads the store: one thread).
    A stapled credential gets a staple for the new certificate (``passphrase``: its CA's key)."""
    rot.prepared = prepare_record(store, rot.pending, rot.cred.spec, now=now,
                                  ca_name=rot.published if rot.cred.spec.mutual else None, passphrase=passphrase)


def publish_rotation(rot: Rotation, *, force: bool = False) -> None:
    """Step 3: write the prepared Secret(s) in place. No store access, so several rotations can
    write side by side. A failure raises :class:`OperationError` saying what the Secret serves
    and that the pending certificate waits in the store."""
    cred, pending = rot.cred, rot.pending
    try:
        written, warnings = publish(rot.place, rot.prepared, force=force, read={cred.name: cred.secret})
    except KimpkiError as e:
        if _unsure_whether_written(e):
            state = (f"secret/{cred.name} holds either the old certificate or the new one (both are valid, "
                     f"so the gateway keeps serving)")
        else:
            state = f"secret/{cred.name} is untouched and still serves the old certificate"
        raise OperationError(f"{e}; {state}; the new certificate (serial {pending.serial}) is kept as "
                             f"pending in the store: run the same command again to finish") from None
    rot.result.secrets = [{"name": w["name"], "action": w["action"]} for w in written]
    rot.result.warnings = warnings


def promote(store: Store, rotations: list[Rotation]) -> None:
    """Step 4 for many, after their Secrets were written: the pending versions become current, and
    the store records where they went. One store batch; a rotation that cannot be promoted (a
    damaged store folder) gets ``failure`` and the others go on."""
    if not rotations:
        return
    manifests: dict[int, str] = {}  # one resolve per folder, not per Secret
    with store.batch() if len(rotations) > 1 else contextlib.nullcontext():
        for rot in rotations:
            cluster = getattr(rot.place, "cluster", None)
            folder = getattr(rot.place, "folder", None)
            if folder is not None and id(folder) not in manifests:
                manifests[id(folder)] = str(folder.resolve())
            try:
                with store.locked():  # inside the batch, a savepoint: a failure undoes this one only
                    store.make_current(rot.pending.id, record=rot.pending)
                    # Finishing a landed write (finish_landed) prepared nothing: the Secret as read.
                    for s in rot.prepared.secrets if rot.prepared is not None else [rot.cred.secret]:
                        store.record_deployment(rot.pending.id, deployment_record(
                            s, context=getattr(cluster, "context", None), kubeconfig=None,
                            manifests=manifests.get(id(folder)) if folder is not None else None))
            except KimpkiError as e:
                # The Secret was written: say so, and how the pending version becomes current.
                rot.failure = OperationError(
                    f"{e}; secret/{rot.cred.name} already serves the new certificate (serial "
                    f"{rot.pending.serial}), kept as pending in the store: the next 'kimpki renew' or "
                    f"'kimpki rotate {rot.cred.name}' finishes it")


def finish_landed(store: Store, found: list[tuple[SecretPlace, ManagedCredential]]) -> list[Rotation]:
    """Step 4 alone for each credential whose Secret already serves its pending version (a run
    killed, or failed, after the write and before the promotion): that version becomes current,
    nothing is written to the place. Returns those rotations (action "finished"); one that
    cannot be promoted has ``failure``. The renewal decision that follows reads the Secret,
    which serves the new certificate, so without this nothing would ever promote it."""
    rots = []
    for place, cred in found:
        landed = landed_pending(store, cred)
        if landed is None:
            continue
        current = store.find_cert(cred.store_name)
        result = RotationResult(secret=cred.name, namespace=cred.namespace, place=place.description,
                                store_name=cred.store_name, hosts=list(cred.hosts), ca=cred.ca,
                                old_serial=current.serial if current is not None else None,
                                old_not_after=parse.rfc3339(current.not_after) if current is not None else None,
                                new_serial=landed.serial, new_not_after=parse.rfc3339(landed.not_after),
                                action="finished")
        rots.append(Rotation(place, cred, result, landed.ca, cred.ca, pending=landed))
    promote(store, rots)
    return rots


def rotate_credential(store: Store, place: SecretPlace, name: str, namespace: str | None = None, *,
                      now: datetime, passphrase: PassphraseSource, new_ca: str | None = None,
                      force: bool = False, dry_run: bool = False, days: float | None = None,
                      key_type: keys.KeyType | None = None, cred: ManagedCredential | None = None) -> RotationResult:
    """Give credential Secret ``name`` a new key and certificate (see the module doc).

    ``new_ca`` moves it to another store CA (issuer, and the CA published for MUTUAL). ``cred``
    lets a caller that already read the Secret skip the read.
    """
    if cred is None:
        cred = read_managed(place, name, namespace, force=force)
    rot = plan_rotation(store, place, cred, now=now, new_ca=new_ca, dry_run=dry_run, days=days, key_type=key_type)
    if dry_run:
        return rot.result
    issue_pending(store, [rot], now=now, passphrase=passphrase)
    if rot.failure is not None:
        raise rot.failure
    prepare_rotation(store, rot, now=now, passphrase=passphrase)
    publish_rotation(rot, force=force)
    promote(store, [rot])
    if rot.failure is not None:
        raise rot.failure
    return rot.result


def rotate_with_pair(store: Store, place: SecretPlace, name: str, namespace: str | None = None, *,
                     force: bool = False, key_type: keys.KeyType | None = None, **kw) -> list[RotationResult]:
    """:func:`rotate_credential` for ``name`` and, when it is half of an RSA+ECDSA pair
    (``kimpki.io/pair``, :mod:`kimpki.ops.pairs`), for the other half too: both certificates of
    one server change together. ``key_type`` applies to ``name`` only (the other keeps its own)."""
    cred = read_managed(place, name, namespace, force=force)
    results = [rotate_credential(store, place, name, namespace, force=force, key_type=key_type, cred=cred, **kw)]
    if cred.spec.pair:
        partner = read_managed(place, cred.spec.pair, cred.namespace, force=force)
        results.append(rotate_credential(store, place, partner.name, partner.namespace, force=force,
                                         cred=partner, **kw))
    return results
