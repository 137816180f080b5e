"""Structural schema validation of custom resources (types, enums, required, item counts, bounds),
as kube-apiserver runs it for a CRD before its CEL rules.

apiextensions-apiserver ``pkg/apiserver/validation/validation.go`` (``kubeOpenAPIResultToFieldErrors``)
turns kube-openapi's errors into ``field.Error``s, with the path of the field (``spec.servers[0].
port.number``):

* a wrong type: ``field.TypeInvalid(path, "<actual type>", "<path> in body must be of type
  <type>: \\"<actual type>\\"")`` -- ``Invalid value: "string": spec.servers[0].port.number in body
  must be of type integer: "string"`` (``integer,string`` for int-or-string);
* a value not in ``enum``: ``field.NotSupported`` -- ``Unsupported value: "FOO": supported values:
  "PASSTHROUGH", "SIMPLE", ...``;
* a missing ``required`` field: ``field.Required`` -- ``spec.servers[0].port.name: Required value``;
* more than ``maxItems``: ``field.TooMany`` -- ``Too many: 3: must have at most 2 items``;
* anything else (``minItems``, ``minimum``, ``maximum``): ``field.Invalid(path, value, <kube-openapi
  message>)`` -- ``... in body should have at least 1 items``, ``... should be less than or equal to N``;
* a string not of its ``format`` (``byte``: standard base64; ``date-time``: RFC 3339 -- the two string
  formats of these CRDs that apiextensions-apiserver ``formats.go`` supports; ``int32``/``double``
  are numbers' formats): kube-openapi ``FormatOf`` → ``errors.InvalidType`` → ``field.TypeInvalid``
  -- ``Invalid value: "!!": spec.http[0].directResponse.body.bytes in body must be of type byte: "!!"``;
* ``oneOf`` matched by no or several alternatives (VirtualService's "exact, prefix or regex"):
  kube-openapi ``schema_props.go`` ``mustValidateOnlyOneSchemaMsg`` is no ``*errors.Validation``, so it
  becomes ``field.Invalid(nil, "", msg)`` -- ``<nil>: Invalid value: "": "spec.http[0].match[0].uri"
  must validate one and only one schema (oneOf). Found 2 valid alternatives``.

``pkg/registry/customresource/strategy.go``: when any of these is of type NotSupported, Required,
TooLong, TooMany or TypeInvalid, the CEL rules are not run, and one more error says so
(:data:`CEL_SKIPPED`). The schemas are the ones kimpki ships (:data:`fields.SCHEMA_FILE`); this
walker is the stand-in's own. Not modelled: ``anyOf`` beyond int-or-string and inside ``oneOf``,
``pattern`` and ``maxLength`` (the Gateway and VirtualService schemas use neither; only DestinationRule's
``workloadSelector`` has ``maxLength: 63``), the range of ``int32``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import datetime
from functools import lru_cache
from typing import Any

from .errors import FieldError, go_quote
from .fields import SCHEMA_FILE

BLOCKING = ("FieldValueNotSupported", "FieldValueRequired", "FieldValueTooLong", "FieldValueTooMany",
            "FieldValueTypeInvalid")
# field.Invalid(nil, nil, ...): a nil path prints as "<nil>", a nil value as "null".
CEL_SKIPPED = FieldError("FieldValueInvalid", "<nil>", "null",
                         "some validation rules were not checked because the object was invalid; correct the "
                         "existing errors to complete validation")


@lru_cache(maxsize=None)
def _schemas() -> dict:
    return json.loads(SCHEMA_FILE.read_text())["kinds"]


def _type_of(value: Any) -> str:
    """The JSON type name kube-openapi reports for a decoded value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _types(node: dict) -> list[str] | None:
    if node.get("x-kubernetes-int-or-string"):
        return ["integer", "string"]
    t = node.get("type")
    return [t] if t else None


def _fits(actual: str, wanted: str) -> bool:
    return actual == wanted or (wanted == "number" and actual == "integer")


def _number(v: Any) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def _is_byte(text: str) -> bool:
    """strfmt's ``byte``: Go's ``base64.StdEncoding.DecodeString`` succeeds (padding required)."""
    try:
        base64.b64decode(text.replace("\r", "").replace("\n", ""), validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _is_date_time(text: str) -> bool:
    if not _RFC3339.match(text):
        return False
    try:
        datetime.fromisoformat(text.upper().replace("Z", "+00:00").replace(" ", "T"))
    except ValueError:
        return False
    return True


FORMATS = {"byte": _is_byte, "date-time": _is_date_time}


def _satisfies(node: Any, value: Any) -> bool:
    """Whether ``value`` validates against a ``oneOf`` alternative (``required``, ``not``, ``anyOf``)."""
    if not isinstance(node, dict):
        return True
    errs: list[FieldError] = []
    _walk(node, value, "", errs)
    if errs:
        return False
    if "not" in node and _satisfies(node["not"], value):
        return False
    return "anyOf" not in node or any(_satisfies(alt, value) for alt in node["anyOf"])


def _walk(node: Any, value: Any, path: str, errs: list[FieldError]) -> None:
    if not isinstance(node, dict):
        return
    actual = _type_of(value)
    types = _types(node)
    if value is None and node.get("nullable"):
        return
    if types and not any(_fits(actual, t) for t in types):
        errs.append(FieldError("FieldValueTypeInvalid", path, actual,
                               f"{path} in body must be of type {','.join(types)}: {go_quote(actual)}"))
        return
    if node.get("oneOf"):
        matched = sum(_satisfies(alt, value) for alt in node["oneOf"])
        if matched != 1:
            found = "Found none valid" if matched == 0 else f"Found {matched} valid alternatives"
            errs.append(FieldError("FieldValueInvalid", "<nil>", "",
                                   f"{go_quote(path)} must validate one and only one schema (oneOf). {found}"))
    if actual == "string" and node.get("format") in FORMATS and not FORMATS[node["format"]](value):
        errs.append(FieldError("FieldValueTypeInvalid", path, value,
                               f"{path} in body must be of type {node['format']}: {go_quote(value)}"))
    if "enum" in node and value not in node["enum"]:
        supported = ", ".join(go_quote(v) if isinstance(v, str) else json.dumps(v) for v in node["enum"])
        errs.append(FieldError("FieldValueNotSupported", path, value, f"supported values: {supported}"))
    if actual in ("integer", "number"):
        if "maximum" in node and value > node["maximum"]:
            errs.append(FieldError("FieldValueInvalid", path, value,
                                   f"{path} in body should be less than or equal to {_number(node['maximum'])}"))
        if "minimum" in node and value < node["minimum"]:
            errs.append(FieldError("FieldValueInvalid", path, value,
                                   f"{path} in body should be greater than or equal to {_number(node['minimum'])}"))
    if isinstance(value, list):
        if "maxItems" in node and len(value) > node["maxItems"]:
            errs.append(FieldError("FieldValueTooMany", path, len(value),
                                   f"must have at most {node['maxItems']} items"))
        if "minItems" in node and len(value) < node["minItems"]:
            errs.append(FieldError("FieldValueInvalid", path, len(value),
                                   f"{path} in body should have at least {node['minItems']} items"))
        for i, item in enumerate(value):
            _walk(node.get("items"), item, f"{path}[{i}]", errs)
    elif isinstance(value, dict):
        for req in node.get("required") or ():
            if req not in value:
                errs.append(FieldError("FieldValueRequired", f"{path}.{req}" if path else req))
        props = node.get("properties") or {}
        extra = node.get("additionalProperties")
        for key, sub in value.items():
            child = props.get(key, extra if isinstance(extra, dict) else None)
            _walk(child, sub, f"{path}.{key}" if path else key, errs)


def validate(kind: str, version: str, obj: dict) -> list[FieldError]:
    """The structural errors of ``obj`` (its ``spec`` and ``status``); ``[]`` for a kind without a schema."""
    schema = _schemas().get(kind, {}).get(version)
    if schema is None:
        return []
    errs: list[FieldError] = []
    props = schema.get("properties") or {}
    for key in ("spec", "status"):
        if key in obj:
            _walk(props.get(key), obj[key], key, errs)
    return errs


def blocking(errs: list[FieldError]) -> bool:
    """strategy.go ``hasBlockingErr``: errors after which the CEL rules are not evaluated."""
    return any(e.type in BLOCKING for e in errs)
