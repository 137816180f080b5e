"""The one way kimpki reads YAML (and JSON) input: bounded, safe, errors as ``FILE:LINE: message``.

Every reader of manifests, policies and kubeconfigs goes through here, so that a hostile or
broken file costs at most a bounded amount of time and memory everywhere (other input files are
read the same bounded way by :mod:`kimpki.input_files`):

* a file is at most :data:`MAX_FILE_BYTES` (read with a bounded ``read``, never whole first);
* nesting is at most :data:`MAX_DEPTH` levels (the pure-Python loader would recurse until
  ``RecursionError``; libyaml stops at 1000 levels, deeper than any manifest needs);
* aliases may add at most :data:`MAX_ALIAS_EXPANSION` nodes and characters to what is written.
  An "alias bomb" (nested anchors, each alias repeating the previous level) is a few hundred
  bytes whose documents expand exponentially when something walks them (a ``kind: List``
  flattener, a deep compare, a dump); it is refused before any object is built. Ordinary
  anchors (a CA bundle written once and used in a few Secrets) stay within the bound.

Each document is composed (an alias is a second reference to its anchor's node: composing
costs no more than the text), measured by one walk over its distinct nodes, and only then
constructed with PyYAML's safe constructor (libyaml's ``CSafeLoader`` when PyYAML has it:
Secrets are long base64 lines, slow for the pure-Python scanner). Problems are
:class:`InputError` (a :class:`~kimpki.errors.UsageError`, exit 2).
"""

from __future__ import annotations

import contextlib
import gc
import json
from pathlib import Path
from typing import IO, Any

import yaml

from kimpki.errors import UsageError
from kimpki.input_files import MAX_FILE_BYTES, read_at_most


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """The safe loader (libyaml's parser when present), except that a scalar that looks like an
    integer, a number or a date but cannot be one (``2024-13-45``; an integer of 5,000 digits,
    past Python's int() limit) is its text, as Kubernetes' YAML reader (go-yaml) takes it, rather
    than a ValueError deep inside the constructor."""


def _or_text(construct):
    def construct_or_text(loader, node):
        try:
            return construct(loader, node)
        except (ValueError, OverflowError):
            return loader.construct_scalar(node)
    return construct_or_text


for _tag, _construct in (("int", yaml.SafeLoader.construct_yaml_int), ("float", yaml.SafeLoader.construct_yaml_float),
                         ("timestamp", yaml.SafeLoader.construct_yaml_timestamp)):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _or_text(_construct))

LOADER = _Loader

MAX_DEPTH = 200  # Kubernetes objects nest ~20 levels; CRD schemas perhaps 60
MAX_ALIAS_EXPANSION = 4 * 1024 * 1024  # nodes + scalar characters that aliases may add


class InputError(UsageError):
    """A file kimpki cannot read as YAML/JSON, as one line ``FILE:LINE: message`` (exit 2)."""

    def __init__(self, file: str, line: int | None, message: str):
        super().__init__(f"{file}:{line}: {message}" if line else f"{file}: {message}")
        self.file = file
        self.line = line
        self.message = message


# ---------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------

def read_text(path: str | Path, shown: str | None = None, *, newline: str | None = None) -> str:
    """A UTF-8 file of at most :data:`MAX_FILE_BYTES`; ``newline=""`` keeps CRLF as it is."""
    shown = str(path) if shown is None else shown
    return _decode(read_at_most(path, shown, MAX_FILE_BYTES), shown, newline)


def read_stream(stream: IO, shown: str = "<stdin>") -> str:
    """Like :func:`read_text`, from an open (binary or text) stream such as stdin."""
    raw = getattr(stream, "buffer", stream)
    try:
        data = raw.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise UsageError(f"cannot read {shown}: {e.strerror or e}") from None
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    return _decode(data, shown, None)


def _decode(data: bytes, shown: str, newline: str | None) -> str:
    if len(data) > MAX_FILE_BYTES:
        raise InputError(shown, None, f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB; refused")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise InputError(shown, line, "not UTF-8 text") from None
    if newline is None:  # what text-mode reading does: universal newlines
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def load_all(text: str, source: str) -> list[Any]:
    """Every document of ``text`` as Python values (safe constructor), each composed and measured
    (:func:`_measure`) before anything is constructed from it."""
    with collector_paused():
        return [_loaded(loader, loader.construct_document, source, text) for loader in _documents(text, source)]


def load(text: str, source: str) -> Any:
    """The single document of ``text`` (``None`` when empty)."""
    docs = load_all(text, source)
    if len(docs) > 1:
        raise InputError(source, None, "holds more than one YAML document")
    return docs[0] if docs else None


def compose_all(text: str, source: str) -> list[yaml.Node]:
    """Every document of ``text`` as nodes that keep their line (``start_mark``), each measured."""
    with collector_paused():
        return [_loaded(loader, lambda node: node, source, text) for loader in _documents(text, source)]


def load_file(path: str | Path, shown: str | None = None) -> list[Any]:
    """:func:`read_text` then :func:`load_all`."""
    shown = str(path) if shown is None else shown
    return load_all(read_text(path, shown), shown)


class _LongNumber(Exception):
    def __init__(self, digits: str):
        self.digits = digits


def _json_int(digits: str) -> int:
    """int(), refusing what Python's int() limit refuses (thousands of digits) with its line."""
    try:
        return int(digits)
    except ValueError:
        raise _LongNumber(digits) from None


def load_json(text: str, source: str) -> Any:
    """A JSON document, with the same bounds (depth; no aliases in JSON) and error shape."""
    try:
        doc = json.loads(text, parse_int=_json_int)
    except json.JSONDecodeError as e:
        raise InputError(source, e.lineno, f"not valid JSON: {e.msg}") from None
    except _LongNumber as e:
        line = text.count("\n", 0, max(text.find(e.digits), 0)) + 1
        raise InputError(source, line, f"a number of {len(e.digits):,} digits; refused") from None
    except RecursionError:
        raise InputError(source, None, "JSON nested too deeply; refused") from None
    depth = _json_depth(doc)
    if depth > MAX_DEPTH:
        raise InputError(source, None, f"nested deeper than {MAX_DEPTH} levels; refused")
    return doc


def _json_depth(doc: Any) -> int:
    deepest, todo = 0, [(doc, 1)]
    while todo:
        value, depth = todo.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, depth)
            todo.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


@contextlib.contextmanager
def collector_paused():
    """Python's cyclic garbage collector off while a file is composed (and constructed), back on
    after, as it was. Composing builds tens of thousands of small objects that stay alive (a
    node, its marks, its lists) and form no cycle, so every collection meanwhile would walk the
    growing tree again for nothing: a fifth of the time of reading a 1,000-document policy.
    Reference counting still frees whatever is dropped; the input's size is bounded anyway
    (:data:`MAX_FILE_BYTES`); a cycle (a recursive alias, refused) is collected afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _documents(text: str, source: str):
    """One loader per call, positioned at each document in turn; the caller composes (and
    measures) or constructs the document it is at."""
    loader = LOADER(text)
    try:
        while _guard(source, text, loader.check_node):
            yield loader
    finally:
        loader.dispose()


def _loaded(loader, build, source: str, text: str):
    def checked_node():
        node = loader.get_node()
        if node is not None:
            _measure(node, source)
        return build(node)

    return _guard(source, text, checked_node)


def _guard(source: str, text: str, fn):
    try:
        return fn()
    except yaml.YAMLError as e:
        raise _syntax_error(source, text, e) from None
    except RecursionError:  # cannot happen within MAX_DEPTH; kept as the last line of defence
        raise InputError(source, None, "nested too deeply; refused") from None


def _syntax_error(source: str, text: str, e: yaml.YAMLError) -> InputError:
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        problem = " ".join(str(e.problem or e.context or "").split())
        # The end of the input is reported one line past the last one.
        line = min(mark.line + 1, max(1, len(text.splitlines()))) if mark else None
        return InputError(source, line, f"not valid YAML: {problem}")
    return InputError(source, None, f"not valid YAML: {' '.join(str(e).split())}")


def check(text: str, source: str) -> None:
    """Refuse ``text`` as :func:`load_all` would (syntax, depth, alias expansion), building nothing."""
    compose_all(text, source)


def _measure(root: yaml.Node, source: str) -> None:
    """Refuse a document that nests deeper than :data:`MAX_DEPTH` or whose aliases add more than
    :data:`MAX_ALIAS_EXPANSION` nodes and scalar characters to what is written.

    Most documents have no alias: one quick walk, a level of the tree at a time, checks the depth
    and that no node is reached twice (a list per level costs less per node than a stack of
    (node, depth) pairs, and a policy of 1,000 documents walks every node); only a document with
    aliases gets the full account of :func:`_measure_aliases`.
    """
    seen: set[int] = set()
    reached = 0
    level = [root]
    depth = 0
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            raise InputError(source, level[0].start_mark.line + 1, f"nested deeper than {MAX_DEPTH} levels; refused")
        reached += len(level)
        seen.update(map(id, level))
        if len(seen) != reached:  # a node reached twice: an alias
            return _measure_aliases(root, source)
        below: list[yaml.Node] = []
        for node in level:
            if isinstance(node, yaml.MappingNode):
                for pair in node.value:
                    below += pair
            elif isinstance(node, yaml.SequenceNode):
                below += node.value
        level = below


def _measure_aliases(root: yaml.Node, source: str) -> None:
    """:func:`_measure` for a document with aliases. The composed document shares one node per
    anchor; this walk (iterative: no recursion whatever the input) visits each node once and
    computes what it expands to. A recursive alias (a node inside itself) is refused too."""
    expanded: dict[int, tuple[int, int]] = {}  # id(node) → (size, depth) once done
    written = 0
    on_path: set[int] = set()
    todo: list[tuple[yaml.Node, bool]] = [(root, False)]
    while todo:
        node, children_done = todo.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            kids = _children(node)
            size = 1 + sum(expanded[id(k)][0] for k in kids)
            depth = 1 + max((expanded[id(k)][1] for k in kids), default=0)
            expanded[key] = (size, depth)
            if depth > MAX_DEPTH:
                raise InputError(source, node.start_mark.line + 1, f"nested deeper than {MAX_DEPTH} levels; refused")
            continue
        if key in expanded:
            continue
        if key in on_path:
            raise InputError(source, node.start_mark.line + 1, "a recursive YAML alias (a node inside itself); refused")
        if isinstance(node, yaml.ScalarNode):
            weight = 1 + len(node.value)
            expanded[key] = (weight, 0)
            written += weight
            continue
        written += 1
        if len(on_path) >= MAX_DEPTH:
            raise InputError(source, node.start_mark.line + 1, f"nested deeper than {MAX_DEPTH} levels; refused")
        on_path.add(key)
        todo.append((node, True))
        todo.extend((k, False) for k in _children(node) if id(k) not in expanded)
    if expanded[id(root)][0] - written > MAX_ALIAS_EXPANSION:
        line = _first_alias_line(root, expanded)
        raise InputError(source, line, f"YAML aliases expand to over {MAX_ALIAS_EXPANSION:,} nodes and characters "
                                       f"(an alias bomb?); refused")


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _first_alias_line(root: yaml.Node, expanded: dict[int, tuple[int, int]]) -> int:
    """The line of the first node (in document order) reached more than once: the first alias."""
    seen: set[int] = set()
    todo = [root]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            return node.start_mark.line + 1
        seen.add(id(node))
        todo.extend(reversed(_children(node)))
    return root.start_mark.line + 1


__all__ = ["InputError", "LOADER", "MAX_ALIAS_EXPANSION", "MAX_DEPTH", "MAX_FILE_BYTES", "check", "collector_paused",
           "compose_all", "load", "load_all", "load_file", "load_json", "read_stream", "read_text"]
