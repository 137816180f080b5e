"""``kimpki plan`` / ``kimpki apply``: make the store and the targets match a policy.

One walk, in dependency order, that either only looks (plan) or also acts (apply):

1. CAs: created when the store has none of that name, never replaced (that is ``kimpki ca
   rotate``, whose successor then stands for the policy's CA); a CA that differs from the policy
   is reported as a warning. Their name constraints are stored, for every generation, so every
   later issuance (this one and ``kimpki issue``) obeys them.
2. Certificates: issued when missing, or when the current one no longer matches the policy:
   hosts, usage, CA, key type or organisation changed, no private key in the store, or inside
   its renewal window (``renewBefore``; default the last third of its lifetime).
3. Credential Secrets: built from the current certificate and written through a
   :class:`~kimpki.ops.places.SecretPlace` (a cluster, or a folder of manifests), in place.
4. Gateway mounts: the ingress gateway Deployment's Secret volumes (a guarded JSON patch in a
   cluster; in a folder, the Deployment's document when the folder holds it, else a kind-less
   strategic-merge patch file ``<deployment>.volumes-patch.yaml``).
5. Gateways and VirtualServices: created or replaced in place (cluster), or written as YAML
   documents ``<gateway>.gateway.yaml`` (folder).

Everything that matches already is left alone, so a second apply reports no changes and writes
nothing: no API write request, no file touched.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from kimpki import input_files, secret_env
from kimpki.errors import KimpkiError, UsageError
from kimpki.istio import contract as c
from kimpki.istio.volumes import apply_json_patch, mount_ops
from kimpki.ops import authority, issuing
from kimpki.ops import constraints as ca_constraints
from kimpki.ops.manifest_objects import ManifestFolder, dump_yaml
from kimpki.ops.places import ClusterPlace, ManifestsPlace, SecretPlace, WriteResult
from kimpki.pki import parse
from kimpki.pki.profiles import LeafKind
from kimpki.pki.renewal import renewal_due
from kimpki.policy import PolicyError, credential_spec
from kimpki.policy import model as m
from kimpki.store import Store
from kimpki.store.fs import ensure_private_dir
from kimpki.secret_env import PASSPHRASE_ENV
# A Secret whose OCSP staple alone is re-signed (inside the last half of its validity) is a refresh,
# not a drift from the policy.
STAPLE_DUE = "OCSP staple due for refresh"
PAST = {"create": "created", "update": "updated", "issue": "issued", "patch": "patched", "set": "set",
        "clear": "cleared"}


@dataclass
class Action:
    """One change: ``verb`` is create | update | issue | patch | set | clear."""

    verb: str
    kind: str  # CertificateAuthority, Constraints, Certificate, Secret, Deployment, Gateway, VirtualService
    name: str
    namespace: str | None
    reason: str
    where: str  # "store", or the target's description
    source: str  # the policy's FILE:LINE
    details: dict = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    def to_dict(self, done: bool) -> dict:
        return {"action": self.verb, "done": done, "kind": self.kind, "name": self.name,
                "namespace": self.namespace, "reason": self.reason, "where": self.where,
                "source": self.source, **self.details}


@dataclass
class Report:
    policy_files: tuple[str, ...]
    applied: bool  # False: a plan (or apply --dry-run), nothing changed
    actions: list[Action] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    api_requests: dict[str, int] = field(default_factory=dict)  # per cluster Target

    def to_dict(self) -> dict:
        return {
            "policy_files": list(self.policy_files),
            "applied": self.applied,
            "changes": len(self.actions),
            "actions": [a.to_dict(self.applied) for a in self.actions],
            "warnings": self.warnings,
            "api_requests": self.api_requests,
        }


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------

class _EmptyPlace(SecretPlace):
    """A manifests folder that does not exist yet (plan): holds nothing, every write would create."""

    def __init__(self, folder: Path):
        self.description = f"manifests {folder} (to be created)"

    def get(self, namespace, name):
        return None

    def managed(self, namespace=None):
        return iter(())

    def write(self, secret, *, force=False, dry_run=False):
        if not dry_run:
            raise AssertionError("_EmptyPlace is for plans only")
        return WriteResult("created", secret, None)


class _Targets:
    """Opens each Target once, when first needed; closes them all at the end."""

    def __init__(self, execute: bool):
        self.execute = execute
        self.places: dict[str, SecretPlace] = {}

    def place(self, t: m.Target) -> SecretPlace:
        if t.name not in self.places:
            if t.is_cluster:
                self.places[t.name] = ClusterPlace.connect(kubeconfig=t.kubeconfig, context=t.context)
            else:
                if not t.manifests.exists():
                    if not self.execute:
                        self.places[t.name] = _EmptyPlace(t.manifests)
                        return self.places[t.name]
                    ensure_private_dir(t.manifests)  # it will hold private keys: 0700
                elif not t.manifests.is_dir():
                    raise UsageError(f"{t.where}: Target {t.name}: {t.manifests} is not a folder")
                self.places[t.name] = ManifestsPlace(t.manifests)
        return self.places[t.name]

    def cluster(self, t: m.Target):
        return self.place(t).cluster

    def requests(self) -> dict[str, int]:
        return {name: p.requests for name, p in self.places.items() if isinstance(p, ClusterPlace)}

    def close(self) -> None:
        for p in self.places.values():
            p.close()


# ---------------------------------------------------------------------------------------------
# Passphrases
# ---------------------------------------------------------------------------------------------

def _passphrase(ca: m.CertificateAuthority | None) -> bytes | None:
    """The CA's passphrase from its policy reference, else $KIMPKI_CA_PASSPHRASE, else None."""
    ref = ca.passphrase if ca else None
    if ref is not None and ref.file is not None:
        try:
            lines = input_files.read_bytes(ref.file, f"the passphrase file {ref.file}").splitlines()
        except UsageError as e:
            raise PolicyError(ca.where, f"CertificateAuthority {ca.name}: {e}") from None
        if not lines or not lines[0]:
            raise PolicyError(ca.where, f"CertificateAuthority {ca.name}: the passphrase file {ref.file} is empty")
        return lines[0]
    env = ref.env if ref is not None else PASSPHRASE_ENV
    value = secret_env.take(env)
    if ref is not None and not value:
        raise PolicyError(ca.where, f"CertificateAuthority {ca.name}: ${env} (its passphrase) is not set")
    return value.encode() if value else None


def _passphrase_source(policy: m.Policy, store: Store):
    def source(ca_name: str) -> bytes | None:
        # A rotated CA's successor is unlocked like the policy's CA it stands for.
        ca = policy.authority(ca_name) or next(
            (a for a in policy.authorities if ca_name in generations(store, a.name)), None)
        return _passphrase(ca)
    return source


# ---------------------------------------------------------------------------------------------
# The walk
# ---------------------------------------------------------------------------------------------

def converge(policy: m.Policy, store: Store, *, now: datetime, execute: bool, force: bool = False) -> Report:
    """Compare (``execute=False``: a plan) or converge (``execute=True``) the store and targets."""
    report = Report(policy.files, execute)
    for ca in policy.authorities:  # a missing passphrase stops the run before anything changes
        if ca.passphrase is not None:
            _passphrase(ca)
    targets = _Targets(execute)
    try:
        _authorities(policy, store, report, now, execute)
        reissued = _certificates(policy, store, report, now, execute)
        _credentials(policy, store, targets, report, now, execute, reissued, force)
        _mounts(policy, targets, report, execute)
        _gateways(policy, targets, report, execute)
    finally:
        report.api_requests = targets.requests()
        targets.close()
    return report


def _at(obj, e: KimpkiError, what: str) -> KimpkiError:
    """``e`` with the policy location and object in front, same type (same exit code)."""
    if isinstance(e, PolicyError):
        return e  # placed already (a CA's passphrase, read while issuing a certificate)
    err = type(e).__new__(type(e))
    KimpkiError.__init__(err, f"{obj.where}: {what}: {e}")
    return err


def _subject_org(cert: x509.Certificate) -> str | None:
    attrs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(attrs[0].value) if attrs else None


def generations(store: Store, name: str) -> list[str]:
    """``name`` and the CAs that replaced it (``kimpki ca rotate`` records a successor), oldest
    first. The policy names a CA once; after a rotation its successor is the same CA to apply."""
    line: list[str] = []
    rec = store.find_ca(name)
    while rec is not None and rec.name not in line:
        line.append(rec.name)
        successor = getattr(rec, "successor", None)
        rec = store.find_ca(successor) if successor else None
    return line or [name]


def issuing_ca(store: Store, name: str) -> str:
    """The generation of CA ``name`` that issues now: the newest one not retired."""
    line = generations(store, name)
    live = [n for n in line if getattr(store.find_ca(n), "retired_at", None) is None]
    return (live or line)[-1]


def _authorities(policy: m.Policy, store: Store, report: Report, now: datetime, execute: bool) -> None:
    for ca in policy.authorities:
        rec = store.find_ca(ca.name)
        if rec is None:
            report.actions.append(Action("create", "CertificateAuthority", ca.name, None, "missing", "store",
                                         str(ca.where), {"key_type": ca.key_type.value, "parent": ca.parent}))
            if execute:
                try:
                    authority.init_ca(store, ca.name, org=ca.org, common_name=ca.common_name, key_type=ca.key_type,
                                      days=ca.duration.total_seconds() / 86400, passphrase=_passphrase(ca),
                                      parent=ca.parent, parent_passphrase=_passphrase_source(policy, store), now=now)
                except KimpkiError as e:
                    raise _at(ca, e, f"CertificateAuthority {ca.name}") from None
        else:
            differs = []
            if rec.key_type and rec.key_type != ca.key_type.value:
                differs.append(f"key type {rec.key_type}, the policy says {ca.key_type.value}")
            if (rec.parent or None) != ca.parent:
                differs.append(f"parent {rec.parent or 'none'}, the policy says {ca.parent or 'none'}")
            org = _subject_org(authority.read_ca_cert(rec))
            if ca.org is not None and org != ca.org:
                differs.append(f"organisation {org!r}, the policy says {ca.org!r}")
            if differs:
                report.warnings.append(f"{ca.where}: CA {ca.name} in the store has {'; '.join(differs)}; apply never "
                                       f"replaces a CA (rotate it with 'kimpki ca rotate {ca.name}')")
        # The constraints hold for every generation of the CA (a rotation carries them over).
        for name in generations(store, ca.name) if rec is not None else [ca.name]:
            stored = ca_constraints.load(store, name) if rec is not None else None
            if stored == ca.constraints:
                continue
            verb = "set" if ca.constraints is not None else "clear"
            reason = ca.constraints.describe() if ca.constraints is not None else "no constraints in the policy"
            report.actions.append(Action(verb, "Constraints", name, None, reason, "store", str(ca.where)))
            if execute:
                with store.locked():
                    ca_constraints.save(store, name, ca.constraints)
        _crl_validity(ca, store, report, execute, exists=rec is not None)


def _crl_validity(ca: m.CertificateAuthority, store: Store, report: Report, execute: bool, *, exists: bool) -> None:
    """The policy's ``crlValidity`` for every generation of the CA: the validity ``revoke``,
    ``renew`` and ``kimpki crl`` sign its next CRLs with (the current CRL stays until then)."""
    if ca.crl_validity is None:
        return  # not given: the store's setting (kimpki crl --next-update), else 7 days
    from kimpki.ops import revoking  # only for a policy that sets a CRL validity
    for name in generations(store, ca.name) if exists else [ca.name]:
        if exists and revoking.stored_crl_validity(store, name) == ca.crl_validity:
            continue
        days = ca.crl_validity / timedelta(days=1)
        report.actions.append(Action("set", "CrlValidity", name, None, f"CRLs valid {days:g} days", "store",
                                     str(ca.where)))
        if execute:
            revoking.set_crl_validity(store, name, ca.crl_validity)


def renewal_reason(cert: m.Certificate, store: Store, now: datetime) -> str | None:
    """Why ``cert`` must be (re-)issued, or None when the store's current one matches the policy."""
    rec = store.find_cert(cert.name)
    if rec is None:
        return "missing"
    if rec.kind != cert.usage:
        return f"usage changed ({rec.kind} -> {cert.usage})"
    leaf = parse.load_certificates(rec.cert_path.read_bytes(), str(rec.cert_path))[0]
    cn = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if set(rec.hosts) != set(cert.hosts) or (cn and str(cn[0].value) != cert.hosts[0]):
        return f"hosts changed ({', '.join(rec.hosts)} -> {', '.join(cert.hosts)})"
    if rec.ca not in generations(store, cert.ca):
        return f"CA changed ({rec.ca} -> {issuing_ca(store, cert.ca)})"
    if rec.key_type != cert.key_type.value:
        return f"key type changed ({rec.key_type} -> {cert.key_type.value})"
    if _subject_org(leaf) != cert.org:
        return f"organisation changed ({_subject_org(leaf)} -> {cert.org})"
    if not rec.has_key:
        return "no private key in the store (it was signed from a CSR)"
    if now >= rec.not_after:
        return f"expired on {parse.rfc3339(rec.not_after)}"
    if renewal_due(rec.not_before, rec.not_after, now, cert.renew_before):
        return f"due for renewal (expires {parse.rfc3339(rec.not_after)})"
    return None


def _certificates(policy: m.Policy, store: Store, report: Report, now: datetime, execute: bool) -> set[str]:
    """Issue what the policy wants and the store lacks: all in one store batch (one commit and
    one file-system sync, not ~7 fsyncs per certificate). A failure stops the run; what was
    issued before it is committed, as when each certificate was its own transaction."""
    reissued: set[str] = set()
    failure: KimpkiError | None = None
    passphrase = _passphrase_source(policy, store)  # one source: each CA is unlocked once per batch
    with store.batch() if execute else contextlib.nullcontext():
        for cert in policy.certificates:
            reason = renewal_reason(cert, store, now)
            if reason is None:
                continue
            action = Action("issue", "Certificate", cert.name, None, reason, "store", str(cert.where),
                            {"hosts": list(cert.hosts), "usage": cert.usage, "ca": cert.ca})
            report.actions.append(action)
            reissued.add(cert.name)
            if execute:
                try:
                    res = issuing.issue(store, list(cert.names), kind=LeafKind(cert.usage),
                                        ca_name=issuing_ca(store, cert.ca), org=cert.org,
                                        days=cert.duration.total_seconds() / 86400, key_type=cert.key_type,
                                        name=cert.name, now=now, passphrase=passphrase)
                except KimpkiError as e:
                    failure = _at(cert, e, f"Certificate {cert.name}")
                    break
                action.details.update(serial=res.record.serial, not_after=parse.rfc3339(res.record.not_after))
    if failure is not None:
        raise failure
    return reissued


def _secret_names(cred: m.Credential, spec) -> list[str]:
    names = [spec.secret_name]
    if spec.mutual and spec.ca_secret:
        names.append(c.cacert_secret_name(spec.secret_name))
    if spec.mutual and spec.file_mounted:
        names.append(c.FILE_MOUNTED_CA_SECRET)
    return names


def _credentials(policy: m.Policy, store: Store, targets: _Targets, report: Report, now: datetime, execute: bool,
                 reissued: set[str], force: bool) -> None:
    deployed: list[tuple[int, dict]] = []
    try:
        _write_credentials(policy, store, targets, report, now, execute, reissued, force, deployed)
    finally:
        _record_deployments(store, deployed)


def _write_credentials(policy: m.Policy, store: Store, targets: _Targets, report: Report, now: datetime,
                       execute: bool, reissued: set[str], force: bool, deployed: list[tuple[int, dict]]) -> None:
    if not policy.credentials:
        return
    # Imported here: a policy of certificates alone needs neither (nor the revocation and OCSP
    # modules they bring in).
    from kimpki.ops import credentials, stapling

    for cred in policy.credentials:
        if cred.ca_only:
            _write_ca_only(store, targets, report, cred, now=now, execute=execute, force=force)
            continue
        cert = policy.certificate(cred.certificate)
        spec = credential_spec(cred, cred.client_ca or cert.ca)
        what = f"Credential {cred.name}"
        try:
            place = targets.place(cred.target)
            if not execute and cred.certificate in reissued:
                # The certificate would be (re-)issued first: the Secrets change with it.
                for name in _secret_names(cred, spec):
                    verb = "update" if place.get(cred.namespace, name) is not None else "create"
                    report.actions.append(Action(verb, "Secret", name, cred.namespace, "new certificate",
                                                 place.description, str(cred.where)))
                continue
            client_ca = issuing_ca(store, cred.client_ca) if cred.client_ca else None
            # A staple that still serves is kept, so that a second apply changes nothing.
            current = place.get(cred.namespace, spec.secret_name) if spec.ocsp_staple else None
            prepared = credentials.prepare(store, cert.name, spec, now=now, ca_name=client_ca,
                                           passphrase=_passphrase_source(policy, store), current=current)
            results, warnings = credentials.publish(place, prepared, force=force, dry_run=not execute)
        except KimpkiError as e:
            raise _at(cred, e, what) from None
        report.warnings.extend(f"{cred.where}: {what}: {w}" for w in warnings)
        changed = [r for r in results if r["action"] != "unchanged"]
        for r in changed:
            verb = "create" if r["action"] == "created" else "update"
            reason = ("new certificate" if cred.certificate in reissued
                      else "missing" if verb == "create"
                      else STAPLE_DUE if current is not None and r["name"] == spec.secret_name
                      and stapling.only_staple_differs(current, r["object"])
                      else "differs from the policy")
            report.actions.append(Action(verb, "Secret", r["name"], cred.namespace, reason, place.description,
                                         str(cred.where), {"serial": prepared.record.serial}))
        if execute and changed:
            t = cred.target
            deployed.extend((prepared.record.id, credentials.deployment_record(
                s, context=t.context, kubeconfig=t.kubeconfig, manifests=str(t.manifests) if t.manifests else None))
                for s in prepared.secrets)


def _write_ca_only(store: Store, targets: _Targets, report: Report, cred: m.Credential, *, now: datetime,
                   execute: bool, force: bool) -> None:
    """A ``caOnly`` Credential: the client CA's bundle (with its CRLs) in a Secret (or ConfigMap) of its own."""
    from kimpki.ops import credentials

    what = f"Credential {cred.name}"
    try:
        place = targets.place(cred.target)
        _, obj = credentials.prepare_ca_only(store, cred.name, namespace=cred.namespace,
                                             ca_name=issuing_ca(store, cred.client_ca), now=now, format=cred.format,
                                             config_map=cred.config_map)
        res = place.write(obj, force=force, dry_run=not execute)
    except KimpkiError as e:
        raise _at(cred, e, what) from None
    if res.action != "unchanged":
        verb = "create" if res.action == "created" else "update"
        report.actions.append(Action(verb, cred.kind, cred.name, cred.namespace,
                                     "missing" if verb == "create" else "differs from the policy",
                                     place.description, str(cred.where)))


def _record_deployments(store: Store, deployed: list[tuple[int, dict]]) -> None:
    """Where the Secrets went, in one store batch (also when a later credential failed)."""
    if deployed:
        with store.batch():
            for record_id, where in deployed:
                store.record_deployment(record_id, where)


# ---------------------------------------------------------------------------------------------
# Gateway mounts
# ---------------------------------------------------------------------------------------------

def _mount_groups(policy: m.Policy) -> dict[tuple, list[m.GatewayMount]]:
    groups: dict[tuple, list[m.GatewayMount]] = {}
    for mount in policy.mounts:
        groups.setdefault((mount.target.name, mount.namespace, mount.deployment), []).append(mount)
    return groups


def _compute(mounts: list[m.GatewayMount]):
    """All mounts of one Deployment as one guarded patch (each computed on the result of the last)."""
    def compute(obj: dict) -> list[dict]:
        ops: list[dict] = []
        for mount in mounts:
            more = mount_ops(obj, secret_name=mount.secret, mount_path=mount.mount_path, container=mount.container,
                             volume_name=mount.name)
            if more:
                obj = apply_json_patch(obj, more)
                ops += more
        return ops
    return compute


def _mount_reason(mounts: list[m.GatewayMount], ops: list[dict]) -> str:
    added = {o["value"]["mountPath"] for o in ops if o["op"] == "add" and isinstance(o.get("value"), dict)
             and "mountPath" in o["value"]}
    added |= {v["mountPath"] for o in ops if o["op"] == "add" and isinstance(o.get("value"), list)
              for v in o["value"] if isinstance(v, dict) and "mountPath" in v}
    return "; ".join(f"mount Secret {x.secret} at {x.mount_path}" for x in mounts if x.mount_path in added) \
        or "volume patch"


def volume_patch(mounts: list[m.GatewayMount]) -> str:
    """A kind-less strategic-merge patch mounting every Secret of ``mounts`` (one Deployment)."""
    first = mounts[0]
    containers: dict[str, list[dict]] = {}
    for x in mounts:
        containers.setdefault(x.container, []).append({"mountPath": x.mount_path, "name": x.name, "readOnly": True})
    patch = {"spec": {"template": {"spec": {
        "containers": [{"name": name, "volumeMounts": vms} for name, vms in containers.items()],
        "volumes": [{"name": x.name, "secret": {"secretName": x.secret, "optional": True}} for x in mounts],
    }}}}
    file_name = volume_patch_file(first.deployment)
    header = (f"# Secret volumes for deployment {first.deployment} (namespace {first.namespace}), written by kimpki "
              f"apply.\n# A strategic-merge patch: kubectl -n {first.namespace} patch deployment {first.deployment} "
              f"--patch-file {file_name}\n")
    return header + dump_yaml(patch)


def volume_patch_file(deployment: str) -> str:
    return f"{deployment}.volumes-patch.yaml"


def _mounts(policy: m.Policy, targets: _Targets, report: Report, execute: bool) -> None:
    for (_, namespace, deployment), mounts in _mount_groups(policy).items():
        t = mounts[0].target
        source = str(mounts[0].where)
        ref = f"GatewayMount {mounts[0].name}"
        try:
            if t.is_cluster:
                from kimpki.ops.deployment_patch import patch_deployment

                cluster = targets.cluster(t)
                outcome = patch_deployment(cluster, namespace, deployment, _compute(mounts), dry_run=not execute)
                if outcome.ops:
                    report.actions.append(Action("patch", "Deployment", deployment, namespace,
                                                 _mount_reason(mounts, outcome.ops), targets.place(t).description,
                                                 source, {"ops": outcome.ops}))
                continue
            place = targets.place(t)
            folder = ManifestFolder(t.manifests)
            found = folder.find("Deployment", "apps/v1", namespace, deployment)
            if found is not None:
                ops = _compute(mounts)(found.object)
                if ops:
                    report.actions.append(Action("patch", "Deployment", deployment, namespace,
                                                 _mount_reason(mounts, ops), f"{place.description} ({found.path.name})",
                                                 source, {"ops": ops}))
                    if execute:
                        folder.rewrite(found, apply_json_patch(found.object, ops))
                continue
            file_name = volume_patch_file(deployment)
            verb, _ = folder.write_file(file_name, volume_patch(mounts), dry_run=not execute)
            if verb != "unchanged":
                reason = "; ".join(f"mount Secret {x.secret} at {x.mount_path}" for x in mounts)
                report.actions.append(Action("patch", "Deployment", deployment, namespace,
                                             f"{reason} (patch file {file_name})",
                                             place.description, source, {"file": file_name}))
        except KimpkiError as e:
            raise _at(mounts[0], e, ref) from None


# ---------------------------------------------------------------------------------------------
# Gateways
# ---------------------------------------------------------------------------------------------

def gateway_file(name: str) -> str:
    return f"{name}.gateway.yaml"


def _gateways(policy: m.Policy, targets: _Targets, report: Report, execute: bool) -> None:
    for gw in policy.gateways:
        t = gw.target
        try:
            place = targets.place(t)
            for obj in gw.objects:
                obj = _with_delivered_crls(place, obj)
                meta = obj["metadata"]
                if t.is_cluster:
                    verb = _cluster_object(targets.cluster(t), obj, execute)
                else:
                    verb, _ = ManifestFolder(t.manifests).upsert(obj, file_name=gateway_file(gw.name),
                                                                  dry_run=not execute)
                if verb == "unchanged":
                    continue
                verb = "create" if verb == "created" else "update"
                report.actions.append(Action(verb, obj["kind"], meta["name"], meta.get("namespace"),
                                             "missing" if verb == "create" else "differs from the policy",
                                             place.description, str(gw.where),
                                             {"api_version": obj["apiVersion"]}))
        except KimpkiError as e:
            raise _at(gw, e, f"Gateway {gw.name}") from None


def _with_delivered_crls(place, obj: dict) -> dict:
    """A Gateway with caCrl on its file-mounted MUTUAL servers whose CRL file the credentials
    step delivered beside the CA file (a client trust that uses revocation)."""
    from kimpki.istio import contract as c
    from kimpki.istio import gateway as g

    if obj.get("kind") != "Gateway" or not g.file_ca_paths(obj):
        return obj
    held = place.get(obj["metadata"].get("namespace"), c.FILE_MOUNTED_CA_SECRET) or {}
    return g.with_ca_crls(obj, set(held.get("data") or {}))


def _cluster_object(cluster, obj: dict, execute: bool) -> str:
    from kimpki.kube import objects

    if execute:
        return cluster.apply(obj).action
    meta = obj["metadata"]
    current = cluster.get(obj["kind"], meta.get("namespace"), meta["name"], api_version=obj["apiVersion"])
    if current is None:
        return "created"
    return "unchanged" if objects.object_unchanged(current, obj) else "updated"
