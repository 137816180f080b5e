"""Pure helpers on object dicts: normalise a Secret, decide "managed", merge for an in-place
update, tell whether anything would change. No network."""

from __future__ import annotations

import base64
import binascii
import copy

from kimpki.errors import UsageError
from kimpki.istio import contract as c

# metadata the server owns; never sent back in a create, and not compared
SYSTEM_METADATA = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields",
                   "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds")


def meta(obj: dict) -> dict:
    m = obj.get("metadata")
    if not isinstance(m, dict):
        m = obj["metadata"] = {}
    return m


def ref(obj: dict) -> str:
    m = obj.get("metadata") or {}
    return f"{m.get('namespace')}/{m.get('name')}" if m.get("namespace") else str(m.get("name"))


def _b64(value, key: str, name: str) -> str:
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if not isinstance(value, str):
        raise UsageError(f"Secret {name}: data key {key} must be a base64 string")
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise UsageError(f"Secret {name}: data key {key} is not valid base64") from None
    return value


def normalize_secret(secret: dict) -> dict:
    """A copy with apiVersion/kind set, ``stringData`` folded into base64 ``data`` (bytes values
    accepted too), ``type`` defaulted to Opaque and kimpki's managed-by label added."""
    if not isinstance(secret, dict):
        raise UsageError("a Secret must be a mapping")
    s = copy.deepcopy(secret)
    if s.get("kind", "Secret") != "Secret" or s.get("apiVersion", "v1") != "v1":
        raise UsageError(f"not a v1 Secret: {s.get('apiVersion')} {s.get('kind')}")
    s["apiVersion"], s["kind"] = "v1", "Secret"
    m = meta(s)
    name = m.get("name")
    if not name:
        raise UsageError("the Secret has no metadata.name")
    if not m.get("namespace"):
        raise UsageError(f"Secret {name} has no metadata.namespace")
    data = {str(k): _b64(v, k, name) for k, v in (s.get("data") or {}).items()}
    for k, v in (s.pop("stringData", None) or {}).items():
        data[str(k)] = base64.b64encode(str(v).encode("utf-8")).decode("ascii")
    s["data"] = data
    s["type"] = s.get("type") or c.SECRET_TYPE_OPAQUE
    labels = m.get("labels") or {}
    labels.setdefault(c.MANAGED_BY_LABEL, c.MANAGED_BY_VALUE)
    m["labels"] = labels
    if m.get("annotations") is None:
        m.pop("annotations", None)
    return s


def for_create(obj: dict) -> dict:
    o = copy.deepcopy(obj)
    m = meta(o)
    for k in SYSTEM_METADATA:
        m.pop(k, None)
    o.pop("status", None)
    return o


def is_managed(obj: dict) -> bool:
    return ((obj.get("metadata") or {}).get("labels") or {}).get(c.MANAGED_BY_LABEL) == c.MANAGED_BY_VALUE


def _merged_meta(current: dict, desired: dict) -> tuple[dict, dict]:
    """Labels: current ones kept, desired ones win. Annotations the same, except kimpki's own
    (``kimpki.io/``) which are exactly the desired ones."""
    cm, dm = current.get("metadata") or {}, desired.get("metadata") or {}
    labels = {**(cm.get("labels") or {}), **(dm.get("labels") or {})}
    annotations = {k: v for k, v in (cm.get("annotations") or {}).items() if not k.startswith(c.ANNOTATION_PREFIX)}
    annotations.update(dm.get("annotations") or {})
    return labels, annotations


def _set_meta(new: dict, labels: dict, annotations: dict) -> None:
    m = meta(new)
    if labels:
        m["labels"] = labels
    else:
        m.pop("labels", None)
    if annotations:
        m["annotations"] = annotations
    else:
        m.pop("annotations", None)
    m.pop("managedFields", None)


def merge_secret(current: dict, desired: dict) -> dict:
    """What to PUT: ``current`` (its resourceVersion, uid, owners, other labels) with the desired
    data, type and labels/annotations."""
    new = copy.deepcopy(current)
    new["data"] = dict(desired.get("data") or {})
    new.pop("stringData", None)
    new["type"] = desired.get("type") or c.SECRET_TYPE_OPAQUE
    _set_meta(new, *_merged_meta(current, desired))
    return new


def _decoded(data: dict | None) -> dict[str, bytes]:
    out = {}
    for k, v in (data or {}).items():
        try:
            out[k] = base64.b64decode(v or "")
        except (binascii.Error, ValueError):
            out[k] = str(v).encode()
    return out


def secret_unchanged(current: dict, new: dict) -> bool:
    cm, nm = current.get("metadata") or {}, new.get("metadata") or {}
    return (_decoded(current.get("data")) == _decoded(new.get("data"))
            and (current.get("type") or c.SECRET_TYPE_OPAQUE) == (new.get("type") or c.SECRET_TYPE_OPAQUE)
            and (cm.get("labels") or {}) == (nm.get("labels") or {})
            and (cm.get("annotations") or {}) == (nm.get("annotations") or {}))


_NOT_CONTENT = ("metadata", "status", "kind", "apiVersion")


def merge_object(current: dict, desired: dict) -> dict:
    """What to PUT for any kind: the desired content (every top-level field but metadata and
    status), current metadata (resourceVersion, uid, owners, finalizers) with labels/annotations
    merged as for Secrets."""
    new = {k: copy.deepcopy(v) for k, v in desired.items() if k not in ("metadata", "status")}
    new["metadata"] = copy.deepcopy(current.get("metadata") or {})
    if "status" in current:
        new["status"] = copy.deepcopy(current["status"])
    _set_meta(new, *_merged_meta(current, desired))
    return new


def object_unchanged(current: dict, desired: dict) -> bool:
    """True when every content field of ``desired`` equals ``current``'s and the merged labels and
    annotations equal the current ones (server-defaulted extra fields are not a change)."""
    if current.get("kind") == "Secret" or desired.get("kind") == "Secret":
        d = dict(desired)
        d.setdefault("type", c.SECRET_TYPE_OPAQUE)
        if "stringData" in d:
            return False
        if _decoded(current.get("data")) != _decoded(d.get("data")) or current.get("type") != d["type"]:
            return False
        keys = [k for k in d if k not in _NOT_CONTENT + ("data", "type")]
    else:
        keys = [k for k in desired if k not in _NOT_CONTENT]
    if any(current.get(k) != desired.get(k) for k in keys):
        return False
    labels, annotations = _merged_meta(current, desired)
    cm = current.get("metadata") or {}
    return labels == (cm.get("labels") or {}) and annotations == (cm.get("annotations") or {})
