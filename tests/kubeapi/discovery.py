"""Discovery documents (/version, /api, /apis, resource lists), a minimal OpenAPI v3
surface (enough for kubectl's field-validation probe) and server-side Table rendering."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

from .resources import GROUP_VERSIONS, RESOURCES, ResourceType

KUBE_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-12-11T00:00:00Z",
    "goVersion": "go1.23.3",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def api_versions(server_address: str) -> dict:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def _gv(group: str, version: str) -> dict:
    return {"groupVersion": f"{group}/{version}", "version": version}


def api_group(group: str) -> dict:
    versions = GROUP_VERSIONS[group]
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": [_gv(group, v) for v in versions],
        "preferredVersion": _gv(group, versions[0]),
    }


def api_group_list() -> dict:
    groups = [g for g in GROUP_VERSIONS if g]
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [{k: v for k, v in api_group(g).items() if k not in ("kind", "apiVersion")}
                   for g in groups],
    }


def resource_list(group: str, version: str) -> dict:
    resources = []
    for rt in RESOURCES:
        if rt.group != group or version not in rt.versions:
            continue
        entry = {
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": list(rt.verbs),
        }
        if rt.short_names:
            entry["shortNames"] = list(rt.short_names)
        if rt.categories:
            entry["categories"] = list(rt.categories)
        entry["storageVersionHash"] = rt.storage_version_hash(version)
        resources.append(entry)
        for sub in rt.subresources:
            resources.append({
                "name": f"{rt.plural}/{sub}",
                "singularName": "",
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": ["get", "patch", "update"],
            })
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }


def known_group_version(group: str, version: str) -> bool:
    return version in GROUP_VERSIONS.get(group, ())


# --------------------------------------------------------------------------- OpenAPI v3
def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def openapi_v3_doc(group: str, version: str) -> dict:
    """A skeletal OpenAPI v3 document: one PATCH operation per kind, advertising the
    ``fieldValidation`` query parameter (which is what kubectl probes before deciding to
    leave schema validation to the server). No schemas are published."""
    prefix = "/" + _gv_path(group, version)
    paths = {}
    for rt in RESOURCES:
        if rt.group != group or version not in rt.versions:
            continue
        gvk = {"group": group, "version": version, "kind": rt.kind}
        params = [{"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
                  for n in ("dryRun", "fieldManager", "fieldValidation", "force")]
        op = {
            "operationId": f"patch{rt.kind}",
            "parameters": params,
            "responses": {"200": {"description": "OK"}},
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": gvk,
        }
        item_path = (f"{prefix}/namespaces/{{namespace}}/{rt.plural}/{{name}}" if rt.namespaced
                     else f"{prefix}/{rt.plural}/{{name}}")
        paths[item_path] = {"patch": op}
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (kubeapi stand-in)", "version": KUBE_VERSION["gitVersion"]},
        "paths": paths,
        "components": {"schemas": {}},
    }


def _hash(doc: dict) -> str:
    return hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:64].upper()


def openapi_v3_index() -> dict:
    paths = {}
    for group, versions in GROUP_VERSIONS.items():
        for v in versions:
            p = _gv_path(group, v)
            paths[p] = {"serverRelativeURL": f"/openapi/v3/{p}?hash={_hash(openapi_v3_doc(group, v))}"}
    return {"paths": paths}


# --------------------------------------------------------------------------- Tables
def human_duration(seconds: float) -> str:
    """``k8s.io/apimachinery/pkg/util/duration.HumanDuration``."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 60 * 2:
        return f"{s}s"
    m = s // 60
    if m < 10:
        rem = s % 60
        return f"{m}m{rem}s" if rem else f"{m}m"
    if m < 60 * 3:
        return f"{m}m"
    h = s // 3600
    if h < 8:
        rem = (s % 3600) // 60
        return f"{h}h{rem}m" if rem else f"{h}h"
    if h < 48:
        return f"{h}h"
    if h < 24 * 8:
        rem = h % 24
        return f"{h // 24}d{rem}h" if rem else f"{h // 24}d"
    if h < 24 * 365 * 2:
        return f"{h // 24}d"
    if h < 24 * 365 * 8:
        dy = (h // 24) % 365
        return f"{h // 24 // 365}y{dy}d" if dy else f"{h // 24 // 365}y"
    return f"{h // 24 // 365}y"


def _age(obj: dict) -> str:
    ts = (obj.get("metadata") or {}).get("creationTimestamp")
    if not ts:
        return "<unknown>"
    t = dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    return human_duration((dt.datetime.now(dt.timezone.utc) - t).total_seconds())


def _col(name: str, typ: str = "string", fmt: str = "", desc: str = "", priority: int = 0) -> dict:
    return {"name": name, "type": typ, "format": fmt, "description": desc, "priority": priority}


_NAME = _col("Name", fmt="name", desc="Name must be unique within a namespace.")
_AGE = _col("Age", desc="CreationTimestamp is a timestamp representing the server time when this object was created.")


def table_columns(rt: ResourceType) -> list[dict]:
    if rt.plural == "secrets":
        return [_NAME, _col("Type", desc="Used to facilitate programmatic handling of secret data."),
                _col("Data", "integer", desc="Data contains the secret data."), _AGE]
    if rt.plural == "configmaps":
        return [_NAME, _col("Data", "integer", desc="Data contains the configuration data."), _AGE]
    if rt.plural == "deployments":
        return [_NAME, _col("Ready", desc="Number of the pod with ready state"),
                _col("Up-to-date", "integer", desc="Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
                _col("Available", "integer", desc="Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
                _AGE,
                _col("Containers", priority=1, desc="Names of each container in the template."),
                _col("Images", priority=1, desc="Images referenced by each container in the template."),
                _col("Selector", priority=1, desc="Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.")]
    if rt.plural == "leases":
        return [_NAME, _col("Holder", desc="holderIdentity contains the identity of the holder of a current lease."), _AGE]
    if rt.plural == "namespaces":
        return [_NAME, _col("Status", desc="The status of the namespace"), _AGE]
    return [_NAME, _AGE]


def _selector_str(sel: dict | None) -> str:
    if not sel:
        return "<none>"
    parts = [f"{k}={v}" for k, v in sorted((sel.get("matchLabels") or {}).items())]
    for e in sel.get("matchExpressions") or []:
        op = e.get("operator", "")
        key = e.get("key", "")
        vals = ",".join(e.get("values") or [])
        if op == "In":
            parts.append(f"{key} in ({vals})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({vals})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts) or "<none>"


def table_cells(rt: ResourceType, obj: dict) -> list:
    name = (obj.get("metadata") or {}).get("name", "")
    if rt.plural == "secrets":
        return [name, obj.get("type", ""), len(obj.get("data") or {}), _age(obj)]
    if rt.plural == "configmaps":
        return [name, len(obj.get("data") or {}) + len(obj.get("binaryData") or {}), _age(obj)]
    if rt.plural == "deployments":
        spec = obj.get("spec") or {}
        st = obj.get("status") or {}
        containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
        return [name, f"{st.get('readyReplicas', 0)}/{spec.get('replicas', 0)}",
                st.get("updatedReplicas", 0), st.get("availableReplicas", 0), _age(obj),
                ",".join(c.get("name", "") for c in containers),
                ",".join(c.get("image", "") for c in containers),
                _selector_str(spec.get("selector"))]
    if rt.plural == "leases":
        return [name, (obj.get("spec") or {}).get("holderIdentity", ""), _age(obj)]
    if rt.plural == "namespaces":
        return [name, (obj.get("status") or {}).get("phase", ""), _age(obj)]
    return [name, _age(obj)]


def partial_metadata(obj: dict) -> dict:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata") or {}}


def table(rt: ResourceType, objs: list[dict], list_meta: dict | None, include: str,
          full_object) -> dict:
    rows = []
    for o in objs:
        row = {"cells": table_cells(rt, o)}
        if include == "Object":
            row["object"] = full_object(o)
        elif include != "None":
            row["object"] = partial_metadata(o)
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta or {},
        "columnDefinitions": table_columns(rt),
        "rows": rows,
    }
