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
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

from kimpki.errors import OperationError, UsageError
from kimpki.istio import contract as c
from kimpki.store.fs import PRIVATE_FILE, write_atomic

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
# libyaml when PyYAML was built with it (about 10x faster on base64-heavy Secrets).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MANAGED_SELECTOR = f"{c.MANAGED_BY_LABEL}={c.MANAGED_BY_VALUE}"


@dataclass
class WriteResult:
    """``action``: "created", "updated" or "unchanged"; ``object`` what the place holds now (or
    would hold, for a dry run); ``previous`` what it held before (None when created)."""

    action: str
    object: dict
    previous: dict | None

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

    @property
    def requests(self) -> int:
        return 0

    def get(self, namespace: str | None, name: str) -> dict | None:
        raise NotImplementedError

    def managed(self, namespace: str | None = None) -> Iterator[dict]:
        raise NotImplementedError

    def write(self, secret: dict, *, force: bool = False, dry_run: bool = False) -> WriteResult:
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

    def __init__(self, cluster):
        self.cluster = cluster
        ctx = f" (context {cluster.context})" if getattr(cluster, "context", None) else ""
        self.description = f"cluster {cluster.server}{ctx}"

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None) -> "ClusterPlace":
        from kimpki.kube import Cluster  # imports kubernetes: only when a cluster is the target

        return cls(Cluster.connect(kubeconfig=kubeconfig, context=context))

    @property
    def requests(self) -> int:
        return self.cluster.requests

    def get(self, namespace: str | None, name: str) -> dict | None:
        return self.cluster.get("Secret", namespace or c.DEFAULT_NAMESPACE, name)

    def managed(self, namespace: str | None = None) -> Iterator[dict]:
        return self.cluster.list("Secret", namespace, label_selector=MANAGED_SELECTOR)

    def write(self, secret: dict, *, force: bool = False, dry_run: bool = False) -> WriteResult:
        res = self.cluster.upsert_secret(secret, force=force, dry_run=dry_run)
        return WriteResult(res.action, res.object, res.previous)

    def close(self) -> None:
        self.cluster.close()


# ---------------------------------------------------------------------------------------------
# A folder of manifests
# ---------------------------------------------------------------------------------------------

@dataclass
class _Found:
    path: Path
    text: str  # the whole file as read: the write is refused if it changed since
    doc_index: int  # which document of the file
    item_index: int | None  # inside a ``kind: List`` document
    secret: dict


def _same_secret(obj: dict, namespace: str | None, name: str) -> bool:
    if obj.get("kind") != "Secret" or str(obj.get("apiVersion") or "v1") != "v1":
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
        # Parsed files by path, with the (inode, mtime, size) they were parsed at.
        self._parsed: dict[Path, tuple[tuple[int, int, int], str, list]] = {}

    def _files(self) -> list[Path]:
        return sorted(f for f in self.folder.iterdir()
                      if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in MANIFEST_SUFFIXES)

    def _read(self, path: Path) -> tuple[str, list]:
        """The file's text and documents, parsed once per version of the file: a sweep over many
        credentials reads each file many times (callers copy before changing anything)."""
        try:
            st = path.stat()
        except OSError as e:
            raise UsageError(f"cannot read {path}: {e.strerror}") from None
        signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._parsed.get(path)
        if cached is not None and cached[0] == signature:
            return cached[1], cached[2]
        try:
            text = _read_text(path)
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read {path}: {e}") from None
        try:
            docs = [json.loads(text)] if path.suffix.lower() == ".json" else list(yaml.load_all(text, Loader=_LOADER))
        except (ValueError, yaml.YAMLError) as e:
            raise UsageError(f"{path}: not valid YAML/JSON: {' '.join(str(e).split())}") from None
        self._parsed[path] = (signature, text, docs)
        return text, docs

    def _scan(self) -> Iterator[_Found]:
        for path in self._files():
            text, docs = self._read(path)
            for i, doc in enumerate(docs):
                if not isinstance(doc, dict):
                    continue
                if str(doc.get("kind") or "").endswith("List") and isinstance(doc.get("items"), list):
                    for j, item in enumerate(doc["items"]):
                        if isinstance(item, dict) and item.get("kind") == "Secret":
                            yield _Found(path, text, i, j, item)
                elif doc.get("kind") == "Secret":
                    yield _Found(path, text, i, None, doc)

    def _find(self, namespace: str | None, name: str) -> _Found | None:
        found = [f for f in self._scan() if _same_secret(f.secret, namespace, name)]
        if len(found) > 1:
            # With a namespace, the one copy that names it wins over namespace-less copies.
            exact = [f for f in found if namespace and _meta(f.secret).get("namespace") == namespace]
            if len(exact) == 1:
                return exact[0]
            where = ", ".join(f"{f.path.name}#{f.doc_index + 1}" for f in found)
            raise UsageError(f"Secret {name} appears {len(found)} times in {self.folder} ({where}); "
                             f"give its namespace (-n) or remove the copies")
        return found[0] if found else None

    @staticmethod
    def _key(f: _Found) -> tuple[str, str | None, str | None]:
        return str(f.path), _meta(f.secret).get("namespace"), _meta(f.secret).get("name")

    def get(self, namespace: str | None, name: str) -> dict | None:
        f = self._find(namespace, name)
        if f is None:
            return None
        # Remembered like a resourceVersion: a later write refuses if the Secret changed since.
        self._seen[self._key(f)] = copy.deepcopy(f.secret)
        return copy.deepcopy(f.secret)

    def managed(self, namespace: str | None = None) -> Iterator[dict]:
        for f in self._scan():
            ns = _meta(f.secret).get("namespace")
            if is_managed(f.secret) and (namespace is None or not ns or ns == namespace):
                self._seen[self._key(f)] = copy.deepcopy(f.secret)
                yield copy.deepcopy(f.secret)

    def write(self, secret: dict, *, force: bool = False, dry_run: bool = False) -> WriteResult:
        from kimpki.kube import objects  # pure dict helpers; no kubernetes import

        desired = objects.normalize_secret(secret)
        m = desired["metadata"]
        ns, name = m["namespace"], m["name"]
        with self._lock:
            found = self._find(ns, name)
            if found is None:
                path = self.folder / f"{name}.yaml"
                if path.exists():
                    raise OperationError(f"{path} exists but holds no Secret {name}; refusing to overwrite it")
                if not dry_run:
                    write_atomic(path, _dump_yaml(desired).encode("utf-8"), PRIVATE_FILE)
                return WriteResult("created", desired, None)
            current = found.secret
            seen = self._seen.get(self._key(found))
            if seen is not None and seen != current:
                raise OperationError(f"Secret {name} in {found.path} changed since kimpki read it; "
                                     f"nothing written, run again")
            if not force and not is_managed(current):
                raise OperationError(f"Secret {name} in {found.path} is not managed by kimpki (no label "
                                     f"{c.MANAGED_BY_LABEL}={c.MANAGED_BY_VALUE}): give --force to update it")
            # Keep the file's own form of the namespace (kubectl's dry-run output has none).
            if not _meta(current).get("namespace"):
                desired["metadata"].pop("namespace", None)
            new = objects.merge_secret(current, desired)
            if objects.secret_unchanged(current, new):
                return WriteResult("unchanged", current, current)
            if not dry_run:
                self._rewrite(found, new)
                self._seen[self._key(found)] = copy.deepcopy(new)
            return WriteResult("updated", new, current)

    def _rewrite(self, found: _Found, new: dict) -> None:
        """Replace one document of ``found.path`` (the rest of the file stays byte-identical)."""
        try:
            now_text = _read_text(found.path)
        except (OSError, UnicodeDecodeError) as e:
            raise OperationError(f"cannot read {found.path}: {e}") from None
        if now_text != found.text:
            raise OperationError(f"{found.path} changed while kimpki was updating Secret "
                                 f"{_meta(new).get('name')}; nothing written, run again")
        if found.path.suffix.lower() == ".json":
            doc = json.loads(found.text)
            if found.item_index is not None:
                doc["items"][found.item_index] = new
            else:
                doc = new
            text = json.dumps(doc, indent=2) + "\n"
        else:
            text = _replace_document(found, new)
        mode = found.path.stat().st_mode & 0o777
        write_atomic(found.path, text.encode("utf-8"), mode)


def _read_text(path: Path) -> str:
    # newline="": keep CRLF as it is, so that the documents not rewritten stay byte-identical.
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def _dump_yaml(obj: dict) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, width=1 << 16)


def _document_span(text: str, index: int) -> tuple[int, int]:
    """Where document ``index`` of ``text`` starts and where its last value ends. (The parser's
    own end of a block mapping runs on over the comments and blank lines after it, which belong
    to whatever follows; aliases share their anchor's node, so events are used, not nodes.)"""
    doc, start, end, flow = -1, None, None, []
    for ev in yaml.parse(text):
        if isinstance(ev, yaml.DocumentStartEvent):
            doc, start, end, flow = doc + 1, None, None, []
        elif doc != index:
            continue
        elif isinstance(ev, (yaml.ScalarEvent, yaml.AliasEvent)):
            start = ev.start_mark.index if start is None else start
            end = ev.end_mark.index
        elif isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            start = ev.start_mark.index if start is None else start
            flow.append(ev.flow_style)
        elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            if flow.pop():  # a flow collection ends at its closing bracket
                end = ev.end_mark.index
        elif isinstance(ev, yaml.DocumentEndEvent):
            return start, end
    raise OperationError(f"document {index + 1} is gone from the file")  # the text was parsed before


def _replace_document(found: _Found, new: dict) -> str:
    text = found.text
    start, end = _document_span(text, found.doc_index)
    # A block scalar's span takes the blank lines after it: those stay. The rest of the last line
    # goes with the document if it is only a comment ("key: value  # note").
    end = start + len(text[start:end].rstrip())
    eol = text.find("\n", end)
    eol = len(text) if eol < 0 else eol + 1
    rest = text[end:eol].strip()
    if not rest or rest.startswith("#"):
        end = eol
    if found.item_index is not None:
        doc = yaml.safe_load(text[start:end])
        doc["items"][found.item_index] = new
        body = _dump_yaml(doc)
    else:
        body = _dump_yaml(new)
    if "\r\n" in text:
        body = body.replace("\n", "\r\n")
    return text[:start] + body + text[end:]


def open_place(*, manifests: str | Path | None = None, kubeconfig: str | None = None,
               context: str | None = None) -> SecretPlace:
    """The place a command targets: ``--manifests DIR`` when given, else the cluster."""
    if manifests is not None:
        return ManifestsPlace(manifests)
    return ClusterPlace.connect(kubeconfig=kubeconfig, context=context)
