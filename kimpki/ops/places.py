"""Where credential Secrets live: a cluster, or a folder of manifests.

Rotation, renewal, status and policy apply all do the same three things to credential Secrets:
read one, list the ones kimpki manages, and write one back in place. A :class:`SecretPlace`
offers exactly that, for two kinds of place:

* :class:`ClusterPlace`: a namespace of a Kubernetes cluster, through :mod:`kimpki.kube`
  (the only module that imports ``kubernetes``). Writes are updates in place guarded by the
  ``resourceVersion`` just read, never delete + create.
* :class:`ManifestsPlace`: a folder of YAML/JSON manifests (what ``secret create --dry-run -o yaml``
  writes and ``gateway serve -f DIR`` reads). A write rewrites only the YAML document that holds the
  Secret, atomically (temporary file + rename: the local gateway's file watch sees old or new,
  never half), after checking the file did not change since it was read: the folder's
  counterpart of a resourceVersion conflict.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from kimpki.errors import OperationError, UsageError
from kimpki.istio import contract as c
from kimpki.ops.manifest_objects import Found, ManifestFolder, dump_yaml
from kimpki.store.fs import PRIVATE_FILE, write_output

MANAGED_SELECTOR = f"{c.MANAGED_BY_LABEL}={c.MANAGED_BY_VALUE}"


@dataclass
class WriteResult:
    """``action``: "created", "updated" or "unchanged"; ``object`` what the place holds now (or
    would hold, for a dry run); ``previous`` what it held before (None when created)."""

    action: str
    object: dict
    previous: dict | None
    tightened: str | None = None  # a file made 0600 because it now holds a private key


    @property
    def changed(self) -> bool:
        return self.action != "unchanged"


def _meta(obj: dict) -> dict:
    m = obj.get("metadata")
    return m if isinstance(m, dict) else {}


def is_managed(obj: dict | None) -> bool:
    labels = _meta(obj or {}).get("labels") or {}
    return labels.get(c.MANAGED_BY_LABEL) == c.MANAGED_BY_VALUE


class SecretPlace:
    """Read, list and write credential Secrets somewhere. Also a context manager."""

    description: str = ""
    # How many write() calls may run side by side (renew's bounded concurrency). A folder: one.
    parallel_writes: int = 1

    @property
    def requests(self) -> int:
        return 0

    def get(self, namespace: str | None, name: str) -> dict | None:
        raise NotImplementedError

    def managed(self, namespace: str | None = None) -> Iterator[dict]:
        raise NotImplementedError

    def managed_config_maps(self, namespace: str | None = None) -> Iterator[dict]:
        """The ConfigMaps kimpki manages (CA-only bundles for caCertCredentialName). write()
        takes them back, guarded as Secrets are."""
        return iter(())

    def write(self, secret: dict, *, force: bool = False, dry_run: bool = False,
              current: dict | None = None, retries: int | None = None) -> WriteResult:
        """Create or update ``secret`` in place. ``current``: the Secret as just read from this
        place, when the caller has it (a cluster then guards the update with its resourceVersion
        instead of reading it again). ``retries=0``: a conflict fails instead of writing
        ``secret`` over the newer Secret (for a ``secret`` derived from ``current``)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# A cluster
# ---------------------------------------------------------------------------------------------

class ClusterPlace(SecretPlace):
    """Secrets in a Kubernetes cluster (any namespace the credentials name)."""

    # Each write is one guarded PUT, mostly waiting for the API server: a few at a time.
    parallel_writes = 8

    def __init__(self, cluster):
        self.cluster = cluster
        ctx = f" (context {cluster.context})" if getattr(cluster, "context", None) else ""
        self.description = f"cluster {cluster.server}{ctx}"

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None, **client) -> "ClusterPlace":
        """``client``: :meth:`kimpki.kube.Cluster.connect`'s ``qps``, ``burst`` and ``notice``."""
        from kimpki.kube import Cluster  # imports kubernetes: only when a cluster is the target

        return cls(Cluster.connect(kubeconfig=kubeconfig, context=context, **client))

    @property
    def requests(self) -> int:
        return self.cluster.requests

    def get(self, namespace: str | None, name: str) -> dict | None:
        return self.cluster.get("Secret", namespace or c.DEFAULT_NAMESPACE, name)

    def managed(self, namespace: str | None = None) -> Iterator[dict]:
        return self.cluster.list("Secret", namespace, label_selector=MANAGED_SELECTOR)

    def managed_config_maps(self, namespace: str | None = None) -> Iterator[dict]:
        return self.cluster.list("ConfigMap", namespace, label_selector=MANAGED_SELECTOR)

    def write(self, secret: dict, *, force: bool = False, dry_run: bool = False,
              current: dict | None = None, retries: int | None = None) -> WriteResult:
        more = {} if retries is None else {"retries": retries}
        if secret.get("kind") == "ConfigMap":
            return self._write_config_map(secret, force=force, dry_run=dry_run, current=current, **more)
        res = self.cluster.upsert_secret(secret, force=force, dry_run=dry_run, current=current, **more)
        return WriteResult(res.action, res.object, res.previous)

    def _write_config_map(self, obj: dict, *, force: bool, dry_run: bool, current: dict | None,
                          **more) -> WriteResult:
        """A CA-only ConfigMap, in place like a Secret: one kimpki does not manage is refused
        unless ``force``; the update is guarded by the resourceVersion of ``current``."""
        m = _meta(obj)
        ns, name = m.get("namespace") or c.DEFAULT_NAMESPACE, m.get("name")
        if current is None:
            current = self.cluster.get("ConfigMap", ns, name)
        if current is not None and not force and not is_managed(current):
            raise OperationError(f"ConfigMap {ns}/{name} exists and kimpki does not manage it (no label "
                                 f"{c.MANAGED_BY_LABEL}={c.MANAGED_BY_VALUE}): give --force to update it in place")
        res = self.cluster.apply(obj, dry_run=dry_run, current=current, **more)
        return WriteResult(res.action, res.object, res.previous)

    def close(self) -> None:
        self.cluster.close()


# ---------------------------------------------------------------------------------------------
# A folder of manifests
# ---------------------------------------------------------------------------------------------

def _same_secret(obj: dict, namespace: str | None, name: str, kind: str = "Secret") -> bool:
    if obj.get("kind") != kind or str(obj.get("apiVersion") or "v1") != "v1":
        return False
    m = _meta(obj)
    if m.get("name") != name:
        return False
    # A Secret without a namespace (kubectl create --dry-run=client output) matches any.
    return namespace is None or not m.get("namespace") or m.get("namespace") == namespace


class ManifestsPlace(SecretPlace):
    """Secrets in the YAML/JSON files of one folder (not recursive)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise UsageError(f"no such manifests folder: {self.folder}")
        self.description = f"manifests {self.folder}"
        # One writer per folder within a process (renew may write from several threads).
        self._lock = threading.Lock()
        # Each Secret as get()/managed() returned it, by (file, namespace, name).
        self._seen: dict[tuple[str, str | None, str | None], dict] = {}
        self._folder = ManifestFolder(self.folder)
        # Which files hold a Secret of each name, and the folder's mtime when that was true: a
        # lookup reads only those files, so writing N Secrets is not N scans of N files.
        self._where: dict[str, set[Path]] | None = None
        self._where_mtime: int | None = None

    def _scan(self, paths: list[Path] | None = None, kind: str = "Secret") -> Iterator[Found]:
        return (f for f in self._folder.scan(paths) if f.object.get("kind") == kind)

    def _index(self) -> dict[str, set[Path]]:
        """The name → files index, rebuilt by a full scan when the folder's entries changed other
        than by this place's own writes (files added, removed or renamed into it change its mtime)."""
        mtime = self.folder.stat().st_mtime_ns
        if self._where is None or mtime != self._where_mtime:
            where: dict[str, set[Path]] = {}
            for f in self._scan():
                where.setdefault(str(_meta(f.object).get("name")), set()).add(f.path)
            self._where, self._where_mtime = where, mtime
        return self._where

    def _wrote(self, name: str, path: Path) -> None:
        """Keep the index true after this place wrote ``path`` (the folder's mtime moved with it)."""
        if self._where is not None:
            self._where.setdefault(name, set()).add(path)
            self._where_mtime = self.folder.stat().st_mtime_ns

    def _find(self, namespace: str | None, name: str, kind: str = "Secret") -> Found | None:
        # The index knows the Secrets; a ConfigMap (rare: CA-only bundles) is looked for in every file.
        paths = sorted(self._index().get(name, ())) if kind == "Secret" else None
        found = [f for f in self._scan(paths, kind) if _same_secret(f.object, namespace, name, kind)]
        if len(found) > 1:
            # With a namespace, the one copy that names it wins over namespace-less copies.
            exact = [f for f in found if namespace and _meta(f.object).get("namespace") == namespace]
            if len(exact) == 1:
                return exact[0]
            where = ", ".join(f"{f.path.name}#{f.doc_index + 1}" for f in found)
            raise UsageError(f"{kind} {name} appears {len(found)} times in {self.folder} ({where}); "
                             f"give its namespace (-n) or remove the copies")
        return found[0] if found else None

    @staticmethod
    def _key(f: Found) -> tuple[str, str | None, str | None]:
        return str(f.path), _meta(f.object).get("namespace"), _meta(f.object).get("name")

    def get(self, namespace: str | None, name: str) -> dict | None:
        f = self._find(namespace, name)
        if f is None:
            return None
        # Remembered like a resourceVersion: a later write refuses if the Secret changed since.
        self._seen[self._key(f)] = copy.deepcopy(f.object)
        return copy.deepcopy(f.object)

    def managed(self, namespace: str | None = None, kind: str = "Secret") -> Iterator[dict]:
        for f in self._scan(kind=kind):
            ns = _meta(f.object).get("namespace")
            if is_managed(f.object) and (namespace is None or not ns or ns == namespace):
                self._seen[self._key(f)] = copy.deepcopy(f.object)
                yield copy.deepcopy(f.object)

    def managed_config_maps(self, namespace: str | None = None) -> Iterator[dict]:
        return self.managed(namespace, kind="ConfigMap")

    def write(self, secret: dict, *, force: bool = False, dry_run: bool = False,
              current: dict | None = None, retries: int | None = None) -> WriteResult:
        # ``current`` is not needed: the folder is re-read (cached) and checked against what
        # get()/managed() returned, the folder's resourceVersion; a change is never retried.
        from kimpki.kube import objects  # pure dict helpers; no kubernetes import

        kind = "ConfigMap" if secret.get("kind") == "ConfigMap" else "Secret"
        desired = objects.normalize_secret(secret) if kind == "Secret" else copy.deepcopy(secret)
        m = desired["metadata"]
        ns, name = m.get("namespace") or c.DEFAULT_NAMESPACE, m["name"]
        with self._lock:
            found = self._find(ns, name, kind)
            if found is None:
                path = self.folder / f"{name}.yaml"
                if path.exists():
                    raise OperationError(f"{path} exists but holds no {kind} {name}; refusing to overwrite it")
                if not dry_run:
                    write_output(path, dump_yaml(desired).encode("utf-8"), PRIVATE_FILE)
                    self._wrote(name, path)
                return WriteResult("created", desired, None)
            current = found.object
            seen = self._seen.get(self._key(found))
            if seen is not None and seen != current:
                raise OperationError(f"{kind} {name} in {found.path} changed since kimpki read it; "
                                     f"nothing written, run again")
            if not force and not is_managed(current):
                raise OperationError(f"{kind} {name} in {found.path} is not managed by kimpki (no label "
                                     f"{c.MANAGED_BY_LABEL}={c.MANAGED_BY_VALUE}): give --force to update it")
            # Keep the file's own form of the namespace (kubectl's dry-run output has none).
            if not _meta(current).get("namespace"):
                desired["metadata"].pop("namespace", None)
            if kind == "ConfigMap":
                new = objects.merge_object(current, desired)
                if objects.object_unchanged(current, desired):
                    return WriteResult("unchanged", current, current)
            else:
                new = objects.merge_secret(current, desired)
                if objects.secret_unchanged(current, new):
                    return WriteResult("unchanged", current, current)
            tightened = None
            if not dry_run:
                if self._folder.rewrite(found, new, private=holds_private_key(new)):
                    tightened = str(found.path)
                self._wrote(name, found.path)
                self._seen[self._key(found)] = copy.deepcopy(new)
            return WriteResult("updated", new, current, tightened)


def holds_private_key(secret: dict) -> bool:
    """True when a value of the Secret is a PEM private key (``key``, ``tls.key``, ...)."""
    import base64
    import binascii

    for value in (secret.get("data") or {}).values():
        try:
            if b"PRIVATE KEY-----" in base64.b64decode(str(value), validate=False):
                return True
        except (binascii.Error, ValueError):
            continue
    return any("PRIVATE KEY-----" in str(v) for v in (secret.get("stringData") or {}).values())


def open_place(*, manifests: str | Path | None = None, kubeconfig: str | None = None,
               context: str | None = None) -> SecretPlace:
    """The place a command targets: ``--manifests DIR`` when given, else the cluster."""
    if manifests is not None:
        return ManifestsPlace(manifests)
    return ClusterPlace.connect(kubeconfig=kubeconfig, context=context)
