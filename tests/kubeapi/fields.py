"""Server-side field validation (``?fieldValidation=Strict|Warn|Ignore``), as kube-apiserver does it.

What the real server does with a field its type does not have (apiserver
``endpoints/handlers/{create,update,patch}.go``, apiextensions ``unstructuredSchemaCoercer``):

* the field is never stored: built-in types decode into Go structs that lack it, and custom
  resources are *pruned* to their CRD's structural schema;
* ``Strict``: the request fails. A create/update body gets 400 ``BadRequest``
  ``<Kind> in version "<v>" cannot be handled as a <Kind>: strict decoding error: unknown field
  "spec.x", unknown field "y"``; a JSON/merge/strategic patch gets 422 ``Invalid`` on the field
  ``patch`` (value: the patched object) with the same ``strict decoding error: ...`` text;
* ``Warn`` -- **the default when the parameter is absent** (``handlers/rest.go fieldValidation``:
  ``if directive == "" { return metav1.FieldValidationWarn }``): the request succeeds and each
  unknown field becomes a ``Warning: 299 - "unknown field \\"spec.x\\""`` response header. kubectl
  rejects by default only because its ``--validate=strict`` sends ``fieldValidation=Strict``;
  the Python client sends nothing, so it gets warnings;
* ``Ignore``: dropped silently.

Unknown-field paths are written as the real decoders write them: ``spec.template.spec.
containers[0].imagee``, ``metadata.foo``, ``spec.servers[0].tls.credentialname``.

Schemas: the built-in kinds' fields as far as kimpki and its tests use them (ObjectMeta, Secret,
ConfigMap, Namespace, Lease, Deployment with its pod template's containers, volume mounts and
volumes -- other pod fields are known by name, their insides not checked); the Istio kinds from
the CRD schemas kimpki ships (``kimpki/istio/schemas/istio-networking.json``). A kind without a
schema (DestinationRule) keeps every field, as a CRD with ``x-kubernetes-preserve-unknown-fields``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

# A schema node: ANY (any value, not looked into); a dict {field: node} (an object with exactly
# those fields); ("list", node) (a list of node); ("map", node) (any keys, values node).
ANY = None
STRICT, WARN, IGNORE = "Strict", "Warn", "Ignore"
DIRECTIVES = (IGNORE, STRICT, WARN)  # the order the real "supported values" message lists them

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "kimpki" / "istio" / "schemas" / "istio-networking.json"


def _list(node):
    return ("list", node)


def _map(node=ANY):
    return ("map", node)


OBJECT_META = {k: ANY for k in (
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "ownerReferences",
    "finalizers", "managedFields")}
OBJECT_META.update(labels=_map(), annotations=_map())

TYPE_META = {"apiVersion": ANY, "kind": ANY, "metadata": OBJECT_META}

VOLUME_MOUNT = {k: ANY for k in ("mountPath", "mountPropagation", "name", "readOnly", "recursiveReadOnly",
                                 "subPath", "subPathExpr")}
CONTAINER = {k: ANY for k in (
    "args", "command", "env", "envFrom", "image", "imagePullPolicy", "lifecycle", "livenessProbe", "name",
    "readinessProbe", "resizePolicy", "resources", "restartPolicy", "securityContext", "startupProbe",
    "stdin", "stdinOnce", "terminationMessagePath", "terminationMessagePolicy", "tty", "volumeDevices",
    "workingDir")}
CONTAINER.update(volumeMounts=_list(VOLUME_MOUNT),
                 ports=_list({k: ANY for k in ("containerPort", "hostIP", "hostPort", "name", "protocol")}))
VOLUME = {k: ANY for k in (
    "name", "awsElasticBlockStore", "azureDisk", "azureFile", "cephfs", "cinder", "configMap", "csi",
    "downwardAPI", "emptyDir", "ephemeral", "fc", "flexVolume", "flocker", "gcePersistentDisk", "gitRepo",
    "glusterfs", "hostPath", "image", "iscsi", "nfs", "persistentVolumeClaim", "photonPersistentDisk",
    "portworxVolume", "projected", "quobyte", "rbd", "scaleIO", "storageos", "vsphereVolume")}
VOLUME["secret"] = {k: ANY for k in ("secretName", "items", "defaultMode", "optional")}
POD_SPEC = {k: ANY for k in (
    "activeDeadlineSeconds", "affinity", "automountServiceAccountToken", "dnsConfig", "dnsPolicy",
    "enableServiceLinks", "ephemeralContainers", "hostAliases", "hostIPC", "hostNetwork", "hostPID",
    "hostUsers", "hostname", "imagePullSecrets", "nodeName", "nodeSelector", "os", "overhead",
    "preemptionPolicy", "priority", "priorityClassName", "readinessGates", "resourceClaims", "resources",
    "restartPolicy", "runtimeClassName", "schedulerName", "schedulingGates", "securityContext",
    "serviceAccount", "serviceAccountName", "setHostnameAsFQDN", "shareProcessNamespace", "subdomain",
    "terminationGracePeriodSeconds", "tolerations", "topologySpreadConstraints")}
POD_SPEC.update(containers=_list(CONTAINER), initContainers=_list(CONTAINER), volumes=_list(VOLUME))

BUILTIN: dict[str, dict] = {
    "Secret": {**TYPE_META, "data": _map(), "stringData": _map(), "type": ANY, "immutable": ANY},
    "ConfigMap": {**TYPE_META, "data": _map(), "binaryData": _map(), "immutable": ANY},
    "Namespace": {**TYPE_META, "spec": {"finalizers": ANY}, "status": {"phase": ANY, "conditions": ANY}},
    "Lease": {**TYPE_META, "spec": {k: ANY for k in (
        "acquireTime", "holderIdentity", "leaseDurationSeconds", "leaseTransitions", "preferredHolder",
        "renewTime", "strategy")}},
    "Deployment": {**TYPE_META, "status": ANY, "spec": {
        "minReadySeconds": ANY, "paused": ANY, "progressDeadlineSeconds": ANY, "replicas": ANY,
        "revisionHistoryLimit": ANY,
        "selector": {"matchLabels": _map(), "matchExpressions": ANY},
        "strategy": {"type": ANY, "rollingUpdate": {"maxSurge": ANY, "maxUnavailable": ANY}},
        "template": {"metadata": OBJECT_META, "spec": POD_SPEC}}},
}


def _from_openapi(node: dict) -> Any:
    """A CRD's structural schema as a schema node (what pruning keeps)."""
    if not isinstance(node, dict) or node.get("x-kubernetes-preserve-unknown-fields"):
        return ANY
    if node.get("type") == "array":
        return _list(_from_openapi(node.get("items") or {}))
    if "properties" in node:
        return {k: _from_openapi(v) for k, v in node["properties"].items()}
    if isinstance(node.get("additionalProperties"), dict):
        return _map(_from_openapi(node["additionalProperties"]))
    if node.get("type") == "object":
        return {}  # an object with no properties keeps nothing
    return ANY


@lru_cache(maxsize=None)
def _crd_schemas() -> dict:
    doc = json.loads(SCHEMA_FILE.read_text())
    return {(kind, version): {**TYPE_META, **_from_openapi(schema)}
            for kind, versions in doc["kinds"].items() for version, schema in versions.items()}


def schema_for(kind: str, version: str) -> dict | None:
    """The schema of ``kind`` at ``version``; None when every field is kept."""
    if kind in BUILTIN:
        return BUILTIN[kind]
    return _crd_schemas().get((kind, version))


def prune(obj: Any, node: Any, path: str = "") -> list[str]:
    """Remove from ``obj`` (in place) what ``node`` does not know; return the removed paths."""
    out: list[str] = []
    if node is ANY or obj is None:
        return out
    if isinstance(node, dict):
        if not isinstance(obj, dict):
            return out
        for key in list(obj):
            sub = f"{path}.{key}" if path else key
            if key not in node:
                del obj[key]
                out.append(sub)
            else:
                out += prune(obj[key], node[key], sub)
        return out
    shape, inner = node
    if shape == "list" and isinstance(obj, list):
        for i, item in enumerate(obj):
            out += prune(item, inner, f"{path}[{i}]")
    elif shape == "map" and isinstance(obj, dict):
        for key, value in obj.items():
            out += prune(value, inner, f"{path}.{key}")
    return out


def directive(query: dict) -> str:
    """The request's ``fieldValidation``; absent or empty is ``Warn``, as on the real server."""
    values = query.get("fieldValidation") or [""]
    return values[0] or WARN


def unknown_field_errors(paths: list[str]) -> list[str]:
    return [f'unknown field "{p}"' for p in paths]


def strict_decoding_error(paths: list[str]) -> str:
    """``runtime.strictDecodingError.Error()``."""
    return "strict decoding error: " + ", ".join(unknown_field_errors(paths))


def warning_header(messages: list[str]) -> str:
    """RFC 7234 warnings as the apiserver's ``warning.AddWarning`` recorder writes them
    (``299 - "<text>"``, quotes and backslashes escaped), several joined by ``, ``."""
    return ", ".join('299 - "' + m.replace("\\", "\\\\").replace('"', '\\"') + '"' for m in messages)


def go_value(v: Any) -> str:
    """``fmt.Sprintf("%+v", v)`` of a decoded JSON value (how a strategic merge patch's map is
    shown in its strict-decoding error): ``map[a:1 b:[x y]]`` with sorted keys."""
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{go_value(v[k])}" for k in sorted(v)) + "]"
    if isinstance(v, list):
        return "[" + " ".join(go_value(x) for x in v) + "]"
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)
