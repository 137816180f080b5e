"""JSON Patch (RFC 6902), JSON Merge Patch (RFC 7386) and strategic merge patch.

The JSON Patch implementation follows the semantics of gopkg.in/evanphx/json-patch.v4,
which kube-apiserver uses: ``replace``/``remove`` of a missing key fail, ``add`` needs an
existing parent, array indexes must be in range (``-`` appends).

Strategic merge patch covers what the built-in types served here need: maps merge
recursively, ``null`` deletes, lists with a merge key merge element-wise (containers,
volumes, env by ``name``; volumeMounts by ``mountPath``; ...), ``$patch: delete`` /
``$patch: replace`` / ``$retainKeys`` / ``$setElementOrder/<list>`` /
``$deleteFromPrimitiveList/<list>`` directives, and every other list is replaced.
"""

from __future__ import annotations

from typing import Any


class PatchApplyError(Exception):
    """The patch was well-formed but could not be applied (apiserver answers 422)."""


class PatchFormatError(Exception):
    """The patch document itself is malformed (apiserver answers 400)."""


def deepcopy(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: deepcopy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [deepcopy(x) for x in v]
    return v


# --------------------------------------------------------------------------- JSON patch
def _split_pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchApplyError(f"Invalid JSON Pointer: {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _index(token: str, length: int, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return length
    if not token.lstrip("-").isdigit():
        raise PatchApplyError(f"Unable to access invalid index: {token}")
    i = int(token)
    if i < 0:  # evanphx v4 supports negative indexes counting from the end
        i += length
    hi = length if allow_end else length - 1
    if i < 0 or i > hi:
        raise PatchApplyError(f"Unable to access invalid index: {token}")
    return i


def _parent(doc: Any, parts: list[str], op: str, path: str):
    cur = doc
    for p in parts[:-1]:
        if isinstance(cur, dict):
            if p not in cur:
                raise PatchApplyError(f"{op} operation does not apply: doc is missing path: {path!r}")
            cur = cur[p]
        elif isinstance(cur, list):
            cur = cur[_index(p, len(cur), False)]
        else:
            raise PatchApplyError(f"{op} operation does not apply: doc is missing path: {path!r}")
    if not isinstance(cur, (dict, list)):
        raise PatchApplyError(f"{op} operation does not apply: doc is missing path: {path!r}")
    return cur, parts[-1]


def _get(doc: Any, path: str) -> Any:
    cur = doc
    for p in _split_pointer(path):
        if isinstance(cur, dict):
            if p not in cur:
                raise KeyError(path)
            cur = cur[p]
        elif isinstance(cur, list):
            try:
                cur = cur[_index(p, len(cur), False)]
            except PatchApplyError:
                raise KeyError(path) from None
        else:
            raise KeyError(path)
    return cur


def _add(doc: Any, path: str, value: Any, op: str = "add") -> Any:
    parts = _split_pointer(path)
    if not parts:
        return value
    con, key = _parent(doc, parts, op, path)
    if isinstance(con, dict):
        con[key] = value
    else:
        con.insert(_index(key, len(con), True), value)
    return doc


def _remove(doc: Any, path: str, op: str = "remove") -> tuple[Any, Any]:
    parts = _split_pointer(path)
    if not parts:
        raise PatchApplyError(f"{op} operation does not apply: doc is missing path: {path!r}")
    con, key = _parent(doc, parts, op, path)
    if isinstance(con, dict):
        if key not in con:
            raise PatchApplyError(f"{op} operation does not apply: doc is missing key: {path!r}")
        return doc, con.pop(key)
    return doc, con.pop(_index(key, len(con), False))


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def decode_json_patch(ops: Any) -> list[dict]:
    if not isinstance(ops, list):
        raise PatchFormatError(
            f"json: cannot unmarshal {type(ops).__name__.replace('dict', 'object')} into Go value of type jsonpatch.Patch")
    for o in ops:
        if not isinstance(o, dict):
            raise PatchFormatError("json: cannot unmarshal into Go value of type jsonpatch.Operation")
    return ops


def apply_json_patch(doc: Any, ops: list[dict]) -> Any:
    doc = deepcopy(doc)
    for o in ops:
        kind = o.get("op")
        path = o.get("path")
        if not isinstance(path, str):
            raise PatchApplyError(f"{kind} operation missing path")
        value = deepcopy(o.get("value"))
        if kind == "add":
            doc = _add(doc, path, value)
        elif kind == "remove":
            doc, _ = _remove(doc, path)
        elif kind == "replace":
            parts = _split_pointer(path)
            if not parts:
                doc = value
                continue
            con, key = _parent(doc, parts, "replace", path)
            if isinstance(con, dict):
                if key not in con:
                    raise PatchApplyError(f"replace operation does not apply: doc is missing key: {path}")
                con[key] = value
            else:
                con[_index(key, len(con), False)] = value
        elif kind in ("move", "copy"):
            frm = o.get("from")
            if not isinstance(frm, str):
                raise PatchApplyError(f"{kind} operation missing from")
            try:
                val = deepcopy(_get(doc, frm))
            except KeyError:
                raise PatchApplyError(f"{kind} operation does not apply: doc is missing from path: {frm}") from None
            if kind == "move":
                doc, val = _remove(doc, frm, "move")
            doc = _add(doc, path, val, kind)
        elif kind == "test":
            try:
                cur = _get(doc, path)
            except KeyError:
                if value is None:
                    continue
                raise PatchApplyError(f"testing value {path} failed: test failed") from None
            if not _equal(cur, value):
                raise PatchApplyError(f"testing value {path} failed: test failed")
        else:
            raise PatchApplyError(f"Unexpected kind: {kind}")
    return doc


# --------------------------------------------------------------------------- merge patch
def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386. Lists (and every non-object) replace."""
    if not isinstance(patch, dict):
        return deepcopy(patch)
    result = deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        elif isinstance(v, dict):
            result[k] = apply_merge_patch(result.get(k), v)
        else:
            result[k] = deepcopy(v)
    return result


# --------------------------------------------------------------------------- strategic merge patch
#: patchMergeKey of list fields of the built-in types served (field name -> merge key).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "env": "name",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "ownerReferences": "uid",
    "conditions": "type",
    "resourceClaims": "name",
    "topologySpreadConstraints": "topologyKey",
}
#: lists of scalars with patchStrategy=merge
PRIMITIVE_MERGE_LISTS = {"finalizers"}

_DELETE = object()


def _strip_directives(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _strip_directives(x) for k, x in v.items()
                if not (k == "$patch" or k == "$retainKeys" or k.startswith("$setElementOrder/")
                        or k.startswith("$deleteFromPrimitiveList/"))}
    if isinstance(v, list):
        return [_strip_directives(x) for x in v]
    return v


def apply_strategic_merge_patch(original: dict, patch: Any) -> dict:
    if not isinstance(patch, dict):
        raise PatchFormatError("invalid JSON document")
    out = _smp_map(original if isinstance(original, dict) else {}, patch)
    return {} if out is _DELETE else out


def _smp_map(original: dict, patch: dict) -> Any:
    directive = patch.get("$patch")
    if directive == "replace":
        return _strip_directives({k: v for k, v in patch.items() if k != "$patch"})
    if directive == "delete":
        return _DELETE
    if directive is not None:
        raise PatchFormatError(f"Unknown patch type: {directive} in map: {patch}")
    result = dict(original)
    for key, pval in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            fname = key.split("/", 1)[1]
            if not isinstance(pval, list):
                raise PatchFormatError("invalid patch format of primitive list")
            if isinstance(result.get(fname), list):
                result[fname] = [x for x in result[fname] if x not in pval]
            continue
        if pval is None:
            result.pop(key, None)
            continue
        oval = result.get(key)
        if isinstance(pval, dict):
            merged = _smp_map(oval if isinstance(oval, dict) else {}, pval)
            if merged is _DELETE:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(pval, list):
            result[key] = _smp_list(oval if isinstance(oval, list) else [], pval, key)
        else:
            result[key] = pval
    for key, order in patch.items():
        if key.startswith("$setElementOrder/"):
            fname = key.split("/", 1)[1]
            if isinstance(result.get(fname), list) and isinstance(order, list):
                result[fname] = _reorder(result[fname], order, MERGE_KEYS.get(fname))
    retain = patch.get("$retainKeys")
    if retain is not None:
        if not isinstance(retain, list):
            raise PatchFormatError("invalid patch format of retainKeys")
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _reorder(items: list, order: list, merge_key: str | None) -> list:
    def ident(x):
        return x.get(merge_key) if (merge_key and isinstance(x, dict)) else x

    wanted = [ident(o) for o in order]
    pos = {w: i for i, w in enumerate(wanted) if not isinstance(w, (dict, list))}
    ordered = sorted((x for x in items if ident(x) in pos), key=lambda x: pos[ident(x)])
    rest = [x for x in items if ident(x) not in pos]
    return ordered + rest


def _smp_list(original: list, patch: list, field_name: str) -> list:
    if field_name in PRIMITIVE_MERGE_LISTS:
        out = list(original)
        for x in patch:
            if x not in out:
                out.append(x)
        return out
    merge_key = MERGE_KEYS.get(field_name)
    if merge_key is None:
        return _strip_directives(deepcopy(patch))
    if any(isinstance(x, dict) and x.get("$patch") == "replace" for x in patch):
        return [_strip_directives(deepcopy(x)) for x in patch
                if not (isinstance(x, dict) and x.get("$patch") == "replace")]
    result = [deepcopy(x) for x in original]
    for item in patch:
        if not isinstance(item, dict):
            # A list of scalars for a field declared as a merge list: replace.
            return _strip_directives(deepcopy(patch))
        if merge_key not in item:
            raise PatchApplyError(f"map: {item} does not contain declared merge key: {merge_key}")
        kv = item[merge_key]
        idx = next((i for i, x in enumerate(result)
                    if isinstance(x, dict) and x.get(merge_key) == kv), None)
        if item.get("$patch") == "delete":
            result = [x for x in result if not (isinstance(x, dict) and x.get(merge_key) == kv)]
            continue
        if idx is None:
            merged = _smp_map({}, item)
            if merged is not _DELETE:
                result.append(merged)
        else:
            merged = _smp_map(result[idx], item)
            if merged is _DELETE:
                result.pop(idx)
            else:
                result[idx] = merged
    return result
