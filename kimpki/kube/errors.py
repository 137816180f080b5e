"""Every way a Kubernetes API call fails, as one clear line (an :class:`OperationError`).

Two sources: the API server answered with an error (a ``Status`` body: :func:`from_response`),
or no answer came at all (refused, name not found, TLS, timeout, dropped: :func:`from_transport`).
Imports nothing heavy: ``urllib3`` and ``kubernetes`` exceptions are recognised by class name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from kimpki.errors import NotFoundError, OperationError
from kimpki.kube.kinds import Kind


class KubeError(OperationError):
    """A Kubernetes API call failed. ``code`` is the HTTP status (None without an answer)."""

    def __init__(self, message: str, *, code: int | None = None, reason: str | None = None,
                 server_message: str | None = None, details: dict | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.server_message = server_message
        self.details = details or {}


class ConfigError(KubeError):
    """No usable kubeconfig or in-cluster configuration."""


class NoConfigError(ConfigError):
    """No configuration at all (no --kubeconfig, $KUBECONFIG, ~/.kube/config or service account):
    a command that can work without a cluster adds how (``cli.common.no_cluster_hint``)."""


class Unreachable(KubeError):
    """Connection refused, host name unknown, TLS handshake failed."""


class Timeout(KubeError):
    """No connection or no answer within the client timeout."""


class ConnectionLost(KubeError):
    """The connection closed before an answer came (a write may or may not have happened)."""


class Unauthorized(KubeError):
    """401: the credentials were not accepted."""


class Forbidden(KubeError):
    """403: RBAC (or an admission webhook) said no. ``rule`` is the missing RBAC rule."""

    rule: dict | None = None


class NotFound(KubeError, NotFoundError):
    """404: the object does not exist."""


class NamespaceNotFound(NotFound):
    """404: the namespace does not exist."""


class NotServed(NotFound):
    """404: the API server does not serve this group/version/resource (CRD not installed)."""


class AlreadyExists(KubeError):
    """409 AlreadyExists on create."""


class Conflict(KubeError):
    """409 Conflict: the resourceVersion guard failed (someone else wrote first)."""


class Invalid(KubeError):
    """422 (or 400): the API server refused the object's content."""


class ImmutableSecretType(Invalid):
    """A Secret's ``type`` cannot change in place."""


class ServerError(KubeError):
    """5xx from the API server, or 429 Too Many Requests."""


class Expired(KubeError):
    """410 Expired: a list's continue token outlived etcd's compaction. ``what`` names the list."""

    what: str = ""


class Unmanaged(KubeError):
    """The object exists and kimpki does not manage it (write refused without --force)."""


@dataclass(frozen=True)
class Call:
    """What was asked, so that errors can name it."""

    method: str  # GET, POST, PUT, PATCH, DELETE
    kind: Kind
    version: str
    namespace: str | None
    name: str | None
    server: str  # https://host:port
    subresource: str | None = None

    @property
    def verb(self) -> str:
        if self.method == "GET":
            return "get" if self.name else "list"
        return {"POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete" if self.name else "deletecollection"}.get(self.method, self.method.lower())

    @property
    def resource(self) -> str:
        return f"{self.kind.plural}/{self.subresource}" if self.subresource else self.kind.plural

    @property
    def is_write(self) -> bool:
        return self.method not in ("GET", "HEAD")

    @property
    def what(self) -> str:
        """``secrets "kim-credential" in namespace "istio-system"`` and the like."""
        s = self.resource
        if self.name:
            s += f' "{self.name}"'
        if self.kind.namespaced:
            s += f' in namespace "{self.namespace}"' if self.namespace else " in all namespaces"
        return s


def one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_status(body: bytes | str | None) -> dict:
    """The ``Status`` object in an error body, or ``{"message": <text>}`` for other bodies."""
    if not body:
        return {}
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        doc = json.loads(body)
    except ValueError:
        return {"message": one_line(body)}
    if isinstance(doc, dict) and doc.get("kind") == "Status":
        return doc
    return {"message": one_line(body)}


_RBAC_USER = re.compile(r'User "((?:[^"\\]|\\.)*)" cannot ')


def _forbidden(call: Call, message: str, status: dict) -> Forbidden:
    m = _RBAC_USER.search(message)
    if m is None:  # an admission webhook or policy engine, not RBAC
        err = Forbidden(f"forbidden: {one_line(message)}", code=403, reason="Forbidden",
                        server_message=message, details=status.get("details"))
        return err
    user = m.group(1)
    cluster_wide = not call.kind.namespaced or not call.namespace
    where = "at the cluster scope" if cluster_wide else f'in namespace "{call.namespace}"'
    role = "ClusterRole" if cluster_wide else "Role"
    text = (f'forbidden: User "{user}" cannot {call.verb} {call.resource} {where}; '
            f'the {role} needs: apiGroups ["{call.kind.group}"], resources ["{call.resource}"], '
            f'verbs ["{call.verb}"]')
    err = Forbidden(text, code=403, reason="Forbidden", server_message=message, details=status.get("details"))
    err.rule = {"apiGroups": [call.kind.group], "resources": [call.resource], "verbs": [call.verb],
                "namespace": None if cluster_wide else call.namespace, "user": user}
    return err


def _secret_type_change(status: dict) -> bool:
    for cause in ((status.get("details") or {}).get("causes") or []):
        if cause.get("field") == "type" and "immutable" in str(cause.get("message", "")):
            return True
    return bool(re.search(r"\btype: Invalid value: .*field is immutable", status.get("message", "")))


def secret_type_message(namespace: str | None, name: str, old_type: str | None, new_type: str | None) -> str:
    old, new = old_type or "Opaque", new_type or "Opaque"
    fmt = {"kubernetes.io/tls": "tls", "Opaque": "generic"}.get(old)
    choose = f"choose --format {fmt} (the existing type)" if fmt else "choose the same --format as before"
    return (f"Secret {namespace}/{name} has type {old} and a Secret's type can't change in place "
            f"(this one would be {new}): {choose}, or delete the Secret first")


def from_response(call: Call, code: int, body: bytes | str | None, *, retry_after: int | None = None,
                  note: str = "") -> KubeError:
    """The error for an HTTP error answer of the API server. ``retry_after``: the seconds its
    ``Retry-After`` header asked for; ``note``: what kimpki did about it (for 429 and 5xx)."""
    err = _from_response(call, code, body, retry_after)
    if note:
        err.args = (f"{err.args[0]} ({note})",)
    return err


def _from_response(call: Call, code: int, body: bytes | str | None, retry_after: int | None) -> KubeError:
    status = parse_status(body)
    message = one_line(status.get("message") or "")
    reason = status.get("reason") or ""
    details = status.get("details") or {}
    kw = dict(code=code, reason=reason, server_message=message, details=details)
    if code == 401:
        return Unauthorized("the Kubernetes API rejected the credentials (401 Unauthorized): "
                            "check --kubeconfig/--context", **kw)
    if code == 403:
        return _forbidden(call, message or "forbidden", status)
    if code == 404:
        if details.get("kind") == "namespaces" and call.kind.plural != "namespaces":
            return NamespaceNotFound(f'namespace "{details.get("name") or call.namespace}" not found', **kw)
        if details.get("name") or (reason == "NotFound" and message.endswith("not found") and call.name
                                   and f'"{call.name}"' in message):
            where = f' in namespace "{call.namespace}"' if call.kind.namespaced and call.namespace else ""
            return NotFound(f'{call.kind.plural} "{details.get("name") or call.name}" not found{where}', **kw)
        gv = call.kind.api_version(call.version)
        hint = " (is Istio installed, and does it serve this version?)" if "istio.io" in call.kind.group else ""
        return NotServed(f"the Kubernetes API at {call.server} does not serve {call.kind.plural} "
                         f"in {gv}{hint}", **kw)
    if code == 409:
        if reason == "AlreadyExists":
            where = f' in namespace "{call.namespace}"' if call.kind.namespaced and call.namespace else ""
            return AlreadyExists(f'{call.kind.plural} "{call.name or details.get("name")}" already exists{where}',
                                 **kw)
        return Conflict(f"conflict: {message or 'the object was modified by someone else'}", **kw)
    if code in (400, 422):
        if call.kind.kind == "Secret" and _secret_type_change(status):
            return ImmutableSecretType(
                f"Secret {call.namespace}/{call.name}: a Secret's type can't change in place "
                f"({message}); choose the same --format as the existing Secret, or delete it first", **kw)
        label = "invalid" if code == 422 else "bad request"
        return Invalid(f"the Kubernetes API refused to {call.verb} {call.what} ({label}): "
                       f"{message or reason or code}", **kw)
    if code == 410:
        err = Expired(f"the Kubernetes API expired the list of {call.what} (410 {reason or 'Expired'}: "
                      f"{message or 'no message'}): run the command again", **kw)
        err.what = call.what
        return err
    if code == 429:
        after = f", Retry-After {retry_after} s" if retry_after is not None else ""
        return ServerError(f"the Kubernetes API is throttling requests (429 Too Many Requests{after}) on "
                           f"{call.verb} {call.what}: try again later", **kw)
    if code >= 500:
        return ServerError(f"the Kubernetes API failed to {call.verb} {call.what} ({code} "
                           f"{reason or 'error'}): {message or 'no message'}", **kw)
    return KubeError(f"the Kubernetes API answered {code} {reason} to {call.verb} {call.what}: "
                     f"{message or 'no message'}".replace("  ", " "), **kw)


# --------------------------------------------------------------------------- transport errors
def _chain(exc: BaseException):
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack.extend([getattr(e, "reason", None) if isinstance(getattr(e, "reason", None), BaseException) else None,
                      e.__cause__, e.__context__])
        for a in getattr(e, "args", ()):
            if isinstance(a, BaseException):
                stack.append(a)


def _names(exc: BaseException) -> set[str]:
    """Exact class names along the exception chain (urllib3 2 makes NewConnectionError a
    ConnectTimeoutError subclass, so the MRO would mislead)."""
    return {type(e).__name__ for e in _chain(exc)}


_TLS_DETAIL = re.compile(r"(certificate verify failed[^()\]']*|hostname mismatch[^()\]']*|"
                         r"wrong version number|unknown ca|bad certificate|certificate required|"
                         r"handshake failure|sslv3 alert [a-z ]+|tlsv1 alert [a-z ]+)", re.I)


def tls_detail(text: str) -> str:
    m = _TLS_DETAIL.search(text)
    return one_line(m.group(1)).rstrip(" ,.:") if m else one_line(text, 160)


def from_transport(call: Call, exc: BaseException, timeout: float | None) -> KubeError:
    """The error for a request that got no HTTP answer."""
    names = _names(exc)
    texts = " | ".join(str(e) for e in _chain(exc))
    at = f"cannot reach the Kubernetes API at {call.server}"
    if "SSLError" in names or "SSLCertVerificationError" in names or texts.startswith("SSLError") \
            or "CERTIFICATE_VERIFY_FAILED" in texts or "SSLError" in texts:
        return Unreachable(f"{at}: TLS handshake failed ({tls_detail(texts)})")
    if "NameResolutionError" in names or "gaierror" in names or re.search(
            r"Name or service not known|nodename nor servname|Temporary failure in name resolution|"
            r"No address associated", texts):
        from urllib.parse import urlsplit

        host = urlsplit(call.server).hostname or call.server
        return Unreachable(f"{at}: host name {host} not found (DNS)")
    if "ConnectionRefusedError" in names or "Connection refused" in texts:
        return Unreachable(f"{at}: connection refused")
    if "ConnectTimeoutError" in names or (("TimeoutError" in names or "timeout" in names)
                                          and "NewConnectionError" in names):
        return Timeout(f"{at}: no connection within {timeout:g} s")
    if "ReadTimeoutError" in names or "TimeoutError" in names or "timeout" in names:
        return Timeout(f"the Kubernetes API at {call.server} did not answer {call.verb} {call.what} "
                       f"within {timeout:g} s" + ("; the change may or may not have been applied"
                                                  if call.is_write else ""))
    if "NewConnectionError" in names:
        m = re.search(r"\[Errno -?\d+\] ([^'\")]+)", texts)
        return Unreachable(f"{at}: {m.group(1).strip().lower() if m else 'connection failed'}")
    if names & {"ProtocolError", "RemoteDisconnected", "ConnectionResetError", "BrokenPipeError",
                "IncompleteRead", "ConnectionAbortedError"}:
        return ConnectionLost(f"the connection to the Kubernetes API at {call.server} closed before it answered "
                              f"{call.verb} {call.what}" + ("; the change may or may not have been applied"
                                                            if call.is_write else ""))
    return KubeError(f"request to the Kubernetes API at {call.server} failed ({call.verb} {call.what}): "
                     f"{type(exc).__name__}: {one_line(str(exc), 200)}")
