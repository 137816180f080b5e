"""In-memory object store, indexed by (resource, namespace) with names kept sorted.

Objects are stored without ``kind``/``apiVersion`` (the wire form of list items of the
built-in types); the server adds the type meta when it answers.  Every write stores a
new ``Record`` -- records are never mutated, so readers may share them without copying.
"""

from __future__ import annotations

import bisect
import json
import threading
from typing import Callable, Iterator

from .resources import ResourceType


class Record:
    __slots__ = ("obj", "_json")

    def __init__(self, obj: dict):
        self.obj = obj
        self._json: str | None = None

    def json(self) -> str:
        """The object serialised without type meta (cached: records are immutable)."""
        if self._json is None:
            self._json = json.dumps(self.obj, separators=(",", ":"))
        return self._json


class Bucket:
    __slots__ = ("names", "records")

    def __init__(self):
        self.names: list[str] = []
        self.records: dict[str, Record] = {}


def _ns_sort_key(ns: str) -> str:
    # etcd keys are /registry/<resource>/<namespace>/<name>; order by that.
    return ns + "/"


class Store:
    def __init__(self, initial_rv: int = 1000):
        self.lock = threading.RLock()
        self._rv = initial_rv
        self._data: dict[str, dict[str, Bucket]] = {}

    # ------------------------------------------------------------------ resourceVersion
    @property
    def rv(self) -> int:
        return self._rv

    def next_rv(self) -> int:
        with self.lock:
            self._rv += 1
            return self._rv

    # ------------------------------------------------------------------ CRUD
    def _bucket(self, rt: ResourceType, ns: str, create: bool = False) -> Bucket | None:
        per = self._data.get(rt.key)
        if per is None:
            if not create:
                return None
            per = self._data[rt.key] = {}
        b = per.get(ns)
        if b is None and create:
            b = per[ns] = Bucket()
        return b

    def get(self, rt: ResourceType, ns: str, name: str) -> Record | None:
        b = self._bucket(rt, ns)
        return b.records.get(name) if b else None

    def put(self, rt: ResourceType, ns: str, name: str, obj: dict) -> Record:
        with self.lock:
            b = self._bucket(rt, ns, create=True)
            if name not in b.records:
                bisect.insort(b.names, name)
            rec = b.records[name] = Record(obj)
            return rec

    def delete(self, rt: ResourceType, ns: str, name: str) -> Record | None:
        with self.lock:
            b = self._bucket(rt, ns)
            if not b or name not in b.records:
                return None
            i = bisect.bisect_left(b.names, name)
            del b.names[i]
            return b.records.pop(name)

    def delete_namespace_contents(self, ns: str) -> None:
        with self.lock:
            for per in self._data.values():
                per.pop(ns, None)

    def clear(self) -> None:
        with self.lock:
            self._data.clear()

    def count(self, rt: ResourceType, ns: str | None = None) -> int:
        per = self._data.get(rt.key) or {}
        if ns is not None:
            b = per.get(ns)
            return len(b.names) if b else 0
        return sum(len(b.names) for b in per.values())

    # ------------------------------------------------------------------ listing
    def iter_from(self, rt: ResourceType, ns: str | None,
                  start: tuple[str, str] | None) -> Iterator[tuple[str, str, Record]]:
        """Yield (namespace, name, record) in key order, strictly after ``start``."""
        per = self._data.get(rt.key) or {}
        if ns is not None:
            namespaces = [ns] if ns in per else []
        else:
            namespaces = sorted(per, key=_ns_sort_key)
        for n in namespaces:
            if start is not None and _ns_sort_key(n) < _ns_sort_key(start[0]):
                continue
            b = per.get(n)
            if b is None:
                continue
            i = 0
            if start is not None and n == start[0]:
                i = bisect.bisect_right(b.names, start[1])
            names = b.names
            while i < len(names):
                name = names[i]
                rec = b.records.get(name)
                if rec is not None:
                    yield n, name, rec
                i += 1

    def list(self, rt: ResourceType, ns: str | None, start: tuple[str, str] | None,
             limit: int | None, pred: Callable[[dict], bool] | None
             ) -> tuple[list[Record], tuple[str, str] | None, int | None]:
        """One page: (records, last key if more remain, remaining count if no predicate)."""
        with self.lock:
            out: list[Record] = []
            last = None
            it = self.iter_from(rt, ns, start)
            for n, name, rec in it:
                if pred is not None and not pred(rec.obj):
                    continue
                if limit and len(out) >= limit:
                    # there is at least one more matching item
                    remaining = None
                    if pred is None:
                        remaining = self._remaining_after(rt, ns, last)
                    return out, last, remaining
                out.append(rec)
                last = (n, name)
            return out, None, None

    def _remaining_after(self, rt: ResourceType, ns: str | None, key: tuple[str, str]) -> int:
        per = self._data.get(rt.key) or {}
        total = 0
        namespaces = [ns] if ns is not None else list(per)
        for n in namespaces:
            b = per.get(n)
            if b is None:
                continue
            if n == key[0]:
                total += len(b.names) - bisect.bisect_right(b.names, key[1])
            elif _ns_sort_key(n) > _ns_sort_key(key[0]):
                total += len(b.names)
        return total
