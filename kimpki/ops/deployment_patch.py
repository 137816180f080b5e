"""Patch the ingress gateway Deployment in a cluster with guarded JSON Patch, re-reading on a race.

The operations come from :mod:`kimpki.istio.volumes` (``mount_ops``/``unmount_ops``), which
carry ``test`` operations on what was read: if the Deployment changed in between, the API
server refuses the whole patch, and :func:`patch_deployment` reads it again and recomputes,
a few times, instead of overwriting someone else's change. Shared by ``kimpki gateway mount``
/ ``unmount`` and ``kimpki apply``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from kimpki.errors import KimpkiError, OperationError
from kimpki.istio.volumes import apply_json_patch

RETRIES = 3


@dataclass
class PatchOutcome:
    action: str  # "unchanged" (no operations), "patched", or "would patch" (dry run: nothing sent)
    ops: list[dict]
    object: dict  # the Deployment after the patch (or as it would be)
    previous: dict


def _rv(obj: dict | None) -> str | None:
    return ((obj or {}).get("metadata") or {}).get("resourceVersion")


def patch_deployment(cluster, namespace: str, name: str, compute: Callable[[dict], list[dict]], *,
                     dry_run: bool = False, retries: int = RETRIES,
                     on_retry: Callable[[KimpkiError], None] | None = None) -> PatchOutcome:
    """Read Deployment ``namespace/name``, compute the operations, and send them (unless there
    are none, or ``dry_run``). A failed patch whose Deployment changed meanwhile is retried."""
    for attempt in range(1, retries + 1):
        obj = cluster.get("Deployment", namespace, name)
        if obj is None:
            raise OperationError(f"no Deployment {name} in namespace {namespace}")
        ops = compute(obj)
        if not ops:
            return PatchOutcome("unchanged", ops, obj, obj)
        if dry_run:
            return PatchOutcome("would patch", ops, apply_json_patch(obj, ops), obj)
        try:
            return PatchOutcome("patched", ops, cluster.json_patch("Deployment", namespace, name, ops), obj)
        except KimpkiError as e:
            # A failed 'test' means the Deployment changed under us: read it again and recompute.
            again = cluster.get("Deployment", namespace, name)
            if attempt == retries or again is None or _rv(again) == _rv(obj):
                raise
            if on_retry is not None:
                on_retry(e)
    raise AssertionError("unreachable")  # the loop returns or raises
