"""Kubernetes ``Status`` error bodies, built the way k8s.io/apimachinery builds them.

Each constructor mirrors a function of ``k8s.io/apimachinery/pkg/api/errors``
(``NewNotFound``, ``NewAlreadyExists``, ``NewConflict``, ``NewInvalid``,
``NewForbidden``, ``NewGenericServerResponse``, ...) so that messages, reasons
and ``details`` have exactly the shape a real kube-apiserver sends.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field as dc_field
from typing import Any

OPTIMISTIC_LOCK_MSG = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


# apiserver/pkg/storage/etcd3/errors.go
EXPIRED_LIST = "The resourceVersion for the provided list is too old."
INCONSISTENT_CONTINUE = (
    "The provided continue parameter is too old to display a consistent list result. You can start a "
    "new list without the continue parameter, or use the continue token in this response to retrieve "
    "the remainder of the results. Continuing with the provided token results in an inconsistent list - "
    "objects that were created, modified, or deleted between the time the first chunk was returned and "
    "now may show up in the list."
)


def go_quote(value: str) -> str:
    """Approximate Go's ``%q`` for a string (close enough for k8s names/keys)."""
    return json.dumps(value, ensure_ascii=False)


def qualified(resource: str, group: str) -> str:
    """``schema.GroupResource.String()``: ``secrets`` / ``deployments.apps``."""
    return f"{resource}.{group}" if group else resource


class ApiError(Exception):
    """An error answered to the client as a ``Status`` object."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or {}

    def status(self) -> dict:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
        }
        if self.reason:
            body["reason"] = self.reason
        if self.details is not None:
            body["details"] = self.details
        body["code"] = self.code
        return body


def _details(name: str, group: str, kind: str, **extra) -> dict:
    # metav1.StatusDetails field order: name, group, kind, uid, causes, retryAfterSeconds;
    # every field is omitempty.
    d: dict[str, Any] = {}
    if name:
        d["name"] = name
    if group:
        d["group"] = group
    if kind:
        d["kind"] = kind
    for k in ("uid", "causes", "retryAfterSeconds"):
        if extra.get(k):
            d[k] = extra[k]
    return d


def not_found(resource: str, group: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f"{qualified(resource, group)} {go_quote(name)} not found",
                    _details(name, group, resource))


def already_exists(resource: str, group: str, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists",
                    f"{qualified(resource, group)} {go_quote(name)} already exists",
                    _details(name, group, resource))


def conflict(resource: str, group: str, name: str, err: str = OPTIMISTIC_LOCK_MSG) -> ApiError:
    return ApiError(409, "Conflict",
                    f"Operation cannot be fulfilled on {qualified(resource, group)} {go_quote(name)}: {err}",
                    _details(name, group, resource))


def forbidden(resource: str, group: str, name: str, err: str) -> ApiError:
    qr = qualified(resource, group)
    if not resource:
        msg = f"forbidden: {err}"
    elif not name:
        msg = f"{qr} is forbidden: {err}"
    else:
        msg = f"{qr} {go_quote(name)} is forbidden: {err}"
    return ApiError(403, "Forbidden", msg, _details(name, group, resource))


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def method_not_supported(resource: str, group: str, action: str) -> ApiError:
    return ApiError(405, "MethodNotAllowed",
                    f"{action} is not supported on resources of kind {go_quote(qualified(resource, group))}",
                    _details("", group, resource))


def internal_error(message: str) -> ApiError:
    return ApiError(500, "InternalError", f"Internal error occurred: {message}",
                    {"causes": [{"message": message}]})


_GENERIC = {
    400: ("BadRequest", "the server rejected our request for an unknown reason"),
    401: ("Unauthorized", "the server has asked for the client to provide credentials"),
    404: ("NotFound", "the server could not find the requested resource"),
    405: ("MethodNotAllowed", "the server does not allow this method on the requested resource"),
    422: ("Invalid", "the server rejected our request due to an error in our request"),
    429: ("TooManyRequests", "the server has received too many requests and has asked us to try again later"),
    504: ("Timeout", "the server was unable to return a response in the time allotted, but may still be processing the request"),
}


def generic(code: int, server_message: str = "", verb: str = "") -> ApiError:
    """``NewGenericServerResponse(code, verb, GroupResource{}, "", msg, 0, false)``.

    With an empty GroupResource and name, ``details`` serialises as ``{}``.
    """
    if code == 409:
        reason = "AlreadyExists" if verb == "POST" else "Conflict"
        message = "the server reported a conflict"
    elif code == 403:
        reason, message = "Forbidden", server_message
    elif code in _GENERIC:
        reason, message = _GENERIC[code]
    elif code >= 500:
        reason = "InternalError"
        message = f"an error on the server ({go_quote(server_message)}) has prevented the request from succeeding"
    else:
        reason = ""
        message = f"the server responded with the status code {code} but did not return more information"
    return ApiError(code, reason, message, {})


def unsupported_media_type(accepted: list[str]) -> ApiError:
    return ApiError(415, "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types include: "
                    + ", ".join(accepted))


# --------------------------------------------------------------------------- field errors
@dataclass
class FieldError:
    """``k8s.io/apimachinery/pkg/util/validation/field.Error``."""

    type: str  # FieldValueInvalid, FieldValueRequired, FieldValueTooLong, FieldValueForbidden, ...
    field: str
    bad_value: Any = None
    detail: str = ""
    _omit_value: bool = dc_field(default=False, repr=False)

    _TYPE_TEXT = {
        "FieldValueNotFound": "Not found",
        "FieldValueRequired": "Required value",
        "FieldValueDuplicate": "Duplicate value",
        "FieldValueInvalid": "Invalid value",
        "FieldValueNotSupported": "Unsupported value",
        "FieldValueForbidden": "Forbidden",
        "FieldValueTooLong": "Too long",
        "FieldValueTooMany": "Too many",
        "InternalError": "Internal error",
        "FieldValueTypeInvalid": "Invalid value",
    }

    def body(self) -> str:
        text = self._TYPE_TEXT.get(self.type, self.type)
        if self.type in ("FieldValueRequired", "FieldValueForbidden", "FieldValueTooLong",
                         "InternalError") or self._omit_value:
            s = text
        else:
            v = self.bad_value
            if v is None:
                s = f"{text}: null"
            elif isinstance(v, bool):
                s = f"{text}: {'true' if v else 'false'}"
            elif isinstance(v, (int, float)) and not isinstance(v, GoLiteral):
                s = f"{text}: {v}"
            elif isinstance(v, GoLiteral):
                s = f"{text}: {v}"
            elif isinstance(v, str):
                s = f"{text}: {go_quote(v)}"
            else:
                s = f"{text}: {v!r}"
        if self.detail:
            s += f": {self.detail}"
        return s

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"


class GoLiteral(str):
    """A bad value printed verbatim (as Go's ``%#v`` would print it)."""


def invalid(kind: str, group: str, name: str, errs: list[FieldError]) -> ApiError:
    """``NewInvalid(GroupKind{group, kind}, name, errs)``."""
    causes = []
    for e in errs:
        c = {"reason": e.type, "message": e.body()}
        if e.field:
            c["field"] = e.field
        causes.append(c)
    if len(errs) == 1:
        agg = str(errs[0])
    else:
        agg = "[" + ", ".join(str(e) for e in errs) + "]"
    gk = f"{kind}.{group}" if group else kind
    details = _details(name, group, kind, causes=causes)
    return ApiError(422, "Invalid", f"{gk} {go_quote(name)} is invalid: {agg}", details)
