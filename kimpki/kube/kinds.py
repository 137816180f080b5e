"""The kinds kimpki reads and writes, and the REST paths they live at. Pure data, no network.

A kind is named as kubectl shows it (``Secret``, ``Gateway``); its API group, default version,
plural and scope come from :data:`KINDS`. Istio kinds default to ``networking.istio.io/v1`` and
take the version from an object's ``apiVersion`` when it names that group (``v1beta1``,
``v1alpha3`` as the manual steps' manifests do).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from kimpki.errors import UsageError

ISTIO_GROUP = "networking.istio.io"
ISTIO_VERSIONS = ("v1", "v1beta1", "v1alpha3")  # newest first: what `check` tries in turn


@dataclass(frozen=True)
class Kind:
    kind: str
    group: str  # "" for the core group
    version: str  # default version
    plural: str
    namespaced: bool = True

    def api_version(self, version: str | None = None) -> str:
        v = version or self.version
        return f"{self.group}/{v}" if self.group else v


KINDS: dict[str, Kind] = {k.kind: k for k in (
    Kind("Secret", "", "v1", "secrets"),
    Kind("ConfigMap", "", "v1", "configmaps"),
    Kind("Namespace", "", "v1", "namespaces", namespaced=False),
    Kind("Deployment", "apps", "v1", "deployments"),
    Kind("Lease", "coordination.k8s.io", "v1", "leases"),
    Kind("Gateway", ISTIO_GROUP, "v1", "gateways"),
    Kind("VirtualService", ISTIO_GROUP, "v1", "virtualservices"),
    Kind("DestinationRule", ISTIO_GROUP, "v1", "destinationrules"),
)}


def kind_of(kind: str) -> Kind:
    """The :class:`Kind` for ``"Secret"`` (case-insensitive; plurals accepted too)."""
    k = KINDS.get(kind)
    if k is not None:
        return k
    low = kind.lower()
    for k in KINDS.values():
        if low in (k.kind.lower(), k.plural):
            return k
    raise UsageError(f"kimpki does not handle Kubernetes kind {kind!r} "
                     f"(it handles: {', '.join(sorted(KINDS))})")


def version_for(k: Kind, api_version: str | None) -> str:
    """The version to use for ``k``: the one in ``api_version`` when it is of ``k``'s group."""
    if not api_version:
        return k.version
    group, _, version = api_version.rpartition("/")
    if group != k.group or not version:
        raise UsageError(f"apiVersion {api_version!r} does not belong to kind {k.kind} "
                         f"(expected {k.api_version()})")
    return version


def kind_of_object(obj: dict) -> tuple[Kind, str]:
    """``(Kind, version)`` for an object dict carrying ``kind`` and ``apiVersion``."""
    if not isinstance(obj, dict) or not obj.get("kind"):
        raise UsageError("object has no kind")
    k = kind_of(str(obj["kind"]))
    return k, version_for(k, obj.get("apiVersion"))


def path(k: Kind, version: str, namespace: str | None, name: str | None = None,
         subresource: str | None = None) -> str:
    """``/api/v1/namespaces/ns/secrets/name`` or ``/apis/g/v/namespaces/ns/plural``.

    ``namespace`` None (or "") for a namespaced kind lists across all namespaces."""
    base = f"/apis/{k.group}/{version}" if k.group else f"/api/{version}"
    parts = [base]
    if k.namespaced and namespace:
        parts.append("namespaces/" + quote(namespace, safe=""))
    parts.append(k.plural)
    if name:
        parts.append(quote(name, safe=""))
        if subresource:
            parts.append(subresource)
    return "/".join(parts)
