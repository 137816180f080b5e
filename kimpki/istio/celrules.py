"""The CEL rules of Istio's CRDs (``x-kubernetes-validations``), evaluated as kube-apiserver does.

A real API server checks every Gateway and VirtualService against its CRD's OpenAPI schema *and*
the CEL rules in it (apiextensions-apiserver ``pkg/apiserver/schema/cel/validation.go``); a
JSON-schema check alone lets e.g. ``credentialName`` + ``credentialNames`` through. This module
does what that file does, for the rules the shipped schemas carry:

* a rule sits at a place in the schema; ``self`` is the value found at that place (every item of
  an array, every value of a map), and a rule is not evaluated where the value is absent or null;
* a rule that mentions ``oldSelf`` (a transition rule) is evaluated only on update, with
  ``oldSelf`` the old object's value at the same place (through object properties; list items
  are not correlated, as for the atomic lists Istio uses);
* a false result is ``field.Invalid(path, <schema type>, message)``: ``spec.servers[0].tls:
  Invalid value: "object": only one of credentialName or credentialNames can be set``; a rule
  without a message reads ``failed rule: <rule>``; an evaluation error (``duration('10x')``)
  reads ``<error> evaluating rule: <message>``.

The CEL engine is ``common-expression-language`` (Rust ``cel`` bindings), imported on first use
only, so commands that do not validate do not pay for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterator

RULES_KEY = "x-kubernetes-validations"
_OLD_SELF = re.compile(r"\boldSelf\b")


@dataclass(frozen=True)
class RuleError:
    """One broken rule: ``field.Invalid(path, type, detail)``."""

    path: str
    type: str
    detail: str

    def __str__(self) -> str:
        return f'{self.path}: Invalid value: "{self.type}": {self.detail}'


def message(rule: dict) -> str:
    """``ruleMessageOrDefault``."""
    text = str(rule.get("message") or "").strip()
    return text or f"failed rule: {str(rule.get('rule') or '').strip()}"


@lru_cache(maxsize=1)
def engine():
    """The CEL engine, loaded on first use: the package's compiled extension (``cel.cel``) alone.

    ``import cel`` would also import the package's interactive command line (typer, rich,
    prompt_toolkit): ~250 ms of the ~260 ms it takes, on every validating command, for nothing
    kimpki uses (scripts/bench cel). Where the extension is not laid out as expected, the plain
    import is the fallback.
    """
    import importlib.machinery
    import importlib.util
    import sys
    from pathlib import Path

    loaded = sys.modules.get("cel.cel")
    if loaded is not None:  # its init registers a Rust logger, which panics the second time
        return loaded
    spec = importlib.util.find_spec("cel")  # finds the package without running its __init__
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = Path(folder) / f"cel{suffix}"
            if path.is_file():
                ext = importlib.util.spec_from_file_location("cel.cel", path)
                module = importlib.util.module_from_spec(ext)
                ext.loader.exec_module(module)
                sys.modules.setdefault("cel.cel", module)  # what ``import cel`` would import again
                return module
    try:
        import cel
    except ImportError:
        from kimpki.errors import OperationError

        raise OperationError("the CEL library that checks Istio's validation rules is not installed "
                             "(PyPI common-expression-language, a kimpki dependency): reinstall kimpki, or "
                             "skip validation with --no-validate") from None
    return cel


@lru_cache(maxsize=None)
def _program(expression: str):
    return engine().compile(expression)


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _walk(schema: dict, value: Any, old: Any, path: str) -> Iterator[tuple[dict, Any, Any, str]]:
    """``(schema node, value, old value, path)`` for every place that has a value."""
    if not isinstance(schema, dict) or value is None:
        return
    yield schema, value, old, path
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            node = props.get(key) if isinstance(props, dict) else None
            if node is None and isinstance(extra, dict):
                node = extra
            if node is not None:
                yield from _walk(node, sub, old.get(key) if isinstance(old, dict) else None, _child(path, key))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from _walk(schema["items"], item, None, f"{path}[{i}]")


# The engine's error for a string that is not a duration, in cel-go's words (what kubectl shows).
_CEL_GO_ERRORS = (("Function 'duration'", "type conversion error from 'string' to 'google.protobuf.Duration'"),)


def _error_text(e: Exception) -> str:
    text = " ".join(str(e).split())
    return next((go for ours, go in _CEL_GO_ERRORS if ours in text), text or type(e).__name__)


def check(schema: dict, obj: Any, old: Any = None) -> list[RuleError]:
    """Every rule of ``schema`` that ``obj`` breaks (``old``: the stored object, on update)."""
    errors: list[RuleError] = []
    for node, value, old_value, path in _walk(schema, obj, old, ""):
        for rule in node.get(RULES_KEY) or ():
            expression = str(rule.get("rule") or "")
            if not expression.strip():
                continue
            transition = bool(_OLD_SELF.search(expression))
            if transition and old_value is None:
                continue  # transition rules are evaluated only when there is an old value
            where = path + str(rule.get("fieldPath") or "") if rule.get("fieldPath") else path
            kind = str(node.get("type") or "")
            variables = {"self": value, **({"oldSelf": old_value} if transition else {})}
            try:  # a missing engine (OperationError) is kimpki's error, not the rule's
                program = _program(expression)
            except ValueError as e:  # a rule the engine cannot parse
                errors.append(RuleError(where, kind, f"{_error_text(e)} compiling rule: {message(rule)}"))
                continue
            try:
                ok = program.execute(variables)
            except Exception as e:  # the engine's evaluation errors have no common base class
                errors.append(RuleError(where, kind, f"{_error_text(e)} evaluating rule: {message(rule)}"))
                continue
            if ok is not True:
                errors.append(RuleError(where, kind, message(rule)))
    return errors
