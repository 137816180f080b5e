"""Policy files as YAML nodes that remember where they came from (``FILE:LINE``).

:func:`kimpki.safe_yaml.compose_all` (the one bounded YAML reader) gives a node tree whose every
node carries a ``start_mark``; this module wraps it in :class:`Fields`, a reader for one mapping
that hands out typed values, reports every problem as a :class:`PolicyError` at the line of the
offending key or value, and refuses keys nobody asked for (a typo must not pass silently),
duplicate keys included.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

from kimpki import safe_yaml
from kimpki.errors import KimpkiError, UsageError

POLICY_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Where:
    file: str
    line: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


class PolicyError(UsageError):
    """A problem in a policy file, as one line ``FILE:LINE: message`` (exit 2)."""

    def __init__(self, where: Where, message: str):
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


def where_of(file: str, node: yaml.Node) -> Where:
    return Where(file, node.start_mark.line + 1)


@dataclass(frozen=True)
class Document:
    file: str
    path: Path  # the file, for resolving relative paths
    node: yaml.Node

    @property
    def where(self) -> Where:
        return where_of(self.file, self.node)


def policy_files(paths: Iterable[str | Path]) -> list[tuple[str, Path]]:
    """``(shown name, path)`` of every policy file: files as given, a folder's *.yaml and *.yml
    (sorted, not recursive, hidden files skipped)."""
    out: list[tuple[str, Path]] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = sorted(f for f in path.iterdir()
                           if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in POLICY_SUFFIXES)
            if not found:
                raise UsageError(f"no policy files (*.yaml, *.yml) in {p}")
            out.extend((str(path / f.name), f) for f in found)
        elif path.is_file():
            out.append((str(path), path))
        else:
            raise UsageError(f"no such policy file or folder: {p}")
    return out


def read_documents(paths: Iterable[str | Path]) -> list[Document]:
    """Every non-empty YAML document in ``paths``, as nodes. Malformed YAML is a PolicyError."""
    docs: list[Document] = []
    seen: set[Path] = set()
    for shown, path in policy_files(paths):
        real = path.resolve()
        if real in seen:  # the same file named twice (-f dir -f dir/file.yaml): read it once
            continue
        seen.add(real)
        try:
            nodes = safe_yaml.compose_all(safe_yaml.read_text(path, shown), shown)
        except safe_yaml.InputError as e:
            if e.line is None:  # the whole file (too large): no line to point at
                raise
            raise PolicyError(Where(shown, e.line), e.message) from None
        docs.extend(Document(shown, real, n) for n in nodes if n is not None)
    return docs


_constructor = SafeConstructor()

_TYPE_NAMES = {str: "a string", bool: "true or false", int: "an integer", list: "a list", dict: "a mapping"}


# What YAML made of a scalar, in words. A date and a timestamp are YAML's own (2024-01-01);
# binary data is ``!!binary``. Any other tag (``!foo``) leaves the text: a string.
_KIND_WORDS = {bool: "a boolean", int: "an integer", float: "a number", type(None): "null",
               datetime.date: "a date", datetime.datetime: "a timestamp", bytes: "binary data"}


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    value = scalar_value(node)
    kind = _KIND_WORDS.get(type(value), "a string")
    if value is None:
        return kind
    text = " ".join(node.value.split())  # a block scalar or !!binary spans lines; a message does not
    return f"{kind} ({text if len(text) <= 60 else text[:57] + '...'})"


_STR_TAG = "tag:yaml.org,2002:str"


def scalar_value(node: yaml.ScalarNode) -> Any:
    if node.tag == _STR_TAG and isinstance(node, yaml.ScalarNode):
        # What the safe constructor makes of a string scalar is its text; most scalars of a
        # policy are strings, and the constructor's bookkeeping costs more than the rest of
        # reading one (it also remembers every node it has built, here for the whole run).
        return node.value
    try:
        return _constructor.construct_object(node, deep=True)
    except (ConstructorError, ValueError, OverflowError):  # e.g. 2024-13-45: its text, as in manifests
        return node.value


class Fields:
    """Typed access to one YAML mapping; every problem is a PolicyError at the right line.

    ``path`` names the mapping in messages (``spec``, ``spec.constraints``). Call :meth:`allow`
    first: any other key is reported as unknown.
    """

    def __init__(self, file: str, node: yaml.Node, path: str, what: str):
        self.file = file
        self.node = node
        self.path = path
        self.what = what  # "Certificate kim.example.com": prefixes every message
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{path or 'the document'} must be a mapping, not {_describe(node)}")
        self.items: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = scalar_value(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                raise self.error(key_node, f"{self._name('')}keys must be strings")
            if key in self.items:
                first = where_of(file, self.items[key][0])
                raise self.error(key_node, f"duplicate field {self._name(key)} (first given at line {first.line})")
            self.items[key] = (key_node, value_node)

    # -- messages ---------------------------------------------------------------------------
    def _name(self, key: str) -> str:
        full = f"{self.path}.{key}" if self.path and key else (key or self.path)
        return full

    def error(self, node: yaml.Node, message: str) -> PolicyError:
        prefix = f"{self.what}: " if self.what else ""
        return PolicyError(where_of(self.file, node), prefix + message)

    def where(self, key: str | None = None) -> Where:
        if key is not None and key in self.items:
            return where_of(self.file, self.items[key][0])
        return where_of(self.file, self.node)

    def has(self, key: str) -> bool:
        return key in self.items

    # -- typed values -----------------------------------------------------------------------
    def node_of(self, key: str) -> yaml.Node | None:
        pair = self.items.get(key)
        return pair[1] if pair else None

    def _missing(self, key: str) -> PolicyError:
        return self.error(self.node, f"{self._name(key)} is required")

    def raw(self, key: str, required: bool = False) -> Any:
        node = self.node_of(key)
        if node is None:
            if required:
                raise self._missing(key)
            return None
        return node

    def value(self, key: str, typ: type, *, required: bool = False, default: Any = None) -> Any:
        node = self.node_of(key)
        if node is None:
            if required:
                raise self._missing(key)
            return default
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, f"{self._name(key)} must be {_TYPE_NAMES[typ]}, not {_describe(node)}")
        v = scalar_value(node)
        ok = isinstance(v, typ) and not (typ is int and isinstance(v, bool))
        if not ok:
            raise self.error(node, f"{self._name(key)} must be {_TYPE_NAMES[typ]}, not {_describe(node)}")
        if typ is str and v == "":
            raise self.error(node, f"{self._name(key)} must not be empty")
        return v

    def string(self, key: str, *, required: bool = False, default: str | None = None) -> str | None:
        return self.value(key, str, required=required, default=default)

    def boolean(self, key: str, default: bool) -> bool:
        return self.value(key, bool, default=default)

    def text_or_number(self, key: str, *, default: str | None = None) -> tuple[str | None, yaml.Node | None]:
        """A scalar given as a string or a bare number (durations: ``90d`` or ``90``)."""
        node = self.node_of(key)
        if node is None:
            return default, None
        if not isinstance(node, yaml.ScalarNode) or isinstance(scalar_value(node), (bool, type(None))):
            raise self.error(node, f"{self._name(key)} must be a duration such as 90d, not {_describe(node)}")
        return str(node.value), node

    def scalar_text(self, key: str, expected: str, *, required: bool = False) -> tuple[str | None, yaml.Node | None]:
        """A scalar as written, whatever YAML would make of it (unquoted ``02:00`` is the base-60
        integer 120 to YAML 1.1). ``expected`` ("a time of day such as 02:00") for the message."""
        node = self.raw(key, required=required)
        if node is None:
            return None, None
        if not isinstance(node, yaml.ScalarNode) or isinstance(scalar_value(node), (bool, type(None))):
            raise self.error(node, f"{self._name(key)} must be {expected}, not {_describe(node)}")
        return str(node.value), node

    def strings(self, key: str, *, required: bool = False, non_empty: bool = False) -> list[tuple[str, yaml.Node]]:
        """A list of strings, each with its node (for per-item line numbers)."""
        node = self.node_of(key)
        if node is None:
            if required:
                raise self._missing(key)
            return []
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, f"{self._name(key)} must be a list, not {_describe(node)}")
        out = []
        for i, item in enumerate(node.value):
            v = scalar_value(item) if isinstance(item, yaml.ScalarNode) else None
            if not isinstance(v, str) or v == "":
                raise self.error(item, f"{self._name(key)}[{i}] must be a non-empty string, not {_describe(item)}")
            out.append((v, item))
        if non_empty and not out:
            raise self.error(node, f"{self._name(key)} must not be empty")
        return out

    def mapping(self, key: str, what: str | None = None, *, required: bool = False) -> "Fields | None":
        node = self.node_of(key)
        if node is None:
            if required:
                raise self._missing(key)
            return None
        return Fields(self.file, node, self._name(key), self.what if what is None else what)

    def mappings(self, key: str, *, required: bool = False) -> list["Fields"]:
        node = self.node_of(key)
        if node is None:
            if required:
                raise self._missing(key)
            return []
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, f"{self._name(key)} must be a list, not {_describe(node)}")
        if not node.value:
            raise self.error(node, f"{self._name(key)} must not be empty")
        return [Fields(self.file, item, f"{self._name(key)}[{i}]", self.what) for i, item in enumerate(node.value)]

    def string_map(self, key: str) -> dict[str, str] | None:
        sub = self.mapping(key)
        if sub is None:
            return None
        out = {}
        for k in list(sub.items):
            out[k] = sub.string(k, required=True)
        return out

    def check(self, key: str, node: yaml.Node | None, fn: Callable[[], Any]) -> Any:
        """Run ``fn``; a KimpkiError it raises becomes a PolicyError at ``node`` (or the key)."""
        try:
            return fn()
        except PolicyError:
            raise  # already placed
        except KimpkiError as e:
            at = node if node is not None else (self.items[key][0] if key in self.items else self.node)
            raise self.error(at, f"{self._name(key)}: {e}") from None

    def allow(self, *known: str) -> "Fields":
        """Refuse keys not in ``known`` (checked first, so a typo is named rather than reported
        as the field it was meant to be going missing)."""
        for key, (key_node, _) in self.items.items():
            if key not in known:
                raise self.error(key_node, f"unknown field {self._name(key)} (valid: {', '.join(known)})")
        return self
