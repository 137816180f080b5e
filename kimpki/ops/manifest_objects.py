"""Gateways, VirtualServices and Deployments in a folder of manifests, written in place.

The folder counterpart of ``Cluster.apply`` for the objects ``kimpki apply`` writes next to the
credential Secrets (those go through :class:`kimpki.ops.places.ManifestsPlace`): an object is
found by kind, name and namespace in any YAML/JSON file of the folder (not recursive), and only
its document is rewritten, atomically, and only when its content differs; other documents and
comments stay byte-identical. A new object is appended to a file named by the caller.
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

from kimpki import safe_yaml
from kimpki.errors import OperationError, UsageError
from kimpki.store.fs import PRIVATE_FILE, PUBLIC_FILE, write_output

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def file_mode(path: Path, private: bool) -> tuple[int, bool]:
    """The mode to write ``path`` with: 0600 when it will hold a private key, whoever made it
    and however (``... -o yaml > deploy/x.yaml`` under umask 022 makes it 0644), else the
    file's own mode (0644 for a new file). Second: True when that tightens the file."""
    try:
        st = path.lstat()
        old = stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else None  # a link is replaced
    except FileNotFoundError:
        old = None
    if private:
        return PRIVATE_FILE, old is not None and bool(old & 0o077)
    return (old if old is not None else PUBLIC_FILE), False


def dump_yaml(obj: dict) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, width=1 << 16)


@dataclass
class Found:
    path: Path
    text: str  # the file as read; a rewrite is refused if it changed since
    doc_index: int
    item_index: int | None  # inside a ``kind: List`` document
    object: dict


def _meta(obj: dict) -> dict:
    m = obj.get("metadata")
    return m if isinstance(m, dict) else {}


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0] if "/" in api_version else ""


def _same(obj: dict, kind: str, group: str, namespace: str | None, name: str) -> bool:
    if obj.get("kind") != kind or _group(str(obj.get("apiVersion") or "")) != group:
        return False
    m = _meta(obj)
    # An object without a namespace (kubectl --dry-run=client output) matches any.
    return m.get("name") == name and (not m.get("namespace") or namespace is None or m.get("namespace") == namespace)


class ManifestFolder:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        # Parsed files by path, with the (inode, mtime, size) they were parsed at.
        self._parsed: dict[Path, tuple[tuple[int, int, int], str, list]] = {}

    def files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(f for f in self.folder.iterdir()
                      if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in MANIFEST_SUFFIXES)

    def read(self, path: Path) -> tuple[str, list]:
        """The file's text and documents, parsed once per version of the file (inode, mtime,
        size): a sweep over many objects reads each file many times. Callers copy before changing."""
        try:
            st = path.stat()
        except OSError as e:
            raise UsageError(f"cannot read {path}: {e.strerror}") from None
        signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._parsed.get(path)
        if cached is not None and cached[0] == signature:
            return cached[1], cached[2]
        from kimpki.localgw.manifests import check_shapes

        text = read_text(path)
        if path.suffix.lower() == ".json":
            docs = [safe_yaml.load_json(text, str(path))]
        else:
            docs = safe_yaml.load_all(text, str(path))
        check_shapes(docs, str(path), text)  # as 'check' and 'gateway serve' read the folder
        self._parsed[path] = (signature, text, docs)
        return text, docs

    def scan(self, paths: list[Path] | None = None) -> Iterator[Found]:
        """Every object in the folder (or in ``paths`` of it), ``kind: List`` items one by one,
        file by file."""
        for path in self.files() if paths is None else paths:
            text, docs = self.read(path)
            for i, doc in enumerate(docs):
                if not isinstance(doc, dict):
                    continue
                if str(doc.get("kind") or "").endswith("List") and isinstance(doc.get("items"), list):
                    for j, item in enumerate(doc["items"]):
                        if isinstance(item, dict):
                            yield Found(path, text, i, j, item)
                else:
                    yield Found(path, text, i, None, doc)

    def find(self, kind: str, api_version: str, namespace: str | None, name: str) -> Found | None:
        group = _group(api_version)
        found = [f for f in self.scan() if _same(f.object, kind, group, namespace, name)]
        if len(found) > 1:
            where = ", ".join(f"{f.path.name}#{f.doc_index + 1}" for f in found)
            raise OperationError(f"{kind} {name} appears {len(found)} times in {self.folder} ({where}); "
                                 "keep one")
        return found[0] if found else None

    def upsert(self, obj: dict, *, file_name: str, dry_run: bool = False) -> tuple[str, dict | None]:
        """Write ``obj`` in place of the folder's copy, or add it to ``file_name``.
        Returns ("created" | "updated" | "unchanged", the previous object)."""
        m = _meta(obj)
        found = self.find(obj["kind"], obj["apiVersion"], m.get("namespace"), m["name"])
        if found is None:
            if not dry_run:
                self.append(file_name, obj)
            return "created", None
        current = found.object
        desired = obj
        if not _meta(current).get("namespace") and m.get("namespace"):
            # Keep the file's own form (no namespace) rather than rewrite it for that alone.
            desired = {**obj, "metadata": {k: v for k, v in m.items() if k != "namespace"}}
        if current == desired:
            return "unchanged", current
        if not dry_run:
            self.rewrite(found, desired)
        return "updated", current

    def append(self, file_name: str, obj: dict, *, private: bool = False) -> bool:
        """Add ``obj`` as a new document of ``file_name`` (created if missing). ``private``: it
        holds a private key, the file becomes 0600. Returns True when that tightened the file."""
        path = self.folder / file_name
        if path.suffix.lower() == ".json":
            raise UsageError(f"cannot add a document to the JSON file {path}")
        if path.exists():
            text = path.read_text(encoding="utf-8")
            sep = "" if not text or text.endswith("\n") else "\n"
            new = text + sep + "---\n" + dump_yaml(obj)
        else:
            new = dump_yaml(obj)
        mode, tightened = file_mode(path, private)
        write_output(path, new.encode("utf-8"), mode)
        return tightened

    def rewrite(self, found: Found, new: dict, *, private: bool = False) -> bool:
        """Replace one document of ``found.path``, atomically; the rest of the file stays
        byte-identical. Refused when the file changed since it was read. ``private``: the file
        holds a private key and becomes 0600; returns True when that tightened it."""
        now_text = read_text(found.path)
        if now_text != found.text:
            raise OperationError(f"{found.path} changed while kimpki was updating {new.get('kind')} "
                                 f"{_meta(new).get('name')}; nothing written, run again")
        if found.path.suffix.lower() == ".json":
            doc = safe_yaml.load_json(found.text, str(found.path))
            if found.item_index is not None:
                doc["items"][found.item_index] = new
            else:
                doc = new
            text = json.dumps(doc, indent=2) + "\n"
        else:
            text = replace_document(found, new)
        mode, tightened = file_mode(found.path, private)
        write_output(found.path, text.encode("utf-8"), mode)
        return tightened

    def write_file(self, file_name: str, text: str, *, dry_run: bool = False) -> tuple[str, str | None]:
        """Make ``file_name`` hold exactly ``text``: ("created" | "updated" | "unchanged", old text)."""
        path = self.folder / file_name
        old = path.read_text(encoding="utf-8") if path.exists() else None
        if old == text:
            return "unchanged", old
        if not dry_run:
            write_output(path, text.encode("utf-8"), file_mode(path, False)[0])
        return ("created" if old is None else "updated"), old


def read_text(path: Path) -> str:
    # newline="": keep CRLF as it is, so that the documents not rewritten stay byte-identical.
    return safe_yaml.read_text(path, newline="")


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


def replace_document(found: Found, new: dict) -> str:
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
        doc = safe_yaml.load(text[start:end], str(found.path))
        doc["items"][found.item_index] = new
        body = dump_yaml(doc)
    else:
        body = dump_yaml(new)
    if "\r\n" in text:
        body = body.replace("\n", "\r\n")
    return text[:start] + body + text[end:]
