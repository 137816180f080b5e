"""The CEL rules (``x-kubernetes-validations``) of the Istio CRDs, enforced as kube-apiserver does.

apiextensions-apiserver ``pkg/apiserver/schema/cel/validation.go``: every rule is evaluated with
``self`` bound to the value at the rule's place in the schema (each array item, each map value;
absent and null values are skipped); a rule mentioning ``oldSelf`` only on update. A false result
is ``field.Invalid(path, <schema type>, <message, else "failed rule: <rule>">)``; an evaluation
error is ``<cel-go error> evaluating rule: <message>``. All of them go into one 422 Invalid.

The rules are read from the schema file kimpki ships (as for field pruning, :mod:`fields`);
this walker is the stand-in's own, so a bug in kimpki's copy does not hide here. The engine is
the Rust CEL bindings (``common-expression-language``); its error text for a string that is not
a duration is replaced by cel-go's, which is what a real server says.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from .errors import FieldError
from .fields import SCHEMA_FILE

# cel-go (common/types/string.go ConvertToType): a string that time.ParseDuration refuses.
CEL_GO_DURATION_ERROR = "type conversion error from 'string' to 'google.protobuf.Duration'"


@lru_cache(maxsize=None)
def _schemas() -> dict:
    return json.loads(SCHEMA_FILE.read_text())["kinds"]


@lru_cache(maxsize=None)
def _program(rule: str):
    import cel

    return cel.compile(rule)


def _message(rule: dict) -> str:
    return (rule.get("message") or "").strip() or f"failed rule: {rule['rule'].strip()}"


def _engine_error(e: Exception) -> str:
    text = str(e)
    if "Function 'duration'" in text:
        return CEL_GO_DURATION_ERROR
    return " ".join(text.split())


def _validate(node: dict, value: Any, old: Any, path: str, errs: list[FieldError]) -> None:
    if not isinstance(node, dict) or value is None:
        return
    for rule in node.get("x-kubernetes-validations") or ():
        transition = re.search(r"\boldSelf\b", rule["rule"]) is not None
        if transition and old is None:
            continue
        try:
            result = _program(rule["rule"]).execute({"self": value, **({"oldSelf": old} if transition else {})})
        except Exception as e:  # evaluation errors: "no such key", a bad duration, ...
            errs.append(FieldError("FieldValueInvalid", path, node.get("type"),
                                   f"{_engine_error(e)} evaluating rule: {_message(rule)}"))
            continue
        if result is not True:
            errs.append(FieldError("FieldValueInvalid", path, node.get("type"), _message(rule)))
    if isinstance(value, dict):
        props = node.get("properties") or {}
        extra = node.get("additionalProperties")
        for key, sub in value.items():
            child = props.get(key, extra if isinstance(extra, dict) else None)
            _validate(child, sub, old.get(key) if isinstance(old, dict) else None,
                      f"{path}.{key}" if path else key, errs)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _validate(node.get("items"), item, None, f"{path}[{i}]", errs)


def _walk_errors(schema: dict, obj: Any, old: Any = None) -> list[FieldError]:
    errs: list[FieldError] = []
    _validate(schema, obj, old, "", errs)
    return errs


def validate(kind: str, version: str, obj: dict, old: dict | None = None) -> list[FieldError]:
    """The rules ``obj`` breaks; ``[]`` for a kind without a shipped schema."""
    schema = _schemas().get(kind, {}).get(version)
    return [] if schema is None else _walk_errors(schema, obj, old)
