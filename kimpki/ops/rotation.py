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

from dataclasses import dataclass, field
from datetime import datetime

from kimpki.errors import KimpkiError, NotFoundError, OperationError
from kimpki.istio import contract as c
from kimpki.istio.credential import ANN_CREDENTIAL, ANN_ROLE, ROLE_CA, is_managed
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


def read_managed(place: SecretPlace, name: str, namespace: str | None) -> ManagedCredential:
    """The managed credential Secret ``name``; one-line errors for missing or foreign Secrets."""
    secret = place.get(namespace, name)
    ns = namespace or c.DEFAULT_NAMESPACE
    if secret is None:
        raise NotFoundError(f"no Secret {name} in namespace {ns} ({place.description})")
    ns = (secret.get("metadata") or {}).get("namespace") or ns
    mode = (secret.get("metadata") or {}).get("annotations", {}).get(c.ANNOTATION_PREFIX + "mode")
    delivery = (secret.get("metadata") or {}).get("annotations", {}).get(c.ANNOTATION_PREFIX + "delivery")
    ca_secret = False
    if mode == "mutual" and delivery != "file-mounted":
        # Istio reads the CA from NAME-cacert first: if kimpki wrote one for this credential, keep using it.
        cacert = place.get(ns, c.cacert_secret_name(name))
        ann = ((cacert or {}).get("metadata") or {}).get("annotations") or {}
        ca_secret = bool(cacert and is_managed(cacert) and ann.get(ANN_ROLE) == ROLE_CA
                         and ann.get(ANN_CREDENTIAL, name) == name)
    return managed_credential(secret, default_namespace=ns, ca_secret=ca_secret)


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


def _usable_pending(store: Store, store_name: str, hosts: tuple[str, ...], ca: str, now: datetime) -> CertRecord | None:
    """The pending version an earlier run left, if it still fits: same hosts and CA, a key, valid."""
    rec = store.find_cert(store_name, state="pending")
    if rec is None or not rec.has_key or rec.ca != ca or rec.kind != "server":
        return None
    if sorted(rec.hosts) != sorted(hosts) or not rec.not_before <= now < rec.not_after:
        return None
    return rec


def rotate_credential(store: Store, place: SecretPlace, name: str, namespace: str | None = None, *,
                      now: datetime, passphrase: PassphraseSource, new_ca: str | None = None,
                      force: bool = False, dry_run: bool = False, days: float | None = None,
                      key_type: keys.KeyType | None = None, cred: ManagedCredential | None = None) -> RotationResult:
    """Give credential Secret ``name`` a new key and certificate (see the module doc).

    ``new_ca`` moves it to another store CA (issuer, and the CA published for MUTUAL). ``cred``
    lets a caller that already read the Secret (renew, over a whole listing) skip the read.
    """
    if cred is None:
        cred = read_managed(place, name, namespace)
    current = store.find_cert(cred.store_name)
    issuer = new_ca or (current.ca if current is not None and current.kind == "server" else cred.ca)
    published = new_ca or cred.ca
    store.get_ca(issuer)  # a clear error now rather than after the key is generated
    old_serial = cred.served_serial
    old_not_after = parse.rfc3339(cred.served.not_valid_after_utc) if cred.served is not None else None
    result = RotationResult(secret=cred.name, namespace=cred.namespace, place=place.description,
                            store_name=cred.store_name, hosts=list(cred.hosts), ca=published,
                            old_serial=old_serial, old_not_after=old_not_after, new_serial=None,
                            new_not_after=None, action="would rotate")
    if dry_run:
        return result

    pending = _usable_pending(store, cred.store_name, cred.hosts, issuer, now)
    if pending is not None:
        result.action = "resumed"
    else:
        issued = issue(store, list(cred.hosts), kind=profiles.LeafKind.SERVER, ca_name=issuer,
                       days=days or _lifetime_days(cred, current), key_type=key_type or _key_type(cred, current),
                       name=cred.store_name, now=now, passphrase=passphrase, state="pending")
        pending = issued.record
        result.action = "rotated"
    result.new_serial, result.new_not_after = pending.serial, parse.rfc3339(pending.not_after)

    prepared = prepare_record(store, pending, cred.spec, now=now, ca_name=published if cred.spec.mutual else None)
    try:
        written, warnings = publish(place, prepared, force=force)
    except KimpkiError as e:
        raise OperationError(f"{e}; the old Secret is untouched and still served; the new certificate "
                             f"(serial {pending.serial}) is kept as pending in the store: run the same "
                             f"command again to finish") from None
    result.secrets = [{"name": w["name"], "action": w["action"]} for w in written]
    result.warnings = warnings
    cluster = getattr(place, "cluster", None)
    folder = getattr(place, "folder", None)
    with store.locked():
        store.make_current(pending.id)
        for s in prepared.secrets:
            store.record_deployment(pending.id, deployment_record(
                s, context=getattr(cluster, "context", None), kubeconfig=None,
                manifests=str(folder.resolve()) if folder is not None else None))
    return result
