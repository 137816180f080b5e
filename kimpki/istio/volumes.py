"""The ingress gateway Deployment's Secret volumes as JSON Patch (RFC 6902) operations (pure).

A file-mounted (legacy) gateway reads a host's certificate from files, so each extra host needs
its own Secret plus a ``secret`` volume and a ``volumeMount`` in the ``istio-proxy`` container.
The manual steps did it by hand::

    kubectl -n istio-system patch --type=json deploy istio-ingressgateway -p '[
      {"op":"add","path":"/spec/template/spec/containers/0/volumeMounts/0",
       "value":{"mountPath":"/etc/istio/ingressgateway-bookinfo-certs","name":"ingressgateway-bookinfo-certs","readOnly":true}},
      {"op":"add","path":"/spec/template/spec/volumes/0",
       "value":{"name":"ingressgateway-bookinfo-certs","secret":{"secretName":"istio-ingressgateway-bookinfo-certs","optional":true}}}]'

:func:`mount_ops` produces the same volume and mount, with three differences that make it safe
to run again and again:

* the container is found by name (``istio-proxy``), not assumed to be at index 0;
* it is idempotent: when the volume and the mount already exist, there are no operations (and a
  volume name or mount path already used by something else is a clear error, not a duplicate);
* it guards against lost updates with ``test`` operations on what it read: the container's name
  at the index it patches, and the full current contents of every list it appends to or removes
  from. If anyone changed those lists (or reordered the containers) between the read and the
  patch, the API server rejects the whole patch and nothing is applied; the caller re-reads and
  computes again. Testing contents rather than ``metadata.resourceVersion`` means unrelated
  writes (the Deployment controller updates ``status`` all the time) do not fail the patch.
  When a list does not exist yet, the operation adds it whole, after testing the whole pod spec.

Items are appended with ``/-`` (the manual patch inserted at index 0; order means nothing to Kubernetes).
:func:`apply_json_patch` applies operations to a dict, for ``--local`` and for tests.
"""

from __future__ import annotations

import copy
import hashlib
import posixpath
import re
from typing import Any

from kimpki.errors import OperationError, UsageError
from kimpki.istio import contract as c

POD_SPEC = "/spec/template/spec"
_LABEL_MAX = 63


class PatchConflict(OperationError):
    """The Deployment already uses the volume name or mount path for something else."""


class JsonPatchError(OperationError):
    """A JSON Patch operation could not be applied (a failed ``test`` included)."""


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------

def volume_name_for(secret_name: str) -> str:
    """The manual volume name for a Secret: ``istio-ingressgateway-bookinfo-certs`` → ``ingressgateway-bookinfo-certs``.

    Other names are kept (dots become dashes: a volume name is a DNS-1123 label), and names
    longer than 63 characters are shortened with a hash suffix.
    """
    name = secret_name[len("istio-"):] if secret_name.startswith("istio-") else secret_name
    name = re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-") or "secret"
    if len(name) > _LABEL_MAX:
        digest = hashlib.sha256(secret_name.encode()).hexdigest()[:8]
        name = name[:_LABEL_MAX - 9].rstrip("-") + "-" + digest
    return name


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


# ---------------------------------------------------------------------------------------------
# Reading the Deployment
# ---------------------------------------------------------------------------------------------

_CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")


def _pod_spec(deployment: dict) -> dict:
    """The pod template's spec, its fields this module reads checked first: a manifest file can
    hold anything (the API server would have refused what is refused here)."""
    spec = deployment
    for key in ("spec", "template", "spec"):
        spec = spec.get(key) if isinstance(spec, dict) else None
    if not isinstance(spec, dict):
        raise OperationError(f"{_ref(deployment)} has no spec.template.spec (is it a Deployment?)")
    problem = _pod_spec_problem(spec)
    if problem is not None:
        raise OperationError(f"{_ref(deployment)}: spec.template.spec.{problem}")
    return spec


def _pod_spec_problem(pod: dict) -> str | None:
    """The first field of ``pod`` read here whose type is wrong, as ``FIELD must be ...``, else None."""
    def not_named_list(value) -> bool:
        return value is not None and not (isinstance(value, list) and all(
            isinstance(x, dict) and isinstance(x.get("name", ""), str) for x in value))

    for key in ("volumes", *_CONTAINER_LISTS):
        if not_named_list(pod.get(key)):
            return f"{key} must be a list of mappings, each with a string name"
    for key in _CONTAINER_LISTS:
        for i, ctr in enumerate(pod.get(key) or []):
            mounts = ctr.get("volumeMounts")
            if not_named_list(mounts) or any(not isinstance(m.get("mountPath", ""), str) for m in mounts or []):
                return f"{key}[{i}].volumeMounts must be a list of mappings with a string name and mountPath"
    return None


def _ref(deployment: dict) -> str:
    meta = deployment.get("metadata") if isinstance(deployment, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    kind = deployment.get("kind") if isinstance(deployment, dict) else None
    return f"{str(kind or 'Deployment').lower()}/{meta.get('name', '?')}"


def find_container(deployment: dict, container: str = c.GATEWAY_CONTAINER) -> tuple[int, dict]:
    """(index, container) of the named container; OperationError naming the ones there are."""
    containers = _pod_spec(deployment).get("containers") or []
    for i, ctr in enumerate(containers):
        if isinstance(ctr, dict) and ctr.get("name") == container:
            return i, ctr
    names = ", ".join(str(x.get("name")) for x in containers if isinstance(x, dict)) or "none"
    raise OperationError(f"{_ref(deployment)} has no container named {container!r} "
                         f"(containers: {names}); choose one with --container")


def _describe_volume(v: dict) -> str:
    if isinstance(v.get("secret"), dict):
        return f"Secret {v['secret'].get('secretName')}"
    for kind in ("configMap", "emptyDir", "projected", "downwardAPI", "hostPath", "persistentVolumeClaim"):
        if kind in v:
            if kind == "configMap" and isinstance(v[kind], dict):
                return f"configMap {v[kind].get('name')}"
            return kind
    return "a volume"


def _norm(path: str) -> str:
    return posixpath.normpath(path) if path else path


def _guard_list(ops: list[dict], path: str, current: list | None, parent_path: str, parent: dict) -> None:
    """Test ops that make the patch fail if the list at ``path`` changed since it was read."""
    if current is None:
        ops.append({"op": "test", "path": parent_path, "value": copy.deepcopy(parent)})
    else:
        ops.append({"op": "test", "path": path, "value": copy.deepcopy(current)})


# ---------------------------------------------------------------------------------------------
# Mount / unmount
# ---------------------------------------------------------------------------------------------

def mount_ops(deployment: dict, *, secret_name: str, mount_path: str, container: str = c.GATEWAY_CONTAINER,
              volume_name: str | None = None, read_only: bool = True, optional: bool = True) -> list[dict]:
    """JSON Patch ops that mount Secret ``secret_name`` at ``mount_path`` in ``container``.

    Empty when it is mounted there already. :class:`PatchConflict` when ``mount_path`` is used by
    another volume, or the volume name is taken by a different source.
    """
    if not mount_path.startswith("/"):
        raise UsageError(f"--mount-path must be absolute, not {mount_path!r}")
    mount_path = _norm(mount_path)
    vname = volume_name or volume_name_for(secret_name)
    pod = _pod_spec(deployment)
    idx, ctr = find_container(deployment, container)
    volumes = pod.get("volumes")
    mounts = ctr.get("volumeMounts")
    by_name = {v.get("name"): v for v in volumes or [] if isinstance(v, dict)}

    existing_mount = next((m for m in mounts or [] if isinstance(m, dict) and _norm(m.get("mountPath", "")) == mount_path), None)
    if existing_mount is not None:
        vol = by_name.get(existing_mount.get("name"))
        if vol is not None and isinstance(vol.get("secret"), dict) and vol["secret"].get("secretName") == secret_name:
            return []  # already mounted (perhaps under another volume name): nothing to do
        what = _describe_volume(vol) if vol else "a volume that does not exist"
        raise PatchConflict(f"{mount_path} in container {container} is already used by volume "
                            f"{existing_mount.get('name')!r} ({what}); choose another --mount-path")

    ops: list[dict] = []
    vol = by_name.get(vname)
    if vol is not None:
        if not (isinstance(vol.get("secret"), dict) and vol["secret"].get("secretName") == secret_name):
            raise PatchConflict(f"volume name {vname!r} is already used for {_describe_volume(vol)}; "
                                f"choose another --volume-name")
    else:
        new_vol = {"name": vname, "secret": {"secretName": secret_name, "optional": optional}}
        _guard_list(ops, f"{POD_SPEC}/volumes", volumes, POD_SPEC, pod)
        if volumes is None:
            ops.append({"op": "add", "path": f"{POD_SPEC}/volumes", "value": [new_vol]})
        else:
            ops.append({"op": "add", "path": f"{POD_SPEC}/volumes/-", "value": new_vol})

    cpath = f"{POD_SPEC}/containers/{idx}"
    new_mount = {"mountPath": mount_path, "name": vname, "readOnly": read_only}
    ops.append({"op": "test", "path": f"{cpath}/name", "value": container})
    _guard_list(ops, f"{cpath}/volumeMounts", mounts, cpath, ctr)
    if mounts is None:
        ops.append({"op": "add", "path": f"{cpath}/volumeMounts", "value": [new_mount]})
    else:
        ops.append({"op": "add", "path": f"{cpath}/volumeMounts/-", "value": new_mount})
    return ops


def unmount_ops(deployment: dict, *, secret_name: str | None = None, mount_path: str | None = None,
                container: str = c.GATEWAY_CONTAINER) -> list[dict]:
    """JSON Patch ops that remove the mount(s) of a Secret from ``container``, and its volume
    when no other container mounts it. Empty when there is nothing to remove.

    Select by ``secret_name``, ``mount_path`` or both (both must then describe the same mount).
    """
    if not secret_name and not mount_path:
        raise UsageError("say what to unmount: --secret, --mount-path or both")
    mount_path = _norm(mount_path) if mount_path else None
    pod = _pod_spec(deployment)
    idx, ctr = find_container(deployment, container)
    volumes = [v for v in pod.get("volumes") or []]
    mounts = [m for m in ctr.get("volumeMounts") or []]
    by_name = {v.get("name"): v for v in volumes if isinstance(v, dict)}

    def secret_of(m: dict) -> str | None:
        v = by_name.get(m.get("name"))
        return v["secret"].get("secretName") if v and isinstance(v.get("secret"), dict) else None

    doomed = []
    for i, m in enumerate(mounts):
        if not isinstance(m, dict):
            continue
        if mount_path and _norm(m.get("mountPath", "")) != mount_path:
            continue
        if secret_name and secret_of(m) != secret_name:
            if mount_path:
                raise PatchConflict(f"{mount_path} in container {container} holds volume {m.get('name')!r} "
                                    f"({_describe_volume(by_name.get(m.get('name')) or {})}), not Secret {secret_name}")
            continue
        if secret_of(m) is None:
            raise PatchConflict(f"{m.get('mountPath')} in container {container} is not a Secret volume "
                                f"(volume {m.get('name')!r}); refusing to remove it")
        doomed.append(i)
    if not doomed:
        return []

    ops: list[dict] = []
    cpath = f"{POD_SPEC}/containers/{idx}"
    ops.append({"op": "test", "path": f"{cpath}/name", "value": container})
    ops.append({"op": "test", "path": f"{cpath}/volumeMounts", "value": copy.deepcopy(mounts)})
    for i in sorted(doomed, reverse=True):
        ops.append({"op": "remove", "path": f"{cpath}/volumeMounts/{i}"})

    # Remove the volumes nothing mounts any more (in any container, init containers included).
    removed_names = {mounts[i].get("name") for i in doomed}
    still_used = set()
    for key in _CONTAINER_LISTS:
        for j, x in enumerate(pod.get(key) or []):
            for k, m in enumerate((x or {}).get("volumeMounts") or []):
                if key == "containers" and j == idx and k in doomed:
                    continue
                still_used.add((m or {}).get("name"))
    vol_idx = [i for i, v in enumerate(volumes) if isinstance(v, dict) and v.get("name") in removed_names - still_used]
    if vol_idx:
        ops.append({"op": "test", "path": f"{POD_SPEC}/volumes", "value": copy.deepcopy(volumes)})
        for i in sorted(vol_idx, reverse=True):
            ops.append({"op": "remove", "path": f"{POD_SPEC}/volumes/{i}"})
    return ops


def mounted_secrets(deployment: dict, container: str = c.GATEWAY_CONTAINER) -> list[dict]:
    """``[{"mount_path", "volume", "secret"}]`` for every Secret volume mounted into ``container``."""
    pod = _pod_spec(deployment)
    _, ctr = find_container(deployment, container)
    by_name = {v.get("name"): v for v in pod.get("volumes") or [] if isinstance(v, dict)}
    out = []
    for m in ctr.get("volumeMounts") or []:
        v = by_name.get((m or {}).get("name"))
        if v and isinstance(v.get("secret"), dict):
            out.append({"mount_path": m.get("mountPath"), "volume": v.get("name"),
                        "secret": v["secret"].get("secretName")})
    return out


# ---------------------------------------------------------------------------------------------
# RFC 6902
# ---------------------------------------------------------------------------------------------

def _tokens(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise JsonPatchError(f"JSON pointer {pointer!r} does not start with '/'")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _index(container: list, token: str, pointer: str, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not re.fullmatch(r"0|[1-9][0-9]*", token):
        raise JsonPatchError(f"{pointer}: {token!r} is not an array index")
    i = int(token)
    if i > len(container) or (i == len(container) and not allow_end):
        raise JsonPatchError(f"{pointer}: index {i} is out of range (length {len(container)})")
    return i


def _resolve(doc: Any, tokens: list[str], pointer: str) -> Any:
    cur = doc
    for t in tokens:
        if isinstance(cur, dict):
            if t not in cur:
                raise JsonPatchError(f"{pointer}: no member {t!r}")
            cur = cur[t]
        elif isinstance(cur, list):
            cur = cur[_index(cur, t, pointer, allow_end=False)]
        else:
            raise JsonPatchError(f"{pointer}: cannot descend into a {type(cur).__name__}")
    return cur


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _add(doc: Any, tokens: list[str], value: Any, pointer: str) -> Any:
    if not tokens:
        return value
    parent = _resolve(doc, tokens[:-1], pointer)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, pointer, allow_end=True), value)
    else:
        raise JsonPatchError(f"{pointer}: cannot add to a {type(parent).__name__}")
    return doc


def _remove(doc: Any, tokens: list[str], pointer: str) -> tuple[Any, Any]:
    if not tokens:
        raise JsonPatchError("cannot remove the whole document")
    parent = _resolve(doc, tokens[:-1], pointer)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise JsonPatchError(f"{pointer}: no member {last!r} to remove")
        return doc, parent.pop(last)
    if isinstance(parent, list):
        return doc, parent.pop(_index(parent, last, pointer, allow_end=False))
    raise JsonPatchError(f"{pointer}: cannot remove from a {type(parent).__name__}")


def apply_json_patch(obj: Any, ops: list[dict]) -> Any:
    """Apply RFC 6902 operations (add, remove, replace, move, copy, test) to a copy of ``obj``.

    All or nothing: any failing operation (a ``test`` included) raises :class:`JsonPatchError`
    and ``obj`` is left untouched.
    """
    doc = copy.deepcopy(obj)
    for n, op in enumerate(ops):
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise JsonPatchError(f"operation {n} needs 'op' and 'path'")
        kind, pointer = op["op"], op["path"]
        tokens = _tokens(pointer)
        if kind in ("add", "replace", "test") and "value" not in op:
            raise JsonPatchError(f"operation {n} ({kind} {pointer}) needs a 'value'")
        if kind == "add":
            doc = _add(doc, tokens, copy.deepcopy(op["value"]), pointer)
        elif kind == "remove":
            doc, _ = _remove(doc, tokens, pointer)
        elif kind == "replace":
            _resolve(doc, tokens, pointer)  # must exist
            doc, _ = _remove(doc, tokens, pointer) if tokens else (doc, None)
            doc = _add(doc, tokens, copy.deepcopy(op["value"]), pointer)
        elif kind in ("move", "copy"):
            if "from" not in op:
                raise JsonPatchError(f"operation {n} ({kind} {pointer}) needs 'from'")
            src = _tokens(op["from"])
            if kind == "move":
                if tokens[:len(src)] == src and len(tokens) > len(src):
                    raise JsonPatchError(f"cannot move {op['from']} into its own child {pointer}")
                doc, value = _remove(doc, src, op["from"])
            else:
                value = copy.deepcopy(_resolve(doc, src, op["from"]))
            doc = _add(doc, tokens, value, pointer)
        elif kind == "test":
            actual = _resolve(doc, tokens, pointer)
            if not _equal(actual, op["value"]):
                raise JsonPatchError(f"test failed at {pointer or '/'}: the object changed since it was read")
        else:
            raise JsonPatchError(f"operation {n}: unknown op {kind!r}")
    return doc
