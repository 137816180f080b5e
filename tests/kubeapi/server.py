"""A stand-in Kubernetes API server for tests: real HTTPS on loopback, real REST paths,
``Status`` errors shaped like kube-apiserver's. It is NOT a kube-apiserver; see README.md.

    with KubeApiServer() as srv:
        api = kubernetes.config.new_client_from_config(config_file=srv.kubeconfig_path)
        subprocess.run(["kubectl", "--kubeconfig", srv.kubeconfig_path, "get", "secrets"])
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import random
import secrets as _secrets
import shutil
import socket
import ssl
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

from . import celrules, discovery, errors, fields, openapi, protobuf, rbac, validation
from .errors import ApiError, FieldError, GoLiteral
from .patch import (PatchApplyError, PatchFormatError, apply_json_patch, apply_merge_patch,
                    apply_strategic_merge_patch, decode_json_patch, deepcopy)
from .resources import BY_GVR, BY_KEY, ISTIO_GROUP, ResourceType, for_api_version, lookup
from .selectors import and_preds, parse_field_selector, parse_label_selector
from .store import Record, Store
from .tls import material

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

NAMESPACES = BY_KEY["namespaces"]
PUBLIC_PATHS = ("/version", "/healthz", "/livez", "/readyz")
_GENERATE_CHARS = "bcdfghjklmnpqrstvwxz2456789"


class Request(NamedTuple):
    """One request received: ``srv.requests`` holds these (unpackable as a 3-tuple)."""

    method: str
    path: str
    query: str


@dataclass
class _Ctx:
    """A routed resource request."""

    method: str
    rt: ResourceType
    version: str
    namespace: str  # "" for cluster-scoped / all-namespaces
    name: str
    subresource: str
    verb: str
    query: dict[str, list[str]]
    headers: Any
    user: str
    warnings: list = field(default_factory=list)  # sent back as Warning headers

    def q(self, key: str, default: str | None = None) -> str | None:
        v = self.query.get(key)
        return v[0] if v else default

    @property
    def dry_run(self) -> bool:
        vals = self.query.get("dryRun") or []
        for v in vals:
            if v != "All":
                raise errors.bad_request(f"Invalid dryRun value: {v!r}; supported values: \"All\"")
        return bool(vals)

    @property
    def resource_label(self) -> str:
        return f"{self.rt.plural}/{self.subresource}" if self.subresource else self.rt.plural


class _Response:
    __slots__ = ("code", "body", "content_type", "headers")

    def __init__(self, code: int, body: bytes | str | dict, content_type: str = "application/json",
                 headers: dict | None = None):
        if isinstance(body, dict):
            body = json.dumps(body, separators=(",", ":"))
        if isinstance(body, str):
            body = body.encode()
        self.code = code
        self.body = body
        self.content_type = content_type
        self.headers = headers or {}


_DROP = object()


# --------------------------------------------------------------------------- faults
HOLD_CEILING = 60.0  # seconds a "hold" fault keeps a request at most (a test that forgot to release it)


@dataclass
class FaultHandle:
    """Returned by :meth:`KubeApiServer.fail`. ``fired`` counts how often it struck."""

    method: str | None
    resource: str | None
    name: str | None
    namespace: str | None
    nth: int
    status: int | str
    times: int = 1
    path: str | None = None
    query: str | None = None
    message: str | None = None
    retry_after: int | None = None
    delay: float = 0.0
    seen: int = 0
    fired: int = 0
    requests: list = field(default_factory=list)
    _server: Any = field(default=None, repr=False)
    _gate: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def exhausted(self) -> bool:
        return self.fired >= self.times

    def release(self) -> None:
        """Let the requests a ``"hold"`` fault is holding go on (served normally)."""
        self._gate.set()

    def remove(self) -> None:
        if self._server is not None:
            with self._server._fault_lock:
                if self in self._server._faults:
                    self._server._faults.remove(self)


@dataclass
class DenyHandle:
    verbs: frozenset | None
    resource: str | None
    namespace: str | None
    name: str | None
    group: str | None
    user: str | None
    hits: int = 0
    _server: Any = field(default=None, repr=False)

    def remove(self) -> None:
        if self._server is not None:
            with self._server._fault_lock:
                if self in self._server._denials:
                    self._server._denials.remove(self)


_now_cache: tuple[int, str] = (0, "")


def _now() -> str:
    global _now_cache
    t = int(time.time())
    if _now_cache[0] != t:
        _now_cache = (t, dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return _now_cache[1]


def _meta(obj: dict) -> dict:
    m = obj.get("metadata")
    if m is None:
        m = obj["metadata"] = {}
    if not isinstance(m, dict):
        raise errors.bad_request("metadata must be an object")
    return m


def _order(obj: dict) -> dict:
    """Put ``metadata`` first (kind/apiVersion are added in front on output)."""
    out = {"metadata": obj.get("metadata", {})}
    for k, v in obj.items():
        if k not in ("metadata", "kind", "apiVersion"):
            out[k] = v
    return out


# --------------------------------------------------------------------------- HTTP plumbing
class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr, handler, api: "KubeApiServer", ssl_ctx: ssl.SSLContext):
        self.api = api
        self._ssl_ctx = ssl_ctx
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(addr, handler)

    def get_request(self):
        sock, addr = self.socket.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = self._ssl_ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self._conns_lock:
            self._conns.add(tls)
        return tls, addr

    def shutdown_request(self, request):
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):  # noqa: D401 - keep test output clean
        pass

    def close_all(self):
        with self._conns_lock:
            conns = list(self._conns)
            self._conns.clear()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                c.close()
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kubeapi-standin"
    sys_version = ""
    timeout = 60

    def log_message(self, format, *args):  # noqa: A002
        pass

    def setup(self):
        try:
            self.request.do_handshake()
        except (ssl.SSLError, OSError):
            self.close_connection = True
        super().setup()

    def _read_body(self) -> bytes:
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            chunks = []
            while True:
                line = self.rfile.readline().strip()
                size = int(line.split(b";")[0] or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _serve(self, method: str):
        try:
            body = self._read_body()
        except (OSError, ValueError):
            self.close_connection = True
            return
        resp = self.server.api._handle(method, self.path, self.headers, body)
        if resp is _DROP:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        try:
            self.send_response(resp.code)
            self.send_header("Content-Type", resp.content_type)
            self.send_header("Content-Length", str(len(resp.body)))
            self.send_header("Cache-Control", "no-cache, private")
            self.send_header("X-Content-Type-Options", "nosniff")
            for k, v in resp.headers.items():
                self.send_header(k, v)
            # headers and body in one write (avoids Nagle / delayed-ACK stalls)
            self._headers_buffer.append(b"\r\n")
            self._headers_buffer.append(resp.body)
            self.wfile.write(b"".join(self._headers_buffer))
            self._headers_buffer = []
        except OSError:
            self.close_connection = True

    def do_GET(self):  # noqa: N802
        self._serve("GET")

    def do_POST(self):  # noqa: N802
        self._serve("POST")

    def do_PUT(self):  # noqa: N802
        self._serve("PUT")

    def do_PATCH(self):  # noqa: N802
        self._serve("PATCH")

    def do_DELETE(self):  # noqa: N802
        self._serve("DELETE")


# --------------------------------------------------------------------------- the server
class KubeApiServer:
    """In-process stand-in for kube-apiserver (see module docstring and README.md).

    :param namespaces: namespaces that exist at start.
    :param user: identity the kubeconfig's bearer token authenticates as.
    :param deployment_controller: when true, Deployment writes immediately get a status of a
        completed rollout (``observedGeneration == generation``, all replicas ready), as if
        the controller-manager had run.
    """

    def __init__(self, namespaces: Iterable[str] = ("default", "istio-system", "kube-system"),
                 user: str = "kubernetes-admin", token: str | None = None,
                 deployment_controller: bool = True, workdir: str | None = None):
        self.store = Store()
        self.user = user
        self.token = token or _secrets.token_urlsafe(24)
        # bearer token -> who it authenticates; the kubeconfig's user is a cluster admin
        self._tokens: dict[str, rbac.User] = {self.token: rbac.User(user, (rbac.MASTERS, "system:authenticated"))}
        self._authorizer = rbac.Authorizer(self._rbac_lookup, self._rbac_objects)
        self.deployment_controller = deployment_controller
        self.requests: list[Request] = []
        self.request_log: list[dict] = []
        self._log_lock = threading.Lock()
        self._fault_lock = threading.Lock()
        self._faults: list[FaultHandle] = []
        self._holding: list[FaultHandle] = []  # "hold" faults that struck: released on stop()
        self._denials: list[DenyHandle] = []
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="kubeapi-standin-")
        self.kubeconfig_path = os.path.join(self.workdir, "kubeconfig")
        self.ca_path = os.path.join(self.workdir, "ca.crt")
        self.port: int | None = None
        for ns in namespaces:
            self.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("server not started")
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> "KubeApiServer":
        if self._httpd is not None:
            return self
        tls = material()
        os.makedirs(self.workdir, exist_ok=True)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        cert_file = os.path.join(self.workdir, "server.crt")
        key_file = os.path.join(self.workdir, "server.key")
        with open(cert_file, "wb") as f:
            f.write(tls.cert_pem + tls.ca_pem)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(tls.key_pem)
        with open(self.ca_path, "wb") as f:
            f.write(tls.ca_pem)
        ctx.load_cert_chain(cert_file, key_file)
        ctx.set_alpn_protocols(["http/1.1"])
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler, self, ctx)
        self.port = self._httpd.server_address[1]
        self._write_kubeconfig()
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01},
                                        name=f"kubeapi-standin-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._fault_lock:
            for f in self._faults + self._holding:
                f.release()
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.close_all()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "KubeApiServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _write_kubeconfig(self) -> None:
        ca_b64 = base64.b64encode(material().ca_pem).decode()
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kubeapi-standin",
                          "cluster": {"server": self.url, "certificate-authority-data": ca_b64}}],
            "users": [{"name": "kubeapi-standin-user", "user": {"token": self.token}}],
            "contexts": [{"name": "kubeapi-standin",
                          "context": {"cluster": "kubeapi-standin", "user": "kubeapi-standin-user"}}],
            "current-context": "kubeapi-standin",
            "preferences": {},
        }
        fd = os.open(self.kubeconfig_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(cfg, f, sort_keys=False)

    # ------------------------------------------------------------------ test helpers
    def put_object(self, obj: dict) -> dict:
        """Seed ``obj`` directly (upsert, no validation, no faults). The server sets uid,
        creationTimestamp (unless given) and a fresh resourceVersion. A missing namespace is
        created. Returns the stored object."""
        obj = deepcopy(obj)
        rt, version = for_api_version(obj.pop("apiVersion", ""), obj.pop("kind", ""))
        meta = _meta(obj)
        name = meta.get("name")
        if not name:
            raise ValueError("put_object needs metadata.name")
        with self.store.lock:
            if rt.namespaced:
                ns = meta.get("namespace") or "default"
                meta["namespace"] = ns
                if self.store.get(NAMESPACES, "", ns) is None:
                    self.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            else:
                ns = ""
                meta.pop("namespace", None)
            old = self.store.get(rt, ns, name)
            self._default(rt, obj)
            if rt.kind == "Secret":
                validation.normalize_secret(obj, decode=False)
            meta.setdefault("uid", (old.obj["metadata"]["uid"] if old else str(uuid.uuid4())))
            meta.setdefault("creationTimestamp",
                            old.obj["metadata"]["creationTimestamp"] if old else _now())
            if rt.has_generation:
                prev = (old.obj["metadata"].get("generation", 0) if old else 0)
                meta.setdefault("generation", prev + 1)
            meta.pop("resourceVersion", None)
            self._simulate_controllers(rt, obj, old.obj if old else None, force=True)
            meta["resourceVersion"] = str(self.store.next_rv())
            rec = self.store.put(rt, ns, name, _order(obj))
            return self._typed(rt, None, deepcopy(rec.obj))

    def put_objects(self, objs: Iterable[dict]) -> None:
        for o in objs:
            self.put_object(o)

    def get_object(self, resource: str, namespace: str | None, name: str) -> dict | None:
        """A copy of a stored object (with kind/apiVersion), or None.
        ``resource`` is a plural (``secrets``), ``plural.group`` or a kind/short name."""
        rt = lookup(resource)
        rec = self.store.get(rt, (namespace or "") if rt.namespaced else "", name)
        return self._typed(rt, None, deepcopy(rec.obj)) if rec else None

    def list_objects(self, resource: str, namespace: str | None = None) -> list[dict]:
        rt = lookup(resource)
        ns = namespace if rt.namespaced else ""
        with self.store.lock:
            recs, _, _ = self.store.list(rt, ns if ns else (None if rt.namespaced else ""), None, None, None)
            return [self._typed(rt, None, deepcopy(r.obj)) for r in recs]

    def delete_object(self, resource: str, namespace: str | None, name: str) -> bool:
        rt = lookup(resource)
        with self.store.lock:
            rec = self.store.delete(rt, (namespace or "") if rt.namespaced else "", name)
            if rec is not None:
                self.store.next_rv()
            return rec is not None

    @property
    def resource_version(self) -> int:
        return self.store.rv

    def reset(self, namespaces: Iterable[str] = ("default", "istio-system", "kube-system")) -> None:
        """Forget all objects, requests and faults (for module-scoped servers)."""
        with self.store.lock:
            self.store.clear()
            for ns in namespaces:
                self.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        self.clear_faults()
        self.clear_requests()

    def clear_requests(self) -> None:
        with self._log_lock:
            self.requests.clear()
            self.request_log.clear()

    def calls(self, method: str | None = None, resource: str | None = None,
              name: str | None = None) -> list[dict]:
        """Resource requests from ``request_log`` filtered by method / resource plural / name."""
        with self._log_lock:
            return [r for r in self.request_log
                    if r.get("resource") is not None
                    and (method is None or r["method"] == method.upper())
                    and (resource is None or r["resource"] == resource)
                    and (name is None or r["name"] == name)]

    # ------------------------------------------------------------------ fault injection
    def fail(self, method: str | None = "PUT", resource: str | None = "secrets",
             name: str | None = None, nth: int = 1, status: int | str = 500, *,
             namespace: str | None = None, times: int = 1, message: str | None = None,
             retry_after: int | None = None, path: str | None = None, query: str | None = None,
             delay: float = 0.0) -> FaultHandle:
        """Fail the ``nth`` matching request (counted from now) -- and the ``times - 1``
        following ones -- with ``status``:

        * an int: a ``Status`` error with that code (500 ``InternalError`` by default);
        * ``"drop"``: close the connection without answering (nothing is applied);
        * ``"drop-after"``: apply the request, then close the connection without answering
          (the write *did* happen -- a lost response).
        * ``"delay"``: sleep ``delay`` seconds, then serve normally.
        * ``"hold"``: hold the request until ``handle.release()`` (``fired`` says it arrived; at
          most :data:`HOLD_CEILING` seconds, and :meth:`stop` releases it), then serve it as it
          is then: an interleaving a test chooses, with no sleeps.

        Some codes are answered exactly as the layer of kube-apiserver that sends them does:

        * 410 on a list: etcd compacted the revision a continue token points at
          (``storage/etcd3`` ``handleCompactedErrorForPaging``): ``reason: Expired``, the
          "inconsistentContinue" message, and in the Status's ``metadata.continue`` a token that
          would carry on at the latest revision. Use ``query="continue"`` to hit only later pages.
        * 429: API Priority and Fairness rejected the request (``filters.tooManyRequests``):
          a *plain-text* body ``Too many requests, please try again later.`` and a
          ``Retry-After`` header (``retry_after``, default 1).
        * 503 ``ServiceUnavailable`` (``Retry-After`` only when ``retry_after`` is given).

        Matching is on HTTP ``method``, resource plural (``None`` = any resource request),
        ``name``, ``namespace`` and ``query`` (a parameter the request must carry); or on a
        ``path`` prefix for non-resource requests. A request triggers at most one fault.
        Faults are one-shot (``times``)."""
        if not (isinstance(status, int) or status in ("drop", "drop-after", "delay", "hold")):
            raise ValueError(f"unsupported fault status {status!r}")
        if status == 429 and retry_after is None:
            retry_after = 1
        h = FaultHandle(method.upper() if method else None, resource, name, namespace, nth, status,
                        times=times, path=path, query=query, message=message, retry_after=retry_after,
                        delay=delay, _server=self)
        with self._fault_lock:
            self._faults.append(h)
        return h

    def deny(self, verb: str | Iterable[str] | None = "update", resource: str | None = "secrets",
             namespace: str | None = None, user: str | None = None, *, name: str | None = None,
             group: str | None = None) -> DenyHandle:
        """Answer matching requests with 403 ``Forbidden`` worded like the RBAC authorizer's
        denial, until :meth:`clear_faults` (or ``handle.remove()``).

        ``verb`` is an API verb (get, list, watch, create, update, patch, delete,
        deletecollection), a list of them, or None/"*" for all. ``resource`` is a plural, or
        ``plural/subresource``. ``user`` is the identity named in the message (defaults to
        the authenticated caller); it does not restrict which callers are denied."""
        if verb is None or verb == "*":
            verbs = None
        elif isinstance(verb, str):
            verbs = frozenset([verb])
        else:
            verbs = frozenset(verb)
        h = DenyHandle(verbs, resource if resource != "*" else None, namespace, name, group, user,
                       _server=self)
        with self._fault_lock:
            self._denials.append(h)
        return h

    def service_account_kubeconfig(self, namespace: str, name: str) -> str:
        """A kubeconfig that authenticates as ServiceAccount ``namespace/name`` (what the pod's
        projected token is on a real cluster). Its requests go through the RBAC authorizer:
        only the Roles and ClusterRoles bound to it allow anything (see rbac.py)."""
        token = _secrets.token_urlsafe(24)
        self._tokens[token] = rbac.service_account_user(namespace, name)
        path = os.path.join(self.workdir, f"kubeconfig-sa-{namespace}-{name}")
        with open(self.kubeconfig_path) as f:
            cfg = yaml.safe_load(f)
        cfg["users"] = [{"name": f"{namespace}-{name}", "user": {"token": token}}]
        cfg["contexts"][0]["context"]["user"] = f"{namespace}-{name}"
        cfg["contexts"][0]["context"]["namespace"] = namespace
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(cfg, f, sort_keys=False)
        return path

    def _rbac_lookup(self, plural: str, namespace: str, name: str) -> dict | None:
        rec = self.store.get(BY_KEY[f"{plural}.{rbac.RBAC_GROUP}"], namespace, name)
        return rec.obj if rec else None

    def _rbac_objects(self, plural: str) -> list[dict]:
        rt = BY_KEY[f"{plural}.{rbac.RBAC_GROUP}"]
        with self.store.lock:
            recs, _, _ = self.store.list(rt, None if rt.namespaced else "", None, None, None)
        return [r.obj for r in recs]

    def _authorize(self, ctx: _Ctx, headers) -> None:
        user = next((u for u in self._tokens.values() if u.name == ctx.user), None)
        if user is None:
            return
        ok, reason = self._authorizer.authorize(user, ctx.verb, ctx.rt.group, ctx.rt.plural, ctx.subresource,
                                                ctx.namespace, ctx.name)
        if ok:
            return
        why = rbac.forbidden_message(user.name, ctx.verb, ctx.rt.group, ctx.rt.plural, ctx.subresource,
                                     ctx.namespace)
        raise errors.forbidden(ctx.rt.plural, ctx.rt.group, ctx.name, f"{why}: {reason}" if reason else why)

    def clear_faults(self) -> None:
        with self._fault_lock:
            self._faults.clear()
            self._denials.clear()

    def _match_fault(self, method: str, path: str, ctx: _Ctx | None, query: dict | None = None) -> FaultHandle | None:
        with self._fault_lock:
            for f in list(self._faults):
                if f.method and f.method != method:
                    continue
                if f.query is not None and not (query or {}).get(f.query):
                    continue
                if f.path is not None:
                    if not path.startswith(f.path):
                        continue
                else:
                    if ctx is None:
                        continue
                    if f.resource is not None and f.resource not in (ctx.rt.plural, ctx.rt.key, ctx.resource_label):
                        continue
                    if f.name is not None and f.name != ctx.name:
                        continue
                    if f.namespace is not None and f.namespace != ctx.namespace:
                        continue
                f.seen += 1
                if f.seen >= f.nth:
                    f.fired += 1
                    f.requests.append((method, path))
                    if f.exhausted:
                        self._faults.remove(f)
                    return f
            return None

    def _check_denied(self, ctx: _Ctx) -> None:
        with self._fault_lock:
            for d in self._denials:
                if d.verbs is not None and ctx.verb not in d.verbs:
                    continue
                if d.resource is not None and d.resource not in (ctx.resource_label, ctx.rt.key):
                    continue
                if d.namespace is not None and d.namespace != ctx.namespace:
                    continue
                if d.name is not None and d.name != ctx.name:
                    continue
                if d.group is not None and d.group != ctx.rt.group:
                    continue
                d.hits += 1
                user = d.user or ctx.user
                break
            else:
                return
        res = ctx.resource_label
        if ctx.namespace:
            why = (f"User {errors.go_quote(user)} cannot {ctx.verb} resource {errors.go_quote(res)} "
                   f"in API group {errors.go_quote(ctx.rt.group)} in the namespace {errors.go_quote(ctx.namespace)}")
        else:
            why = (f"User {errors.go_quote(user)} cannot {ctx.verb} resource {errors.go_quote(res)} "
                   f"in API group {errors.go_quote(ctx.rt.group)} at the cluster scope")
        raise errors.forbidden(ctx.rt.plural, ctx.rt.group, ctx.name, why)

    # ------------------------------------------------------------------ request entry point
    def _handle(self, method: str, raw_path: str, headers, body: bytes):
        parts = urlsplit(raw_path)
        path = unquote(parts.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        entry = {"method": method, "path": path, "query": parts.query, "resource": None,
                 "namespace": None, "name": None, "verb": None, "code": None}
        with self._log_lock:
            self.requests.append(Request(method, path, parts.query))
            self.request_log.append(entry)
        fault = None
        try:
            user = self._authenticate(headers, path)
            ctx = self._route(method, path, query, headers, user)
            if isinstance(ctx, _Response):
                fault = self._match_fault(method, path, None, query)
                if fault is not None and fault.status not in ("drop-after", "delay"):
                    return self._fault_response(fault, None)
                resp = ctx
            else:
                entry.update(resource=ctx.rt.plural, namespace=ctx.namespace, name=ctx.name or None,
                             verb=ctx.verb)
                fault = self._match_fault(method, path, ctx, query)
                if fault is not None and fault.status not in ("drop-after", "delay", "hold"):
                    resp = self._fault_response(fault, ctx)
                    entry["code"] = resp.code if isinstance(resp, _Response) else None
                    return resp
                if fault is not None and fault.status == "delay":
                    time.sleep(fault.delay)
                if fault is not None and fault.status == "hold":
                    with self._fault_lock:
                        self._holding.append(fault)
                    fault._gate.wait(HOLD_CEILING)
                self._check_denied(ctx)
                self._authorize(ctx, headers)
                resp = self._execute(ctx, body)
                if ctx.warnings:
                    resp.headers["Warning"] = fields.warning_header(ctx.warnings)
        except ApiError as e:
            resp = _Response(e.code, e.status(), headers=e.headers)
        except Exception as e:  # pragma: no cover - bug in the stand-in: say so loudly
            import traceback

            traceback.print_exc()
            resp = _Response(500, errors.internal_error(f"kubeapi stand-in bug: {e!r}").status())
        entry["code"] = resp.code
        if fault is not None and fault.status == "drop-after":
            return _DROP
        return resp

    def _fault_response(self, fault: FaultHandle, ctx: _Ctx | None):
        if fault.status == "drop":
            return _DROP
        code = int(fault.status)
        if code == 429 and fault.message is None:
            # APF answers before any handler: http.Error's plain text, not a Status
            return _Response(429, "Too many requests, please try again later.\n", "text/plain; charset=utf-8",
                             headers={"Retry-After": str(fault.retry_after)})
        if code == 410 and fault.message is None and ctx is not None and ctx.verb == "list":
            return self._expired_continue(ctx)
        if fault.message is not None:
            err = ApiError(code, errors.generic(code).reason, fault.message, {})
        elif code == 500:
            err = errors.internal_error("injected fault")
        elif code == 503:
            err = ApiError(503, "ServiceUnavailable", "the server is currently unable to handle the request", {})
        else:
            err = errors.generic(code, "injected fault")
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
            if err.details is not None:
                err.details["retryAfterSeconds"] = fault.retry_after
        return _Response(code, err.status(), headers=headers)

    def _expired_continue(self, ctx: _Ctx) -> _Response:
        """410 as etcd3's ``handleCompactedErrorForPaging`` builds it: ``NewResourceExpired`` with
        the "inconsistentContinue" message and a token to carry on at the latest revision (rv -1)."""
        cont = ctx.q("continue")
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": errors.INCONSISTENT_CONTINUE, "reason": "Expired", "code": 410}
        if cont:
            body["metadata"]["continue"] = self._encode_continue(-1, self._decode_continue(cont))
        else:  # a list from the start cannot expire this way: the plain "too old" message
            body["message"] = errors.EXPIRED_LIST
        return _Response(410, body)

    def _authenticate(self, headers, path: str) -> str:
        auth = headers.get("Authorization") or ""
        if not auth:
            if path in PUBLIC_PATHS:
                return "system:anonymous"
            raise errors.unauthorized()
        scheme, _, token = auth.partition(" ")
        user = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise errors.unauthorized()
        return user.name

    # ------------------------------------------------------------------ routing
    def _route(self, method: str, path: str, query, headers, user: str):
        segs = [s for s in path.split("/") if s]
        if method == "GET":
            if segs == ["version"]:  # "/version/" too, as the real mux
                return _Response(200, discovery.KUBE_VERSION)
            if path in ("/healthz", "/livez", "/readyz"):
                return _Response(200, "ok", "text/plain; charset=utf-8")
            if segs == ["api"]:
                return _Response(200, discovery.api_versions(f"127.0.0.1:{self.port}"))
            if segs == ["apis"]:
                return _Response(200, discovery.api_group_list())
            if segs == ["openapi", "v3"]:
                return _Response(200, discovery.openapi_v3_index())
            if len(segs) >= 4 and segs[:2] == ["openapi", "v3"]:
                if segs[2] == "api" and len(segs) == 4:
                    g, v = "", segs[3]
                elif segs[2] == "apis" and len(segs) == 5:
                    g, v = segs[3], segs[4]
                else:
                    g, v = None, None
                if g is not None and discovery.known_group_version(g, v):
                    return _Response(200, discovery.openapi_v3_doc(g, v))
            if segs == ["api", "v1"]:
                return _Response(200, discovery.resource_list("", "v1"))
            if len(segs) == 2 and segs[0] == "apis" and segs[1] in discovery.GROUP_VERSIONS:
                return _Response(200, discovery.api_group(segs[1]))
            if len(segs) == 3 and segs[0] == "apis" and discovery.known_group_version(segs[1], segs[2]):
                return _Response(200, discovery.resource_list(segs[1], segs[2]))
        if len(segs) >= 3 and segs[0] == "api" and segs[1] == "v1":
            group, version, rest = "", "v1", segs[2:]
        elif len(segs) >= 4 and segs[0] == "apis" and discovery.known_group_version(segs[1], segs[2]):
            group, version, rest = segs[1], segs[2], segs[3:]
        else:
            return _Response(404, "404 page not found\n", "text/plain; charset=utf-8")

        namespace, plural, name, sub = "", None, "", ""
        if (len(rest) >= 3 and rest[0] == "namespaces"
                and (group, version, rest[2]) in BY_GVR and BY_GVR[(group, version, rest[2])].namespaced):
            namespace, plural = rest[1], rest[2]
            tail = rest[3:]
        else:
            plural, tail = rest[0], rest[1:]
        if len(tail) > 2:
            raise errors.generic(404)
        name = tail[0] if tail else ""
        sub = tail[1] if len(tail) > 1 else ""
        rt = BY_GVR.get((group, version, plural))
        if rt is None:
            raise errors.generic(404)
        if rt.namespaced and not namespace and (tail or method != "GET"):
            # /api/v1/secrets only serves list (and watch) across all namespaces
            raise errors.generic(404 if tail else 405)
        if sub and sub not in rt.subresources:
            raise errors.generic(404)
        if not rt.namespaced and namespace:
            raise errors.generic(404)

        if method == "GET":
            watch = (query.get("watch") or [""])[0] in ("true", "1")
            verb = "get" if name else ("watch" if watch else "list")
        elif method == "POST":
            verb = "create"
        elif method == "PUT":
            verb = "update"
        elif method == "PATCH":
            verb = "patch"
        elif method == "DELETE":
            verb = "delete" if name else "deletecollection"
        else:
            raise errors.generic(405)
        if verb in ("create",) and name:
            raise errors.generic(405)
        if verb in ("update", "patch") and not name:
            raise errors.generic(405)
        return _Ctx(method, rt, version, namespace, name, sub, verb, query, headers, user)

    # ------------------------------------------------------------------ output helpers
    def _typed(self, rt: ResourceType, version: str | None, obj: dict) -> dict:
        out = {"kind": rt.kind, "apiVersion": rt.api_version(version)}
        out.update(obj)
        return out

    def _obj_response(self, ctx: _Ctx, code: int, obj: dict) -> _Response:
        mode = self._negotiate(ctx)
        if mode[0] == "table":
            return _Response(code, discovery.table(ctx.rt, [obj], {"resourceVersion": obj["metadata"].get("resourceVersion", "")},
                                                   ctx.q("includeObject", "Metadata"),
                                                   lambda o: self._typed(ctx.rt, ctx.version, o)))
        if mode[0] == "partial":
            return _Response(code, discovery.partial_metadata(obj) | {"apiVersion": f"meta.k8s.io/{mode[1]}"})
        return _Response(code, self._typed(ctx.rt, ctx.version, obj))

    @staticmethod
    def _negotiate(ctx: _Ctx) -> tuple[str, str]:
        accept = ctx.headers.get("Accept") or ""
        for clause in accept.split(","):
            params = {}
            bits = [b.strip() for b in clause.split(";")]
            for b in bits[1:]:
                k, _, v = b.partition("=")
                params[k.strip()] = v.strip()
            if params.get("g") == "meta.k8s.io" and params.get("v") in ("v1", "v1beta1"):
                if params.get("as") == "Table":
                    return ("table", params["v"])
                if params.get("as") in ("PartialObjectMetadata", "PartialObjectMetadataList"):
                    return ("partial", params["v"])
                continue
            if "as" in params:
                continue
            return ("json", "")
        return ("json", "")

    # ------------------------------------------------------------------ verbs
    def _execute(self, ctx: _Ctx, body: bytes) -> _Response:
        if ctx.verb == "get":
            return self._get(ctx)
        if ctx.verb == "list":
            return self._list(ctx)
        if ctx.verb == "watch":
            raise errors.bad_request("watch is not implemented by the kubeapi stand-in")
        if ctx.verb == "create":
            if ctx.subresource:
                raise errors.generic(405)
            return self._create(ctx, self._decode(ctx, body))
        if ctx.verb == "update":
            return self._update(ctx, self._decode(ctx, body))
        if ctx.verb == "patch":
            return self._patch(ctx, body)
        if ctx.verb == "delete":
            return self._delete(ctx, body)
        if ctx.verb == "deletecollection":
            return self._delete_collection(ctx)
        raise errors.generic(405)

    def _scope_ns(self, ctx: _Ctx) -> str:
        return ctx.namespace if ctx.rt.namespaced else ""

    def _get(self, ctx: _Ctx) -> _Response:
        rec = self.store.get(ctx.rt, self._scope_ns(ctx), ctx.name)
        if rec is None:
            raise errors.not_found(ctx.rt.plural, ctx.rt.group, ctx.name)
        return self._obj_response(ctx, 200, rec.obj)

    # -- list
    def _decode_continue(self, token: str) -> tuple[str, str]:
        try:
            pad = "=" * (-len(token) % 4)
            data = json.loads(base64.urlsafe_b64decode(token + pad))
            start = data["start"]
            if data.get("v") != "meta.k8s.io/v1" or not start.endswith("\x00"):
                raise ValueError
            ns, _, name = start[:-1].partition("/")
            return ns, name
        except Exception:
            raise errors.bad_request("continue key is not valid: incorrect encoded start resourceVersion "
                                     "(version meta.k8s.io/v1)") from None

    @staticmethod
    def _encode_continue(rv: int, key: tuple[str, str]) -> str:
        data = {"v": "meta.k8s.io/v1", "rv": rv, "start": f"{key[0]}/{key[1]}\x00"}
        return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")

    def _list(self, ctx: _Ctx) -> _Response:
        rt = ctx.rt
        pred = and_preds(parse_label_selector(ctx.q("labelSelector", "") or ""),
                         parse_field_selector(ctx.q("fieldSelector", "") or "", rt.kind))
        limit_s = ctx.q("limit")
        try:
            limit = int(limit_s) if limit_s else None
        except ValueError:
            raise errors.bad_request(f"invalid limit: {limit_s!r}") from None
        if limit is not None and limit <= 0:
            limit = None
        cont = ctx.q("continue")
        start = self._decode_continue(cont) if cont else None
        if start is not None and rt.namespaced and ctx.namespace and start[0] != ctx.namespace:
            raise errors.bad_request("continue key is not valid: key is not in the list range")
        ns = (ctx.namespace or None) if rt.namespaced else ""
        with self.store.lock:
            recs, last, remaining = self.store.list(rt, ns, start, limit, pred)
            rv = self.store.rv
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if last is not None:
            meta["continue"] = self._encode_continue(rv, last)
            if remaining is not None:
                meta["remainingItemCount"] = remaining
        mode = self._negotiate(ctx)
        if mode[0] == "table":
            return _Response(200, discovery.table(rt, [r.obj for r in recs], meta,
                                                  ctx.q("includeObject", "Metadata"),
                                                  lambda o: self._typed(rt, ctx.version, o)))
        if mode[0] == "partial":
            return _Response(200, {"kind": "PartialObjectMetadataList", "apiVersion": f"meta.k8s.io/{mode[1]}",
                                   "metadata": meta,
                                   "items": [discovery.partial_metadata(r.obj) | {"apiVersion": f"meta.k8s.io/{mode[1]}"}
                                             for r in recs]})
        if rt.builtin:
            items = ",".join(r.json() for r in recs)
        else:
            items = ",".join(json.dumps(self._typed(rt, ctx.version, r.obj), separators=(",", ":"))
                             for r in recs)
        head = json.dumps({"kind": rt.list_kind, "apiVersion": rt.api_version(ctx.version),
                           "metadata": meta}, separators=(",", ":"))
        return _Response(200, head[:-1] + ',"items":[' + items + "]}")

    # -- decoding request bodies
    def _decode(self, ctx: _Ctx, body: bytes, content_type: str | None = None) -> dict:
        ct = (content_type or ctx.headers.get("Content-Type") or "application/json").split(";")[0].strip()
        if ct == "application/vnd.kubernetes.protobuf":
            try:
                obj = protobuf.decode(body)
            except protobuf.ProtobufError as e:
                raise errors.unsupported_media_type(
                    ["application/json", "application/yaml", "application/vnd.kubernetes.protobuf"]
                ) if "not supported" in str(e) else errors.bad_request(str(e)) from None
            return self._finish_decode(ctx, obj)
        try:
            if ct in ("application/yaml", "application/apply-patch+yaml"):
                obj = yaml.safe_load(body.decode() or "null")
            else:
                obj = json.loads(body or b"null")
        except (ValueError, yaml.YAMLError) as e:
            raise errors.bad_request(f"the object provided is unrecognized (must be of type {ctx.rt.kind}): "
                                     f"couldn't get version/kind; json parse error: {e}") from None
        if not isinstance(obj, dict):
            raise errors.bad_request(f"the object provided is unrecognized (must be of type {ctx.rt.kind}): "
                                     "couldn't get version/kind; json parse error: expected an object")
        return self._finish_decode(ctx, obj)

    def _finish_decode(self, ctx: _Ctx, obj: dict) -> dict:
        kind = obj.get("kind")
        api_version = obj.get("apiVersion")
        if kind and kind != ctx.rt.kind:
            raise errors.bad_request(
                f"{kind} in version {errors.go_quote((api_version or '').rpartition('/')[2])} cannot be handled as a "
                f"{ctx.rt.kind}: no kind {errors.go_quote(kind)} is registered for the endpoint")
        if api_version and api_version != ctx.rt.api_version(ctx.version):
            if not ctx.rt.builtin or api_version.rpartition("/")[0] != ctx.rt.group:
                raise errors.bad_request(
                    f"the API version in the data ({api_version}) does not match the expected API version "
                    f"({ctx.rt.api_version(ctx.version)})")
        if ctx.verb in ("create", "update") and isinstance(obj.get("metadata", {}), dict):
            unknown = self._field_validation(ctx, obj)
            if unknown and self._directive(ctx) == fields.STRICT:
                shown_kind = kind or ctx.rt.kind
                shown_version = (api_version or ctx.rt.api_version(ctx.version)).rpartition("/")[2]
                raise errors.bad_request(
                    f"{shown_kind} in version {errors.go_quote(shown_version)} cannot be handled as a "
                    f"{ctx.rt.kind}: {fields.strict_decoding_error(unknown)}")
        obj.pop("kind", None)
        obj.pop("apiVersion", None)
        _meta(obj)
        if ctx.rt.kind == "Secret" and not ctx.subresource:
            validation.normalize_secret(obj, ctx.version)
        elif ctx.rt.kind == "Lease":
            validation.normalize_lease(obj, ctx.version)
        return obj

    # -- field validation
    def _directive(self, ctx: _Ctx) -> str:
        """``fieldValidation``, checked as ``ValidateCreateOptions`` / ``UpdateOptions`` /
        ``PatchOptions`` do (422 on an unsupported value)."""
        d = fields.directive(ctx.query)
        if d not in fields.DIRECTIVES:
            opts = {"create": "CreateOptions", "update": "UpdateOptions"}.get(ctx.verb, "PatchOptions")
            raise errors.invalid(opts, "meta.k8s.io", "", [FieldError(
                "FieldValueNotSupported", "fieldValidation", d,
                "supported values: " + ", ".join(errors.go_quote(x) for x in fields.DIRECTIVES))])
        return d

    def _field_validation(self, ctx: _Ctx, obj: dict) -> list[str]:
        """Drop the fields the kind does not have (the real decoder/pruner never stores them) and
        return their paths; with ``Warn`` they become Warning headers. ``Strict`` is the caller's
        to refuse, since a body and a patch are refused differently."""
        d = self._directive(ctx)
        schema = fields.schema_for(ctx.rt.kind, ctx.version)
        if schema is None:
            return []
        unknown = fields.prune(obj, schema)
        if unknown and d == fields.WARN:
            ctx.warnings.extend(fields.unknown_field_errors(unknown))
        return unknown

    # -- shared write logic
    def _namespace_exists(self, ns: str) -> bool:
        return self.store.get(NAMESPACES, "", ns) is not None

    @staticmethod
    def _default(rt: ResourceType, obj: dict) -> None:
        if rt.kind == "Deployment":
            validation.default_deployment(obj)
        elif rt.kind == "Namespace":
            meta = _meta(obj)
            labels = meta.setdefault("labels", {})
            if isinstance(labels, dict) and meta.get("name"):
                labels["kubernetes.io/metadata.name"] = meta["name"]
            spec = obj.setdefault("spec", {})
            if isinstance(spec, dict):
                spec.setdefault("finalizers", ["kubernetes"])
            status = obj.setdefault("status", {})
            if isinstance(status, dict):
                status.setdefault("phase", "Active")

    def _validate(self, rt: ResourceType, obj: dict, old: dict | None, decoded: dict | None, version: str = "") -> None:
        name = obj["metadata"].get("name", "")
        if rt.kind == "Secret":
            if decoded is None:
                decoded = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
            errs = (validation.validate_secret_update(obj, old, decoded) if old is not None
                    else validation.validate_secret(obj, decoded))
        elif rt.kind == "ConfigMap":
            errs = (validation.validate_configmap_update(obj, old) if old is not None
                    else validation.validate_configmap(obj))
        elif rt.kind == "Deployment":
            errs = (validation.validate_deployment_update(obj, old) if old is not None
                    else validation.validate_deployment(obj))
        elif rt.kind == "Namespace":
            errs = validation.validate_object_meta(obj["metadata"], label_names=True)
        elif rt.kind == "Lease":
            errs = validation.validate_lease(obj)
        else:
            errs = validation.validate_object_meta(obj["metadata"])
            if rt.group == ISTIO_GROUP:
                # The CRD's structural schema, then its CEL rules unless the schema found a blocking
                # error, as apiextensions-apiserver's customResourceStrategy does.
                errs += openapi.validate(rt.kind, version, obj)
                if openapi.blocking(errs):
                    errs.append(openapi.CEL_SKIPPED)
                else:
                    errs += celrules.validate(rt.kind, version, obj, old)
        if old is not None:
            om, nm = old["metadata"], obj["metadata"]
            if nm.get("uid") != om.get("uid"):
                errs.insert(0, FieldError("FieldValueInvalid", "metadata.uid", nm.get("uid"), "field is immutable"))
        validation.raise_if(errs, rt.kind, rt.group, name)

    def _simulate_controllers(self, rt: ResourceType, obj: dict, old: dict | None, force: bool = False) -> None:
        if rt.kind != "Deployment" or not self.deployment_controller:
            return
        meta = obj["metadata"]
        gen = meta.get("generation", 1)
        replicas = (obj.get("spec") or {}).get("replicas", 1)
        st = obj.get("status") or {}
        if not force and st.get("observedGeneration") == gen and st.get("replicas", 0) == replicas:
            return
        if force and obj.get("status"):
            return
        status: dict[str, Any] = {"observedGeneration": gen}
        if replicas:
            status.update(replicas=replicas, updatedReplicas=replicas, readyReplicas=replicas,
                          availableReplicas=replicas)
        now = _now()
        status["conditions"] = [
            {"type": "Available", "status": "True", "lastUpdateTime": now, "lastTransitionTime": now,
             "reason": "MinimumReplicasAvailable", "message": "Deployment has minimum availability."},
            {"type": "Progressing", "status": "True", "lastUpdateTime": now, "lastTransitionTime": now,
             "reason": "NewReplicaSetAvailable",
             "message": f'ReplicaSet "{meta.get("name")}-{_secrets.token_hex(5)}" has successfully progressed.'},
        ]
        obj["status"] = status

    # -- create
    def _create(self, ctx: _Ctx, obj: dict, code: int = 201) -> _Response:
        rt = ctx.rt
        meta = obj["metadata"]
        dry = ctx.dry_run
        if rt.namespaced:
            bns = meta.get("namespace")
            if bns and bns != ctx.namespace:
                raise errors.bad_request("the namespace of the provided object does not match the namespace sent on the request")
            meta["namespace"] = ctx.namespace
        else:
            meta.pop("namespace", None)
        rv = str(meta.pop("resourceVersion", "") or "")
        if rv.isdigit() and int(rv) != 0:
            # etcd3 store.Create returns a plain error: 500, reason/details empty
            raise ApiError(500, "", "resourceVersion should not be set on objects to be created")
        with self.store.lock:
            if rt.namespaced and not self._namespace_exists(ctx.namespace):
                raise errors.not_found("namespaces", "", ctx.namespace)
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + "".join(random.choice(_GENERATE_CHARS) for _ in range(5))
            name = meta.get("name") or ""
            for k in ("uid", "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink"):
                meta.pop(k, None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
            if rt.has_generation:
                meta["generation"] = 1
            else:
                meta.pop("generation", None)
            if rt.kind == "Deployment" or (not rt.builtin and "status" in rt.subresources):
                obj.pop("status", None)
            self._default(rt, obj)
            self._validate(rt, obj, None, None, ctx.version)
            if self.store.get(rt, self._scope_ns(ctx), name) is not None:
                raise errors.already_exists(rt.plural, rt.group, name)
            self._simulate_controllers(rt, obj, None)
            obj = _order(obj)
            if dry:
                return self._obj_response(ctx, code, obj)
            meta["resourceVersion"] = str(self.store.next_rv())
            rec = self.store.put(rt, self._scope_ns(ctx), name, obj)
        return self._obj_response(ctx, code, rec.obj)

    # -- update
    def _update(self, ctx: _Ctx, obj: dict) -> _Response:
        meta = obj["metadata"]
        if meta.get("name", "") != ctx.name:
            raise errors.bad_request(f"the name of the object ({meta.get('name', '')}) does not match the name on the URL ({ctx.name})")
        if ctx.rt.namespaced:
            if meta.get("namespace") and meta["namespace"] != ctx.namespace:
                raise errors.bad_request("the namespace of the provided object does not match the namespace sent on the request")
            meta["namespace"] = ctx.namespace
        else:
            meta.pop("namespace", None)
        with self.store.lock:
            old = self.store.get(ctx.rt, self._scope_ns(ctx), ctx.name)
            if old is None:
                raise errors.not_found(ctx.rt.plural, ctx.rt.group, ctx.name)
            return self._write_update(ctx, obj, old)

    def _write_update(self, ctx: _Ctx, obj: dict, old: Record, precondition_rv: bool = True) -> _Response:
        rt = ctx.rt
        meta = obj["metadata"]
        om = old.obj["metadata"]
        rv = meta.get("resourceVersion")
        if rv:
            if rv != om.get("resourceVersion"):
                raise errors.conflict(rt.plural, rt.group, ctx.name)
        elif not rt.allow_unconditional_update:
            raise errors.invalid(rt.kind, rt.group, ctx.name, [FieldError(
                "FieldValueInvalid", "metadata.resourceVersion", GoLiteral("0x0"), "must be specified for an update")])
        if ctx.subresource == "status":
            new = deepcopy(old.obj)
            if "status" in obj:
                new["status"] = obj["status"]
            else:
                new.pop("status", None)
            obj = new
            meta = obj["metadata"]
        else:
            # BeforeUpdate: system fields come from the stored object
            if not meta.get("uid"):
                meta["uid"] = om.get("uid")
            meta["creationTimestamp"] = om.get("creationTimestamp")
            for k in ("deletionTimestamp", "deletionGracePeriodSeconds"):
                if k in om:
                    meta[k] = om[k]
                else:
                    meta.pop(k, None)
            meta.pop("managedFields", None)
            meta.pop("selfLink", None)
            if rt.has_generation:
                meta["generation"] = om.get("generation", 1)
            else:
                meta.pop("generation", None)
            self._prepare_update(rt, obj, old.obj)
            self._default(rt, obj)
        self._validate(rt, obj, old.obj, None, ctx.version)
        if not ctx.subresource:
            self._simulate_controllers(rt, obj, old.obj)
        meta["resourceVersion"] = om.get("resourceVersion")
        obj = _order(obj)
        if obj == old.obj:
            return self._obj_response(ctx, 200, old.obj)  # no-op: nothing written, RV unchanged
        if ctx.dry_run:
            return self._obj_response(ctx, 200, obj)
        obj["metadata"]["resourceVersion"] = str(self.store.next_rv())
        rec = self.store.put(rt, self._scope_ns(ctx), ctx.name, obj)
        return self._obj_response(ctx, 200, rec.obj)

    @staticmethod
    def _prepare_update(rt: ResourceType, new: dict, old: dict) -> None:
        if rt.kind == "Deployment":
            if "status" in old:
                new["status"] = old["status"]
            else:
                new.pop("status", None)
            nm, om = new["metadata"], old["metadata"]
            if new.get("spec") != old.get("spec") or nm.get("annotations") != om.get("annotations"):
                nm["generation"] = om.get("generation", 1) + 1
        elif rt.kind == "Namespace":
            new["status"] = old.get("status", {})
            new.setdefault("spec", {})["finalizers"] = (old.get("spec") or {}).get("finalizers", [])
        elif not rt.builtin:
            if "status" in rt.subresources:
                if "status" in old:
                    new["status"] = old["status"]
                else:
                    new.pop("status", None)
            strip = lambda o: {k: v for k, v in o.items() if k not in ("metadata", "status")}  # noqa: E731
            if strip(new) != strip(old):
                new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1

    # -- patch
    def _patch(self, ctx: _Ctx, body: bytes) -> _Response:
        rt = ctx.rt
        ct = (ctx.headers.get("Content-Type") or "").split(";")[0].strip()
        accepted = [JSON_PATCH, MERGE_PATCH] + ([STRATEGIC_PATCH] if rt.builtin else []) + [APPLY_PATCH]
        if ct not in accepted:
            raise errors.unsupported_media_type(accepted)
        if ct == APPLY_PATCH:
            return self._apply(ctx, body)
        try:
            patch_doc = json.loads(body or b"null")
        except ValueError as e:
            raise errors.bad_request(f"error decoding patch: {e}") from None
        with self.store.lock:
            old = self.store.get(rt, self._scope_ns(ctx), ctx.name)
            if old is None:
                raise errors.not_found(rt.plural, rt.group, ctx.name)
            current = self._typed(rt, ctx.version, deepcopy(old.obj))
            try:
                if ct == JSON_PATCH:
                    ops = decode_json_patch(patch_doc)
                    if len(ops) > 10000:
                        raise ApiError(413, "RequestEntityTooLarge",
                                       f"Request entity too large: The allowed maximum operations in a JSON patch is 10000, got {len(ops)}")
                    patched = apply_json_patch(current, ops)
                elif ct == MERGE_PATCH:
                    if not isinstance(patch_doc, dict):
                        raise errors.bad_request("Invalid JSON Patch")
                    patched = apply_merge_patch(current, patch_doc)
                else:
                    patched = apply_strategic_merge_patch(current, patch_doc)
            except PatchFormatError as e:
                raise errors.bad_request(str(e)) from None
            except PatchApplyError as e:
                raise errors.generic(422, str(e)) from None
            if not isinstance(patched, dict):
                raise errors.invalid("", "", "", [FieldError("FieldValueInvalid", "patch",
                                                             json.dumps(patched), "cannot unmarshal into an object")])
            patched.pop("kind", None)
            patched.pop("apiVersion", None)
            meta = _meta(patched)
            if meta.get("name", "") != ctx.name:
                raise errors.bad_request(f"the name of the object ({meta.get('name', '')}) does not match the name on the URL ({ctx.name})")
            if rt.namespaced and meta.get("namespace", "") != ctx.namespace:
                raise errors.bad_request("the namespace of the provided object does not match the namespace sent on the request")
            if not ctx.subresource:
                typed = self._typed(rt, ctx.version, patched)
                # patch.go shows the patched object (JSON/merge) or the patch map (strategic)
                shown = (fields.go_value(patch_doc) if ct == STRATEGIC_PATCH
                         else json.dumps(typed, separators=(",", ":")))
                unknown = self._field_validation(ctx, typed)
                if unknown and self._directive(ctx) == fields.STRICT:
                    # patch.go: NewInvalid(GroupKind{}, "", patch: Invalid value: ...)
                    raise errors.invalid("", "", "", [FieldError(
                        "FieldValueInvalid", "patch", shown, fields.strict_decoding_error(unknown))])
                for k in [k for k in patched if k not in typed]:
                    del patched[k]
            if rt.kind == "Secret" and not ctx.subresource:
                validation.normalize_secret(patched, ctx.version)
            return self._write_update(ctx, patched, old)

    def _apply(self, ctx: _Ctx, body: bytes) -> _Response:
        """Server-side apply, approximated: create if missing, else merge the applied
        configuration (strategic merge for built-ins, JSON merge for custom resources).
        There is no field ownership: fields are never removed and there are no conflicts."""
        rt = ctx.rt
        if not ctx.q("fieldManager"):
            raise errors.invalid("PatchOptions", "meta.k8s.io", "", [FieldError(
                "FieldValueRequired", "fieldManager", None, "is required for apply patch")])
        applied = self._decode(ctx, body, APPLY_PATCH)
        meta = applied["metadata"]
        if meta.get("name", "") != ctx.name:
            raise errors.bad_request(f"the name of the object ({meta.get('name', '')}) does not match the name on the URL ({ctx.name})")
        with self.store.lock:
            old = self.store.get(rt, self._scope_ns(ctx), ctx.name)
            if old is None:
                return self._create(ctx, applied, code=201)
            current = deepcopy(old.obj)
            if rt.builtin:
                merged = apply_strategic_merge_patch(current, applied)
            else:
                merged = apply_merge_patch(current, applied)
            if not (applied.get("metadata") or {}).get("resourceVersion"):
                merged["metadata"]["resourceVersion"] = old.obj["metadata"].get("resourceVersion")
            return self._write_update(ctx, merged, old)

    # -- delete
    def _delete(self, ctx: _Ctx, body: bytes) -> _Response:
        rt = ctx.rt
        opts = {}
        ct = (ctx.headers.get("Content-Type") or "").split(";")[0].strip()
        if body.strip() and ct != "application/vnd.kubernetes.protobuf":
            try:
                opts = json.loads(body)
            except ValueError:
                raise errors.bad_request("error decoding DeleteOptions") from None
        dry = ctx.dry_run or "All" in (opts.get("dryRun") or [])
        with self.store.lock:
            old = self.store.get(rt, self._scope_ns(ctx), ctx.name)
            if old is None:
                raise errors.not_found(rt.plural, rt.group, ctx.name)
            om = old.obj["metadata"]
            pre = opts.get("preconditions") or {}
            if pre.get("uid") and pre["uid"] != om.get("uid"):
                raise errors.conflict(rt.plural, rt.group, ctx.name,
                                      f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: {om.get('uid')}")
            if pre.get("resourceVersion") and pre["resourceVersion"] != om.get("resourceVersion"):
                raise errors.conflict(rt.plural, rt.group, ctx.name,
                                      f"Precondition failed: ResourceVersion in precondition: {pre['resourceVersion']}, "
                                      f"ResourceVersion in object meta: {om.get('resourceVersion')}")
            if rt.kind == "Namespace":
                gone = deepcopy(old.obj)
                gone["metadata"]["deletionTimestamp"] = _now()
                gone["status"] = {"phase": "Terminating"}
                if not dry:
                    self.store.delete(rt, "", ctx.name)
                    self.store.delete_namespace_contents(ctx.name)
                    gone["metadata"]["resourceVersion"] = str(self.store.next_rv())
                return self._obj_response(ctx, 200, gone)
            if not dry:
                self.store.delete(rt, self._scope_ns(ctx), ctx.name)
                self.store.next_rv()
        details = {"name": ctx.name}
        if rt.group:
            details["group"] = rt.group
        details["kind"] = rt.plural
        details["uid"] = om.get("uid")
        return _Response(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                               "details": details})

    def _delete_collection(self, ctx: _Ctx) -> _Response:
        rt = ctx.rt
        if rt.kind == "Namespace":
            raise errors.method_not_supported(rt.plural, rt.group, "deletecollection")
        pred = and_preds(parse_label_selector(ctx.q("labelSelector", "") or ""),
                         parse_field_selector(ctx.q("fieldSelector", "") or "", rt.kind))
        dry = ctx.dry_run
        ns = (ctx.namespace or None) if rt.namespaced else ""
        with self.store.lock:
            recs, _, _ = self.store.list(rt, ns, None, None, pred)
            if not dry:
                for r in recs:
                    m = r.obj["metadata"]
                    self.store.delete(rt, m.get("namespace", ""), m["name"])
                if recs:
                    self.store.next_rv()
            rv = self.store.rv
        items = [self._typed(rt, ctx.version, r.obj) if not rt.builtin else r.obj for r in recs]
        return _Response(200, {"kind": rt.list_kind, "apiVersion": rt.api_version(ctx.version),
                               "metadata": {"resourceVersion": str(rv)}, "items": items})
