"""Label and field selectors (``labelSelector`` / ``fieldSelector`` query parameters)."""

from __future__ import annotations

import re
from typing import Callable

from .errors import bad_request

_KEY_RE = re.compile(r"\A([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                     r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?\Z")


def _split_top(s: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def parse_label_selector(sel: str) -> Callable[[dict], bool] | None:
    """``k8s.io/apimachinery/pkg/labels.Parse`` subset: ``=``, ``==``, ``!=``, ``k``, ``!k``,
    ``k in (a,b)``, ``k notin (a,b)``; requirements AND together."""
    sel = sel.strip()
    if not sel:
        return None
    reqs: list[Callable[[dict], bool]] = []
    for raw in _split_top(sel):
        term = raw.strip()
        if not term:
            raise bad_request(f"unable to parse requirement: found '', expected: identifier")
        m = re.match(r"\A(\S+)\s+(in|notin)\s*\((.*)\)\Z", term)
        if m:
            key, op, vals = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",") if v.strip()}
            _check_key(key)
            if op == "in":
                reqs.append(lambda l, k=key, vs=vals: k in l and l[k] in vs)
            else:
                reqs.append(lambda l, k=key, vs=vals: k not in l or l[k] not in vs)
            continue
        m = re.match(r"\A([^=!\s]+)\s*(==|=|!=)\s*(\S*)\Z", term)
        if m:
            key, op, val = m.groups()
            _check_key(key)
            if op == "!=":
                reqs.append(lambda l, k=key, v=val: l.get(k) != v)
            else:
                reqs.append(lambda l, k=key, v=val: k in l and l[k] == v)
            continue
        if term.startswith("!"):
            key = term[1:].strip()
            _check_key(key)
            reqs.append(lambda l, k=key: k not in l)
            continue
        _check_key(term)
        reqs.append(lambda l, k=term: k in l)

    def pred(obj: dict) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(r(labels) for r in reqs)

    return pred


def _check_key(key: str) -> None:
    if not _KEY_RE.match(key):
        raise bad_request(f"unable to parse requirement: <nil>: Invalid value: {key!r}: "
                          "name part must consist of alphanumeric characters, '-', '_' or '.', "
                          "and must start and end with an alphanumeric character")


def _field_getter(field: str, kind: str) -> Callable[[dict], str]:
    if field == "metadata.name":
        return lambda o: (o.get("metadata") or {}).get("name", "")
    if field == "metadata.namespace":
        return lambda o: (o.get("metadata") or {}).get("namespace", "")
    if field == "type" and kind == "Secret":
        return lambda o: o.get("type", "")
    if field == "status.phase" and kind == "Namespace":
        return lambda o: (o.get("status") or {}).get("phase", "")
    raise bad_request(f'field label not supported: {field}')


def parse_field_selector(sel: str, kind: str) -> Callable[[dict], bool] | None:
    sel = sel.strip()
    if not sel:
        return None
    reqs = []
    for term in sel.split(","):
        m = re.match(r"\A\s*([^=!\s]+)\s*(==|=|!=)\s*(.*?)\s*\Z", term)
        if not m:
            raise bad_request(f"invalid selector: '{sel}'; can't understand '{term}'")
        field, op, val = m.groups()
        get = _field_getter(field, kind)
        if op == "!=":
            reqs.append(lambda o, g=get, v=val: g(o) != v)
        else:
            reqs.append(lambda o, g=get, v=val: g(o) == v)
    return lambda o: all(r(o) for r in reqs)


def and_preds(*preds):
    ps = [p for p in preds if p is not None]
    if not ps:
        return None
    if len(ps) == 1:
        return ps[0]
    return lambda o: all(p(o) for p in ps)
