"""The resource types the stand-in serves, and how they appear in discovery."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update")


@dataclass(frozen=True)
class ResourceType:
    plural: str
    singular: str
    kind: str
    group: str  # "" for the core group
    versions: tuple[str, ...]  # first is the preferred / storage version
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    builtin: bool = True  # False: CRD-backed (no strategic merge patch, typed items carry TypeMeta)
    verbs: tuple[str, ...] = ALL_VERBS
    subresources: tuple[str, ...] = ()
    has_generation: bool = False
    allow_unconditional_update: bool = True
    table_columns: tuple = field(default=(), compare=False)

    @property
    def preferred_version(self) -> str:
        return self.versions[0]

    def api_version(self, version: str | None = None) -> str:
        v = version or self.preferred_version
        return f"{self.group}/{v}" if self.group else v

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    @property
    def key(self) -> str:
        """Unique key: ``secrets`` / ``deployments.apps``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def storage_version_hash(self, version: str) -> str:
        import base64

        digest = hashlib.sha256(f"{self.group}/{version}/{self.kind}".encode()).digest()
        return base64.b64encode(digest[:8]).decode()


ISTIO_GROUP = "networking.istio.io"
ISTIO_VERSIONS = ("v1", "v1beta1", "v1alpha3")

RESOURCES: tuple[ResourceType, ...] = (
    ResourceType("namespaces", "namespace", "Namespace", "", ("v1",), namespaced=False,
                 short_names=("ns",), verbs=("create", "delete", "get", "list", "patch", "update")),
    ResourceType("secrets", "secret", "Secret", "", ("v1",)),
    ResourceType("configmaps", "configmap", "ConfigMap", "", ("v1",), short_names=("cm",)),
    ResourceType("deployments", "deployment", "Deployment", "apps", ("v1",), short_names=("deploy",),
                 categories=("all",), subresources=("status",), has_generation=True),
    # pkg/registry/coordination/lease/strategy.go: AllowUnconditionalUpdate() is false
    ResourceType("leases", "lease", "Lease", "coordination.k8s.io", ("v1",), allow_unconditional_update=False),
    ResourceType("serviceaccounts", "serviceaccount", "ServiceAccount", "", ("v1",), short_names=("sa",)),
    # RBAC objects, which the stand-in's authorizer evaluates (rbac.py)
    ResourceType("roles", "role", "Role", "rbac.authorization.k8s.io", ("v1",)),
    ResourceType("rolebindings", "rolebinding", "RoleBinding", "rbac.authorization.k8s.io", ("v1",)),
    ResourceType("clusterroles", "clusterrole", "ClusterRole", "rbac.authorization.k8s.io", ("v1",),
                 namespaced=False),
    ResourceType("clusterrolebindings", "clusterrolebinding", "ClusterRoleBinding", "rbac.authorization.k8s.io",
                 ("v1",), namespaced=False),
    ResourceType("gateways", "gateway", "Gateway", ISTIO_GROUP, ISTIO_VERSIONS, short_names=("gw",),
                 categories=("istio-io", "networking-istio-io"), builtin=False,
                 subresources=("status",), has_generation=True, allow_unconditional_update=False),
    ResourceType("virtualservices", "virtualservice", "VirtualService", ISTIO_GROUP, ISTIO_VERSIONS,
                 short_names=("vs",), categories=("istio-io", "networking-istio-io"), builtin=False,
                 subresources=("status",), has_generation=True, allow_unconditional_update=False),
    ResourceType("destinationrules", "destinationrule", "DestinationRule", ISTIO_GROUP, ISTIO_VERSIONS,
                 short_names=("dr",), categories=("istio-io", "networking-istio-io"), builtin=False,
                 subresources=("status",), has_generation=True, allow_unconditional_update=False),
)

BY_KEY = {rt.key: rt for rt in RESOURCES}
# (group, version, plural) -> ResourceType
BY_GVR = {(rt.group, v, rt.plural): rt for rt in RESOURCES for v in rt.versions}
# (group, kind) -> ResourceType
BY_GK = {(rt.group, rt.kind): rt for rt in RESOURCES}
GROUP_VERSIONS: dict[str, tuple[str, ...]] = {}
for _rt in RESOURCES:
    GROUP_VERSIONS.setdefault(_rt.group, _rt.versions)


def lookup(name: str) -> ResourceType:
    """Find a resource type by ``plural``, ``plural.group``, kind or short name."""
    if name in BY_KEY:
        return BY_KEY[name]
    low = name.lower()
    for rt in RESOURCES:
        if low in (rt.plural, rt.singular, rt.kind.lower(), rt.key) or low in rt.short_names:
            return rt
    raise KeyError(f"unknown resource {name!r}")


def for_api_version(api_version: str, kind: str) -> tuple[ResourceType, str]:
    if "/" in api_version:
        group, version = api_version.split("/", 1)
    else:
        group, version = "", api_version
    rt = BY_GK.get((group, kind))
    if rt is None or version not in rt.versions:
        raise KeyError(f"the stand-in does not serve {api_version} {kind}")
    return rt, version
