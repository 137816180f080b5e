"""Defaulting and validation for the built-in kinds served, after pkg/apis/core/validation.

Only the rules kimpki can run into are implemented (see README.md).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from typing import Any

from .errors import ApiError, FieldError, GoLiteral, bad_request, go_quote

MAX_SECRET_SIZE = 1024 * 1024  # core.MaxSecretSize
DNS1123_SUBDOMAIN_MAX = 253
DNS1123_LABEL_MAX = 63

_CONFIG_KEY_FMT = r"[-._a-zA-Z0-9]+"
_CONFIG_KEY_RE = re.compile(r"\A" + _CONFIG_KEY_FMT + r"\Z")
_CONFIG_KEY_MSG = "a valid config key must consist of alphanumeric characters, '-', '_' or '.'"

_LABEL_FMT = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN_FMT = _LABEL_FMT + r"(\." + _LABEL_FMT + r")*"
_LABEL_RE = re.compile(r"\A" + _LABEL_FMT + r"\Z")
_SUBDOMAIN_RE = re.compile(r"\A" + _SUBDOMAIN_FMT + r"\Z")


def regex_error(msg: str, fmt: str, *examples: str) -> str:
    """``validation.RegexError`` -- including its odd double spaces."""
    if not examples:
        return f"{msg} (regex used for validation is '{fmt}')"
    msg += " (e.g. "
    for i, ex in enumerate(examples):
        if i > 0:
            msg += " or "
        msg += f"'{ex}', "
    return msg + f"regex used for validation is '{fmt}')"


def is_config_map_key(value: str) -> list[str]:
    errs = []
    if len(value.encode()) > DNS1123_SUBDOMAIN_MAX:
        errs.append(f"must be no more than {DNS1123_SUBDOMAIN_MAX} characters")
    if not _CONFIG_KEY_RE.match(value):
        errs.append(regex_error(_CONFIG_KEY_MSG, _CONFIG_KEY_FMT, "key.name", "KEY_NAME", "key-name"))
    if value == ".":
        errs.append("must not be '.'")
    elif value == "..":
        errs.append("must not be '..'")
    elif value.startswith(".."):
        errs.append("must not start with '..'")
    return errs


def is_dns1123_subdomain(value: str) -> list[str]:
    errs = []
    if len(value) > DNS1123_SUBDOMAIN_MAX:
        errs.append(f"must be no more than {DNS1123_SUBDOMAIN_MAX} characters")
    if not _SUBDOMAIN_RE.match(value):
        errs.append(regex_error(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
            "'-' or '.', and must start and end with an alphanumeric character",
            _SUBDOMAIN_FMT, "example.com"))
    return errs


def is_dns1123_label(value: str) -> list[str]:
    errs = []
    if len(value) > DNS1123_LABEL_MAX:
        errs.append(f"must be no more than {DNS1123_LABEL_MAX} characters")
    if not _LABEL_RE.match(value):
        errs.append(regex_error(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
            "and must start and end with an alphanumeric character",
            _LABEL_FMT, "my-name", "123-abc"))
    return errs


def validate_object_meta(meta: dict, label_names: bool = False) -> list[FieldError]:
    errs: list[FieldError] = []
    name = meta.get("name") or ""
    if not name and not meta.get("generateName"):
        errs.append(FieldError("FieldValueRequired", "metadata.name", "",
                               "name or generateName is required"))
    elif name:
        check = is_dns1123_label if label_names else is_dns1123_subdomain
        for msg in check(name):
            errs.append(FieldError("FieldValueInvalid", "metadata.name", name, msg))
    return errs


# --------------------------------------------------------------------------- base64
_B64 = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
_B64_FAST = re.compile(r"\A[A-Za-z0-9+/]*={0,2}\Z")


def go_b64_error_offset(s: str) -> int | None:
    """Where Go's ``base64.StdEncoding`` reports ``illegal base64 data at input byte N``.

    Returns None when ``s`` decodes. ``\\r`` and ``\\n`` are skipped like Go does.
    """
    chars = [(i, c) for i, c in enumerate(s) if c not in "\r\n"]
    n = len(chars)
    q = 0
    while q < n:
        quantum = chars[q:q + 4]
        for j, (i, c) in enumerate(quantum):
            if c == "=":
                if j < 2:
                    return i
                # padding: "x=" at j==2 needs another "=", then nothing after
                if j == 2:
                    if len(quantum) < 4:
                        return len(s)
                    if quantum[3][1] != "=":
                        return i
                if q + 4 < n:
                    return chars[q + 4][0]
                return None
            if c not in _B64:
                return i
        if len(quantum) < 4:
            return quantum[0][0] if quantum else None
        q += 4
    return None


def decode_b64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError("json: cannot unmarshal non-string into Go value of type []byte")
    if len(value) % 4 == 0 and _B64_FAST.match(value):
        return base64.b64decode(value)
    off = go_b64_error_offset(value)
    if off is not None:
        raise ValueError(f"illegal base64 data at input byte {off}")
    clean = value.replace("\r", "").replace("\n", "")
    try:
        return base64.b64decode(clean, validate=True)
    except binascii.Error as e:  # pragma: no cover - offsets above catch these
        raise ValueError(f"illegal base64 data at input byte 0 ({e})") from None


# --------------------------------------------------------------------------- Secret
def normalize_secret(obj: dict, api_version: str = "v1", decode: bool = True) -> dict[str, bytes]:
    """Decode the wire form like the v1 -> internal conversion does.

    Merges ``stringData`` into ``data`` (stringData wins), drops ``stringData``,
    defaults ``type`` to ``Opaque`` and canonicalises base64. Returns the decoded data.
    Raises 400 (``Secret in version "v1" cannot be handled as a Secret: ...``) for
    undecodable values, as the real decoder does.
    """
    raw = obj.get("data") or {}
    if not isinstance(raw, dict):
        raise bad_request(f'Secret in version "{api_version}" cannot be handled as a Secret: '
                          "json: cannot unmarshal into Go struct field Secret.data of type map[string][]uint8")
    if not decode and "stringData" not in obj and all(
            isinstance(v, str) and len(v) % 4 == 0 and _B64_FAST.match(v) for v in raw.values()):
        # Already canonical wire form (the seeding fast path): nothing to rewrite.
        if not obj.get("type"):
            obj["type"] = "Opaque"
        if not raw:
            obj.pop("data", None)
        return {}
    decoded: dict[str, bytes] = {}
    for k, v in raw.items():
        if v is None:
            decoded[k] = b""
            continue
        try:
            decoded[k] = decode_b64(v)
        except ValueError as e:
            raise bad_request(f'Secret in version "{api_version}" cannot be handled as a Secret: {e}') from None
    sd = obj.pop("stringData", None) or {}
    if not isinstance(sd, dict):
        raise bad_request(f'Secret in version "{api_version}" cannot be handled as a Secret: '
                          "json: cannot unmarshal into Go struct field Secret.stringData of type map[string]string")
    for k, v in sd.items():
        decoded[k] = ("" if v is None else str(v)).encode()
    if decoded or "data" in obj:
        obj["data"] = {k: base64.b64encode(v).decode() for k, v in decoded.items()}
    if not obj.get("data"):
        obj.pop("data", None)
    if not obj.get("type"):
        obj["type"] = "Opaque"
    return decoded


def validate_secret(obj: dict, decoded: dict[str, bytes]) -> list[FieldError]:
    errs = validate_object_meta(obj.get("metadata") or {})
    total = 0
    for key in sorted(decoded):
        for msg in is_config_map_key(key):
            errs.append(FieldError("FieldValueInvalid", f"data[{key}]", key, msg))
        total += len(decoded[key])
    if total > MAX_SECRET_SIZE:
        errs.append(FieldError("FieldValueTooLong", "data", "",
                               f"must have at most {MAX_SECRET_SIZE} bytes"))
    stype = obj.get("type")
    if stype == "kubernetes.io/tls":
        for k in ("tls.crt", "tls.key"):
            if k not in decoded:
                errs.append(FieldError("FieldValueRequired", f"data[{k}]"))
    elif stype == "kubernetes.io/basic-auth":
        if "username" not in decoded and "password" not in decoded:
            errs.append(FieldError("FieldValueRequired", "data[username]"))
            errs.append(FieldError("FieldValueRequired", "data[password]"))
    elif stype == "kubernetes.io/ssh-auth":
        if "ssh-privatekey" not in decoded:
            errs.append(FieldError("FieldValueRequired", "data[ssh-privatekey]"))
    elif stype == "kubernetes.io/dockerconfigjson":
        if ".dockerconfigjson" not in decoded:
            errs.append(FieldError("FieldValueRequired", "data[.dockerconfigjson]"))
    elif stype == "kubernetes.io/service-account-token":
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        if not annotations.get("kubernetes.io/service-account.name"):
            errs.append(FieldError("FieldValueRequired",
                                   "metadata.annotations[kubernetes.io/service-account.name]"))
    return errs


def validate_secret_update(new: dict, old: dict, decoded: dict[str, bytes]) -> list[FieldError]:
    errs: list[FieldError] = []
    if new.get("type") != old.get("type"):
        errs.append(FieldError("FieldValueInvalid", "type", new.get("type"), "field is immutable"))
    if old.get("immutable") is True:
        if new.get("immutable") is not True:
            errs.append(FieldError("FieldValueForbidden", "immutable", None,
                                   "field is immutable when `immutable` is set"))
        if (new.get("data") or {}) != (old.get("data") or {}):
            errs.append(FieldError("FieldValueForbidden", "data", None,
                                   "field is immutable when `immutable` is set"))
    errs.extend(validate_secret(new, decoded))
    return errs


# --------------------------------------------------------------------------- ConfigMap
def validate_configmap(obj: dict) -> list[FieldError]:
    errs = validate_object_meta(obj.get("metadata") or {})
    for section in ("data", "binaryData"):
        for key in sorted(obj.get(section) or {}):
            for msg in is_config_map_key(key):
                errs.append(FieldError("FieldValueInvalid", f"{section}[{key}]", key, msg))
    both = set(obj.get("data") or {}) & set(obj.get("binaryData") or {})
    for key in sorted(both):
        errs.append(FieldError("FieldValueInvalid", f"data[{key}]", key,
                               "duplicate of key present in binaryData"))
    # ValidateConfigMap: data values by their length, binaryData by their decoded bytes; the
    # error is on the whole object (path "")
    total = sum(len(str(v).encode()) for v in (obj.get("data") or {}).values())
    for v in (obj.get("binaryData") or {}).values():
        try:
            total += len(base64.b64decode(str(v)))
        except ValueError:
            total += len(str(v))
    if total > MAX_SECRET_SIZE:
        errs.append(FieldError("FieldValueTooLong", "", "", f"must have at most {MAX_SECRET_SIZE} bytes"))
    return errs


def validate_configmap_update(new: dict, old: dict) -> list[FieldError]:
    errs: list[FieldError] = []
    if old.get("immutable") is True:
        if new.get("immutable") is not True:
            errs.append(FieldError("FieldValueForbidden", "immutable", None,
                                   "field is immutable when `immutable` is set"))
        if (new.get("data") or {}) != (old.get("data") or {}):
            errs.append(FieldError("FieldValueForbidden", "data", None,
                                   "field is immutable when `immutable` is set"))
        if (new.get("binaryData") or {}) != (old.get("binaryData") or {}):
            errs.append(FieldError("FieldValueForbidden", "binaryData", None,
                                   "field is immutable when `immutable` is set"))
    return errs + validate_configmap(new)


# --------------------------------------------------------------------------- Deployment
def _image_pull_policy(image: str) -> str:
    tail = image.rsplit("/", 1)[-1]
    if "@" in tail:
        return "IfNotPresent"
    if ":" not in tail or tail.endswith(":latest"):
        return "Always"
    return "IfNotPresent"


def default_pod_spec(spec: dict) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or []:
            if not isinstance(c, dict):
                continue
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            if isinstance(c.get("image"), str):
                c.setdefault("imagePullPolicy", _image_pull_policy(c["image"]))
            for p in c.get("ports") or []:
                if isinstance(p, dict):
                    p.setdefault("protocol", "TCP")
    for v in spec.get("volumes") or []:
        if isinstance(v, dict):
            for src in ("secret", "configMap"):
                if isinstance(v.get(src), dict):
                    v[src].setdefault("defaultMode", 420)


def default_deployment(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    spec.setdefault("replicas", 1)
    strategy = spec.setdefault("strategy", {})
    if isinstance(strategy, dict):
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            ru = strategy.setdefault("rollingUpdate", {})
            if isinstance(ru, dict):
                ru.setdefault("maxUnavailable", "25%")
                ru.setdefault("maxSurge", "25%")
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    tmpl = spec.get("template")
    if isinstance(tmpl, dict):
        tmpl.setdefault("metadata", {})
        if isinstance(tmpl.get("spec"), dict):
            default_pod_spec(tmpl["spec"])


def _go_map(d: dict) -> str:
    inner = ", ".join(f'"{k}":"{v}"' for k, v in sorted(d.items()))
    return "map[string]string{" + inner + "}"


def validate_deployment(obj: dict) -> list[FieldError]:
    errs = validate_object_meta(obj.get("metadata") or {})
    spec = obj.get("spec") or {}
    selector = spec.get("selector")
    tmpl = spec.get("template") or {}
    labels = ((tmpl.get("metadata") or {}).get("labels")) or {}
    if not selector:
        errs.append(FieldError("FieldValueRequired", "spec.selector"))
    else:
        ml = selector.get("matchLabels") or {}
        if not ml and not selector.get("matchExpressions"):
            errs.append(FieldError("FieldValueInvalid", "spec.selector",
                                   GoLiteral("v1.LabelSelector{MatchLabels:map[string]string(nil), MatchExpressions:[]v1.LabelSelectorRequirement(nil)}"),
                                   "empty selector is invalid for deployment"))
        elif any(labels.get(k) != v for k, v in ml.items()):
            errs.append(FieldError("FieldValueInvalid", "spec.template.metadata.labels",
                                   GoLiteral(_go_map(labels)), "`selector` does not match template `labels`"))
    pod = tmpl.get("spec") or {}
    volumes = validate_volumes(pod.get("volumes") or [], "spec.template.spec.volumes", errs)
    containers = pod.get("containers") or []
    if not containers:
        errs.append(FieldError("FieldValueRequired", "spec.template.spec.containers"))
    for key in ("containers", "initContainers"):  # ValidatePodSpec's order
        for i, c in enumerate(pod.get(key) or []):
            if isinstance(c, dict):
                validate_volume_mounts(c.get("volumeMounts") or [], volumes,
                                       f"spec.template.spec.{key}[{i}].volumeMounts", errs)
    replicas = spec.get("replicas")
    if isinstance(replicas, int) and replicas < 0:
        errs.append(FieldError("FieldValueInvalid", "spec.replicas", replicas,
                               "must be greater than or equal to 0"))
    return errs


def validate_volumes(volumes: list, path: str, errs: list[FieldError]) -> set[str]:
    """``ValidateVolumes`` (pkg/apis/core/validation): names are required DNS-1123 labels and
    unique. Returns the names of the volumes that validated, which mounts may name."""
    names: set[str] = set()
    for i, vol in enumerate(volumes):
        if not isinstance(vol, dict):
            continue
        name = vol.get("name") or ""
        name_path = f"{path}[{i}].name"
        ok = True
        if not name:
            errs.append(FieldError("FieldValueRequired", name_path))
            ok = False
        else:
            for msg in is_dns1123_label(name):
                errs.append(FieldError("FieldValueInvalid", name_path, name, msg))
                ok = False
        if name in names:
            errs.append(FieldError("FieldValueDuplicate", name_path, name))
        elif ok:
            names.add(name)
    return names


def validate_volume_mounts(mounts: list, volumes: set[str], path: str, errs: list[FieldError]) -> None:
    """``ValidateVolumeMounts``: each mount names an existing volume, has a mountPath, and no two
    mounts of one container share a mountPath."""
    seen: set[str] = set()
    for i, m in enumerate(mounts):
        if not isinstance(m, dict):
            continue
        name, mount_path = m.get("name") or "", m.get("mountPath") or ""
        if not name:
            errs.append(FieldError("FieldValueRequired", f"{path}[{i}].name"))
        if name not in volumes:
            errs.append(FieldError("FieldValueNotFound", f"{path}[{i}].name", name))
        if not mount_path:
            errs.append(FieldError("FieldValueRequired", f"{path}[{i}].mountPath"))
        if mount_path in seen:
            errs.append(FieldError("FieldValueInvalid", f"{path}[{i}].mountPath", mount_path, "must be unique"))
        seen.add(mount_path)


def validate_deployment_update(new: dict, old: dict) -> list[FieldError]:
    errs = validate_deployment(new)
    if (new.get("spec") or {}).get("selector") != (old.get("spec") or {}).get("selector"):
        errs.append(FieldError("FieldValueInvalid", "spec.selector",
                               GoLiteral(repr((new.get("spec") or {}).get("selector"))), "field is immutable"))
    return errs


# --------------------------------------------------------------------------- Lease
# metav1.RFC3339Micro: MicroTime fields (renewTime, acquireTime) are parsed with Go's
# time.Parse against this layout, which needs exactly six fractional digits.
RFC3339_MICRO = "2006-01-02T15:04:05.000000Z07:00"
_MICRO_TIME_FIELDS = ("acquireTime", "renewTime")
_DAYS_IN = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


class GoTimeParseError(ValueError):
    """``time.ParseError``'s text."""

    def __init__(self, value: str, layout_elem: str = "", value_elem: str = "", message: str = ""):
        if message:
            text = f"parsing time {go_quote(value)}{message}"
        else:
            text = (f"parsing time {go_quote(value)} as {go_quote(RFC3339_MICRO)}: "
                    f"cannot parse {go_quote(value_elem)} as {go_quote(layout_elem)}")
        super().__init__(text)


def parse_micro_time(value: str) -> dt.datetime:
    """``time.Parse(RFC3339Micro, value)`` as Go does it, step by step through the layout, with
    Go's error texts (a literal or number that does not fit, a value out of range, extra text)."""
    rest = value
    fields: dict[str, int] = {}
    # (layout element, field name, digits) for numbers; (literal, None, 0) for separators
    steps = [("2006", "year", 4), ("-", None, 0), ("01", "month", 2), ("-", None, 0), ("02", "day", 2),
             ("T", None, 0), ("15", "hour", 2), (":", None, 0), ("04", "minute", 2), (":", None, 0),
             ("05", "second", 2)]
    limits = {"month": (1, 12), "day": (0, 31), "hour": (0, 23), "minute": (0, 59), "second": (0, 59)}
    for elem, name, digits in steps:
        if name is None:
            if not rest.startswith(elem):
                raise GoTimeParseError(value, elem, rest)
            rest = rest[len(elem):]
            continue
        if len(rest) < digits or not rest[:digits].isdigit() or not rest[:digits].isascii():
            raise GoTimeParseError(value, elem, rest)
        fields[name], rest = int(rest[:digits]), rest[digits:]
        lo, hi = limits.get(name, (0, 9999))
        if not lo <= fields[name] <= hi:  # Go checks each range as soon as the number is read
            raise GoTimeParseError(value, message=f": {name} out of range")
    # ".000000": exactly six digits after a '.' (or ',')
    frac = rest[:7]
    if len(rest) < 7 or frac[0] not in ".," or not frac[1:].isdigit() or not frac[1:].isascii():
        raise GoTimeParseError(value, ".000000", rest)
    micro, rest = int(frac[1:]), rest[7:]
    # "Z07:00": Z, or ±hh:mm
    if rest.startswith("Z"):
        offset, rest = dt.timedelta(0), rest[1:]
    else:
        m = re.match(r"([+-])(\d\d):(\d\d)", rest)
        if not m:
            raise GoTimeParseError(value, "Z07:00", rest)
        hours, minutes = int(m.group(2)), int(m.group(3))
        if hours > 24 or minutes > 60:  # Go's test is ">": offsets of 24 h or 60 min are accepted
            which = "minute" if minutes > 60 else "hour"
            raise GoTimeParseError(value, message=f": time zone offset {which} out of range")
        sign = -1 if m.group(1) == "-" else 1
        offset, rest = sign * dt.timedelta(hours=hours, minutes=minutes), rest[6:]
    if rest:
        raise GoTimeParseError(value, message=f": extra text: {go_quote(rest)}")
    y, mo, d = fields["year"], fields["month"], fields["day"]
    leap = y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    if d < 1 or d > _DAYS_IN[mo - 1] + (1 if mo == 2 and leap else 0):
        raise GoTimeParseError(value, message=": day out of range")
    local = dt.datetime(y, mo, d, fields["hour"], fields["minute"], fields["second"], micro)
    # Python's timezone() refuses a 24 h offset that Go accepts: convert to UTC by hand
    return (local - offset).replace(tzinfo=dt.timezone.utc)


def format_micro_time(t: dt.datetime) -> str:
    """``MicroTime.MarshalJSON``: UTC, RFC3339Micro."""
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def normalize_lease(obj: dict, api_version: str = "v1") -> None:
    """Decode the wire form like the real decoder: the MicroTime fields must parse as
    RFC3339Micro (else 400 ``Lease in version "v1" cannot be handled as a Lease: parsing time
    ...``) and are stored re-encoded in UTC; ``null`` leaves the field unset."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    for key in _MICRO_TIME_FIELDS:
        if key not in spec:
            continue
        value = spec[key]
        if value is None:
            del spec[key]
            continue
        if not isinstance(value, str):
            got = "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else (
                "bool" if isinstance(value, bool) else "object" if isinstance(value, dict) else "array")
            raise bad_request(f'Lease in version "{api_version}" cannot be handled as a Lease: '
                              f"json: cannot unmarshal {got} into Go value of type string")
        try:
            spec[key] = format_micro_time(parse_micro_time(value))
        except GoTimeParseError as e:
            raise bad_request(f'Lease in version "{api_version}" cannot be handled as a Lease: {e}') from None


def validate_lease(obj: dict) -> list[FieldError]:
    """``ValidateLease``/``ValidateLeaseUpdate`` (pkg/apis/coordination/validation)."""
    errs = validate_object_meta(obj.get("metadata") or {})
    spec = obj.get("spec") or {}
    duration = spec.get("leaseDurationSeconds")
    if isinstance(duration, int) and duration <= 0:
        errs.append(FieldError("FieldValueInvalid", "spec.leaseDurationSeconds", duration, "must be greater than 0"))
    transitions = spec.get("leaseTransitions")
    if isinstance(transitions, int) and transitions < 0:
        errs.append(FieldError("FieldValueInvalid", "spec.leaseTransitions", transitions,
                               "must be greater than or equal to 0"))
    if spec.get("preferredHolder") and not spec.get("strategy"):
        errs.append(FieldError("FieldValueForbidden", "spec.preferredHolder", None,
                               "may only be specified if `strategy` is defined"))
    return errs


def raise_if(errs: list[FieldError], kind: str, group: str, name: str) -> None:
    if errs:
        from .errors import invalid

        raise invalid(kind, group, name, errs)


__all__ = [
    "ApiError", "normalize_secret", "validate_secret", "validate_secret_update",
    "validate_configmap", "validate_configmap_update", "default_deployment",
    "validate_deployment", "validate_deployment_update", "validate_object_meta", "raise_if",
    "normalize_lease", "validate_lease", "parse_micro_time", "format_micro_time",
]
