"""Just enough of the Kubernetes protobuf wire format to read the bodies kubectl's typed
clients send (``kubectl create secret|configmap|namespace`` POST
``application/vnd.kubernetes.protobuf``). Responses are always JSON, which kubectl accepts.

Envelope: the magic ``k8s\\x00`` followed by a ``runtime.Unknown`` message
(1: TypeMeta{1: apiVersion, 2: kind}, 2: raw, 3: contentEncoding, 4: contentType).
Field numbers are those of k8s.io/api/core/v1/generated.proto and
k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto.
"""

from __future__ import annotations

import base64
import datetime as dt

MAGIC = b"k8s\x00"


class ProtobufError(ValueError):
    pass


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise ProtobufError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def fields(buf: bytes) -> list[tuple[int, int, object]]:
    """Parse one message into (field number, wire type, value) triples."""
    out = []
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt == 2:
            n, i = _varint(buf, i)
            v = buf[i:i + n]
            if len(v) != n:
                raise ProtobufError("truncated field")
            i += n
        elif wt == 1:
            v = buf[i:i + 8]
            i += 8
        elif wt == 5:
            v = buf[i:i + 4]
            i += 4
        else:
            raise ProtobufError(f"unsupported wire type {wt}")
        out.append((num, wt, v))
    return out


def _str(v) -> str:
    return bytes(v).decode()


def _map(entries: list[bytes], value_bytes: bool = False) -> dict:
    out = {}
    for e in entries:
        k, val = "", b""
        for num, _, v in fields(e):
            if num == 1:
                k = _str(v)
            elif num == 2:
                val = v
        out[k] = base64.b64encode(bytes(val)).decode() if value_bytes else _str(val)
    return out


def _time(buf: bytes) -> str | None:
    secs = 0
    for num, _, v in fields(buf):
        if num == 1:
            secs = v
    if not secs:
        return None
    return dt.datetime.fromtimestamp(secs, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _owner_ref(buf: bytes) -> dict:
    names = {1: "kind", 3: "name", 4: "uid", 5: "apiVersion"}
    out: dict = {}
    for num, _, v in fields(buf):
        if num in names:
            out[names[num]] = _str(v)
        elif num == 6:
            out["controller"] = bool(v)
        elif num == 7:
            out["blockOwnerDeletion"] = bool(v)
    return out


def object_meta(buf: bytes) -> dict:
    strings = {1: "name", 2: "generateName", 3: "namespace", 4: "selfLink", 5: "uid", 6: "resourceVersion"}
    meta: dict = {}
    labels, annotations, owners, finalizers = [], [], [], []
    for num, _, v in fields(buf):
        if num in strings:
            s = _str(v)
            if s:
                meta[strings[num]] = s
        elif num == 7 and v:
            meta["generation"] = v
        elif num == 8:
            t = _time(v)
            if t:
                meta["creationTimestamp"] = t
        elif num == 11:
            labels.append(v)
        elif num == 12:
            annotations.append(v)
        elif num == 13:
            owners.append(_owner_ref(v))
        elif num == 14:
            finalizers.append(_str(v))
    if labels:
        meta["labels"] = _map(labels)
    if annotations:
        meta["annotations"] = _map(annotations)
    if owners:
        meta["ownerReferences"] = owners
    if finalizers:
        meta["finalizers"] = finalizers
    return meta


def _secret(buf: bytes) -> dict:
    obj: dict = {"metadata": {}}
    data, string_data = [], []
    for num, _, v in fields(buf):
        if num == 1:
            obj["metadata"] = object_meta(v)
        elif num == 2:
            data.append(v)
        elif num == 3 and v:
            obj["type"] = _str(v)
        elif num == 4:
            string_data.append(v)
        elif num == 5:
            obj["immutable"] = bool(v)
    if data:
        obj["data"] = _map(data, value_bytes=True)
    if string_data:
        obj["stringData"] = _map(string_data)
    return obj


def _configmap(buf: bytes) -> dict:
    obj: dict = {"metadata": {}}
    data, binary = [], []
    for num, _, v in fields(buf):
        if num == 1:
            obj["metadata"] = object_meta(v)
        elif num == 2:
            data.append(v)
        elif num == 3:
            binary.append(v)
        elif num == 4:
            obj["immutable"] = bool(v)
    if data:
        obj["data"] = _map(data)
    if binary:
        obj["binaryData"] = _map(binary, value_bytes=True)
    return obj


def _namespace(buf: bytes) -> dict:
    obj: dict = {"metadata": {}}
    for num, _, v in fields(buf):
        if num == 1:
            obj["metadata"] = object_meta(v)
        elif num == 2:
            fin = [_str(x) for n, _, x in fields(v) if n == 1]
            obj["spec"] = {"finalizers": fin} if fin else {}
    return obj


DECODERS = {("v1", "Secret"): _secret, ("v1", "ConfigMap"): _configmap, ("v1", "Namespace"): _namespace}


def decode(body: bytes) -> dict:
    """Decode a protobuf-encoded object into its JSON (dict) form."""
    if not body.startswith(MAGIC):
        raise ProtobufError("missing k8s protobuf magic prefix")
    api_version = kind = ""
    raw = b""
    for num, _, v in fields(body[len(MAGIC):]):
        if num == 1:
            for n, _, x in fields(v):
                if n == 1:
                    api_version = _str(x)
                elif n == 2:
                    kind = _str(x)
        elif num == 2:
            raw = v
    dec = DECODERS.get((api_version, kind))
    if dec is None:
        raise ProtobufError(f"protobuf bodies of {api_version} {kind} are not supported by the stand-in")
    obj = {"apiVersion": api_version, "kind": kind}
    obj.update(dec(bytes(raw)))
    return obj
