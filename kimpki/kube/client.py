"""``Cluster``: the few Kubernetes API calls kimpki makes, returning plain dicts.

Every call goes through the official client's ``ApiClient``: its configuration loading, TLS,
auth (with its token refresh hook) and urllib3 connection pool, with raw JSON bodies: no model
classes, so Istio custom resources and built-ins look the same and ``data`` values stay base64
strings, exactly as ``kubectl get -o json`` shows them. Errors become one-line
:class:`kimpki.kube.errors.KubeError` values.

Writes are create-or-update *in place* guarded by ``metadata.resourceVersion``, never delete
and re-create: istiod would otherwise see the credential vanish, and the gateway's listeners
would stop serving until it came back.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator
from urllib.parse import quote, urlsplit

from kimpki.errors import UsageError
from kimpki.istio import contract as c
from kimpki.kube import errors as kerr
from kimpki.kube import objects
from kimpki.kube.config import load, timeout_from_env
from kimpki.kube.kinds import Kind, kind_of, kind_of_object, path, version_for
from kimpki.kube.pushback import Pushback, RateLimiter, retry_after_seconds, warnings_of, write_is_guarded

JSON = "application/json"
JSON_PATCH = "application/json-patch+json"


def _stderr_notice(text: str) -> None:
    print(f"kimpki: {text}", file=sys.stderr, flush=True)


@dataclass
class UpsertResult:
    """``action`` is "created", "updated" or "unchanged"; ``object`` what the server holds now
    (or would hold, for a dry run); ``previous`` what it held before (None when created)."""

    action: str
    object: dict
    previous: dict | None
    attempts: int = 1

    @property
    def changed(self) -> bool:
        return self.action != "unchanged"


class Cluster:
    """A connection to one cluster. Build it with :meth:`connect`."""

    def __init__(self, api_client: Any, server: str, *, timeout: float = 10.0, source: str = "",
                 context: str | None = None, pushback: Pushback | None = None):
        self._api = api_client
        self.server = server
        self.timeout = timeout
        self.source = source
        self.context = context
        self.pushback = pushback or Pushback(notice=_stderr_notice)
        self.requests = 0  # how many HTTP requests this Cluster sent
        self._counting = threading.Lock()  # renew writes from several threads
        from urllib3 import ProxyManager, Timeout  # imported with kubernetes, not by "import kimpki.kube"

        # Requests go to the client's own urllib3 pools (its TLS settings, client certificate,
        # proxy, and no retries: see kube.config.load). One server per Cluster, so its connection
        # pool is looked up once; the pool manager's urlopen would parse the URL and look it up
        # again for every request. Through an HTTP proxy the manager's urlopen adds what the proxy
        # needs (its headers, absolute URLs), so there it is used with the whole URL.
        manager = api_client.rest_client.pool_manager
        host = api_client.configuration.host.rstrip("/")
        if isinstance(manager, ProxyManager):
            self._urlopen, self._prefix = manager.urlopen, host
        else:
            self._urlopen, self._prefix = manager.connection_from_url(host).urlopen, urlsplit(host).path
        self._timeouts = Timeout(connect=timeout, read=timeout)

    # ------------------------------------------------------------------ construction
    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None, *,
                timeout: float | None = None, qps: float = 0.0, burst: int = 0,
                notice: Callable[[str], None] | None = None) -> "Cluster":
        """Load ``--kubeconfig`` / ``$KUBECONFIG`` / ``~/.kube/config`` (``--context``), else the
        in-cluster service account. ``timeout`` (seconds, for connecting and for each answer)
        defaults to ``$KIMPKI_KUBE_TIMEOUT`` or 10. ``qps``/``burst``: a client-side rate limit
        (off when qps is 0). ``notice`` receives one line whenever kimpki waits because the API
        server pushed back (default: stderr). Nothing is sent yet."""
        t = timeout_from_env(timeout)
        api, server, source = load(kubeconfig, context)
        pushback = Pushback(notice=notice or _stderr_notice, limiter=RateLimiter(qps, burst))
        return cls(api, server, timeout=t, source=str(source), context=context, pushback=pushback)

    def close(self) -> None:
        try:
            self._api.close()
        except Exception:  # noqa: BLE001 - closing must never fail a command
            pass

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Cluster({self.server!r}, {self.source})"

    # ------------------------------------------------------------------ the one request path
    def _call(self, method: str, k: Kind, version: str, namespace: str | None, name: str | None = None, *,
              query: list[tuple[str, str]] | None = None, body: Any = None, content_type: str = JSON,
              subresource: str | None = None, named: str | None = None) -> dict:
        """One request. ``named``: the object's name for messages when it is not in the URL (POST)."""
        if k.namespaced and not namespace and (name or method != "GET"):
            raise UsageError(f"{k.kind} {name or ''} needs a namespace".replace("  ", " "))
        call = kerr.Call(method, k, version, namespace if k.namespaced else None, name or named, self.server,
                         subresource)
        resource_path = path(k, version, namespace, name, subresource)
        # The client's own default headers (User-Agent), then ours; the body serialized once, here.
        # The request goes straight to the client's urllib3 connection pool (see __init__): the
        # generated param_serialize/sanitize/call_api layers cost about as much CPU as the request
        # itself in a renewal of 1,000 Secrets, and only re-did for plain JSON dicts what
        # json.dumps does.
        headers = {**self._api.default_headers, "Accept": JSON}
        payload = None
        if body is not None:
            headers["Content-Type"] = content_type
            payload = json.dumps(body).encode()
        query = list(query or [])
        try:
            # The client's auth, as its generated API methods apply it: the bearer token, after
            # the configuration's refresh hook (an exec plugin's expired token, a rotated token file).
            self._api.update_params_for_auth(headers, query, ["BearerToken"], resource_path, method, payload)
        except Exception as e:  # noqa: BLE001 - the auth refresh hook (exec plugin, token file) failed
            raise kerr.ConfigError(f"cannot get credentials for the Kubernetes API at {self.server}: "
                                   f"{kerr.one_line(str(e), 200)}") from None
        # The query as the client's parameters_to_url_query writes it (values quoted, "/" kept).
        url = self._prefix + resource_path
        if query:
            url += "?" + "&".join(f"{key}={quote(str(value))}" for key, value in query)
        pb = self.pushback
        waited = 0.0  # seconds spent honouring Retry-After for this request
        read_retries = 0
        while True:
            pb.limiter.wait()
            with self._counting:  # renew writes from several threads
                self.requests += 1
            try:
                resp = self._urlopen(method, url, body=payload, headers=headers, timeout=self._timeouts,
                                     redirect=False)  # an API server answers, it does not redirect
                data = resp.data
            except Exception as e:  # noqa: BLE001 - urllib3/ssl/socket errors
                raise kerr.from_transport(call, e, self.timeout) from None
            if 200 <= resp.status < 300:
                # e.g. the unknown fields the server dropped (fieldValidation defaults to Warn):
                # said, as kubectl and client-go's default warning handler say them
                for text in warnings_of((resp.headers or {}).get("Warning")):
                    pb.say(f"the Kubernetes API warned on {call.verb} {call.what}: {text}")
                break
            code = resp.status
            if code == 429 or code >= 500:
                after = retry_after_seconds((resp.headers or {}).get("Retry-After"))
                resendable = method == "GET" or write_is_guarded(method, body, content_type)
                if after is not None and resendable and waited + after <= pb.max_wait:
                    waited += after
                    pb.say(f"the Kubernetes API answered {code} to {call.verb} {call.what} and asked to retry "
                           f"after {after} s: waiting ({waited:g} s of at most {pb.max_wait:g} s for this request)")
                    pb.sleep(after)
                    continue
                if code >= 500 and method == "GET" and after is None and read_retries < pb.read_retries:
                    read_retries += 1
                    delay = pb.backoff(read_retries)
                    pb.say(f"the Kubernetes API answered {code} to {call.verb} {call.what}: reading again in "
                           f"{delay:.1f} s (retry {read_retries} of {pb.read_retries})")
                    pb.sleep(delay)
                    continue
                if after is not None and not resendable:
                    raise kerr.from_response(call, code, data, retry_after=after, note=(
                        "not resent: this write is not guarded by a resourceVersion, so a second copy "
                        "could apply twice"))
                if after is not None:
                    raise kerr.from_response(call, code, data, retry_after=after, note=(
                        f"gave up: waiting {after} s more would pass the {pb.max_wait:g} s limit"
                        + (f" after {waited:g} s of waiting" if waited else "")))
                if read_retries:
                    raise kerr.from_response(call, code, data, note=f"after {read_retries + 1} attempts")
            raise kerr.from_response(call, code, data)
        try:
            return json.loads(data)
        except ValueError:
            raise kerr.KubeError(f"the Kubernetes API at {self.server} answered {call.verb} {call.what} "
                                 f"with something that is not JSON") from None

    @staticmethod
    def _dry(dry_run: bool) -> list[tuple[str, str]]:
        return [("dryRun", "All")] if dry_run else []

    @staticmethod
    def _target(obj: dict) -> tuple[Kind, str, str | None, str]:
        k, version = kind_of_object(obj)
        m = obj.get("metadata") or {}
        name = m.get("name")
        if not name:
            raise UsageError(f"{k.kind} has no metadata.name")
        ns = m.get("namespace") if k.namespaced else None
        if k.namespaced and not ns:
            raise UsageError(f"{k.kind} {name} has no metadata.namespace")
        return k, version, ns, name

    @staticmethod
    def _typed(k: Kind, version: str, obj: dict) -> dict:
        # items of built-in lists come without kind/apiVersion; put them back (kubectl does too)
        if "kind" not in obj or "apiVersion" not in obj:
            obj = {"apiVersion": k.api_version(version), "kind": k.kind, **obj}
        return obj

    # ------------------------------------------------------------------ verbs
    def get(self, kind: str, namespace: str | None, name: str, *, api_version: str | None = None) -> dict | None:
        """The object, or None when it does not exist. A missing namespace is also None (the
        API server answers a GET there with the object's 404); a kind the server does not serve
        raises :class:`~kimpki.kube.errors.NotServed`."""
        k = kind_of(kind)
        version = version_for(k, api_version)
        try:
            return self._call("GET", k, version, namespace, name)
        except kerr.NamespaceNotFound:
            return None
        except kerr.NotServed:
            raise
        except kerr.NotFound:
            return None

    def create(self, obj: dict, *, dry_run: bool = False) -> dict:
        """POST ``obj`` (server-owned metadata such as resourceVersion and uid is dropped)."""
        k, version, ns, name = self._target(obj)
        body = objects.for_create(obj)
        body["apiVersion"], body["kind"] = k.api_version(version), k.kind
        return self._call("POST", k, version, ns, None, body=body, query=self._dry(dry_run), named=name)

    def replace(self, obj: dict, *, dry_run: bool = False) -> dict:
        """PUT ``obj``; its ``metadata.resourceVersion`` makes the server refuse (409) when the
        object changed since it was read."""
        k, version, ns, name = self._target(obj)
        body = dict(obj)
        body["apiVersion"], body["kind"] = k.api_version(version), k.kind
        return self._call("PUT", k, version, ns, name, body=body, query=self._dry(dry_run))

    def json_patch(self, kind: str, namespace: str | None, name: str, ops: list[dict], *,
                   dry_run: bool = False, api_version: str | None = None) -> dict:
        """RFC 6902 JSON patch (``application/json-patch+json``); add a ``test`` op to guard."""
        if not isinstance(ops, list) or not all(isinstance(o, dict) and o.get("op") for o in ops):
            raise UsageError("a JSON patch is a list of operations like {'op': 'add', 'path': ..., 'value': ...}")
        k = kind_of(kind)
        return self._call("PATCH", k, version_for(k, api_version), namespace, name, body=ops,
                          content_type=JSON_PATCH, query=self._dry(dry_run))

    def list(self, kind: str, namespace: str | None, label_selector: str | None = None, page_size: int = 500, *,
             api_version: str | None = None, field_selector: str | None = None) -> Iterator[dict]:
        """Every object of ``kind`` in ``namespace`` (None: all namespaces), fetched ``page_size``
        at a time, following ``continue`` tokens. A generator: requests go out as you iterate."""
        k = kind_of(kind)
        version = version_for(k, api_version)
        if page_size <= 0:
            raise UsageError("page_size must be positive")
        token = None
        full_list = False  # after a 410 Expired: one unpaginated list, as client-go's pager does
        yielded: set[tuple[str, str]] = set()
        while True:
            query = [] if full_list else [("limit", str(page_size))]
            if label_selector:
                query.append(("labelSelector", label_selector))
            if field_selector:
                query.append(("fieldSelector", field_selector))
            if token:
                query.append(("continue", token))
            try:
                page = self._call("GET", k, version, namespace if k.namespaced else None, None, query=query)
            except kerr.Expired as e:
                if full_list:
                    raise kerr.Expired(f"the Kubernetes API expired the list of {e.what} while paging, and again "
                                       f"when it was listed in one request ({e.server_message or e.reason}): "
                                       "run the command again", code=e.code, reason=e.reason,
                                       server_message=e.server_message) from None
                if not token:
                    raise
                # The continue token outlived etcd's compaction (the sweep between pages took
                # longer than the compaction interval). client-go's pager falls back to one full
                # list; items already handed out are not handed out again.
                self.pushback.say(f"the Kubernetes API expired the paged list of {e.what} after "
                                  f"{len(yielded)} items (410 Expired): listing them again in one request")
                full_list, token = True, None
                continue
            for item in page.get("items") or []:
                m = item.get("metadata") or {}
                key = (m.get("namespace") or "", m.get("name") or "")
                if full_list:
                    if key in yielded:
                        continue
                else:
                    yielded.add(key)
                yield self._typed(k, version, item)
            token = (page.get("metadata") or {}).get("continue")
            if not token or full_list:
                return

    # ------------------------------------------------------------------ create-or-update
    def _backoff(self, attempt: int) -> None:
        # client-go's retry.DefaultRetry is 10 ms steps with jitter; a little more each time here
        time.sleep(min(0.01 * attempt, 0.1) * (1 + random.random() * 0.5))

    def upsert_secret(self, secret: dict, *, force: bool = False, dry_run: bool = False,
                      retries: int = 5, current: dict | None = None) -> UpsertResult:
        """Create the Secret, or update it in place when kimpki manages it (or ``force``).

        Nothing is written when data, type, labels and annotations already match. ``current``:
        the Secret as the caller just read it (its resourceVersion guards the update; saves a
        GET). A 409 (someone wrote in between) re-reads and tries again, at most ``retries``
        more times.
        A Secret not labelled ``app.kubernetes.io/managed-by=kimpki`` is refused unless
        ``force``; a ``type`` change is refused (the API server cannot change it in place)."""
        desired = objects.normalize_secret(secret)
        m = desired["metadata"]
        ns, name = m["namespace"], m["name"]
        attempt = 0
        known = current
        while True:
            attempt += 1
            current, known = (known if known is not None else self.get("Secret", ns, name)), None
            try:
                if current is None:
                    created = self.create(desired, dry_run=dry_run)
                    return UpsertResult("created", created, None, attempt)
                if not force and not objects.is_managed(current):
                    raise kerr.Unmanaged(
                        f"Secret {ns}/{name} exists and kimpki does not manage it (no label "
                        f"{c.MANAGED_BY_LABEL}={c.MANAGED_BY_VALUE}): give --force to update it in place")
                old_type = current.get("type") or c.SECRET_TYPE_OPAQUE
                if old_type != desired["type"]:
                    raise kerr.ImmutableSecretType(kerr.secret_type_message(ns, name, old_type, desired["type"]),
                                                   code=422, reason="Invalid")
                new = objects.merge_secret(current, desired)
                if objects.secret_unchanged(current, new):
                    return UpsertResult("unchanged", current, current, attempt)
                updated = self.replace(new, dry_run=dry_run)
                return UpsertResult("updated", updated, current, attempt)
            except (kerr.Conflict, kerr.AlreadyExists) as e:
                if attempt > retries:
                    raise kerr.Conflict(f"Secret {ns}/{name} kept changing while kimpki wrote it: gave up after "
                                        f"{attempt} attempts ({e})", code=409, reason=e.reason) from None
                self._backoff(attempt)

    def apply(self, obj: dict, *, dry_run: bool = False, retries: int = 5, current: dict | None = None) -> UpsertResult:
        """Create ``obj`` or replace the existing object's content with it, in place, guarded by
        the resourceVersion just read (bounded retry on 409). Labels and annotations are merged
        (``obj``'s win), the rest of the content is ``obj``'s. "unchanged" when nothing differs,
        or when the server found the update to be a no-op. ``current``: the object as the caller
        just read it (its resourceVersion guards the first attempt; saves a GET)."""
        k, version, ns, name = self._target(obj)
        attempt = 0
        known = current
        while True:
            attempt += 1
            current, known = (known if known is not None
                              else self.get(k.kind, ns, name, api_version=k.api_version(version))), None
            try:
                if current is None:
                    return UpsertResult("created", self.create(obj, dry_run=dry_run), None, attempt)
                if objects.object_unchanged(current, obj):
                    return UpsertResult("unchanged", current, current, attempt)
                new = objects.merge_object(current, obj)
                new["apiVersion"], new["kind"] = k.api_version(version), k.kind
                updated = self.replace(new, dry_run=dry_run)
                rv_before = (current.get("metadata") or {}).get("resourceVersion")
                rv_after = (updated.get("metadata") or {}).get("resourceVersion")
                action = "unchanged" if (not dry_run and rv_before == rv_after) else "updated"
                return UpsertResult(action, updated, current, attempt)
            except (kerr.Conflict, kerr.AlreadyExists) as e:
                if attempt > retries:
                    raise kerr.Conflict(f"{k.kind} {ns + '/' if ns else ''}{name} kept changing while kimpki "
                                        f"wrote it: gave up after {attempt} attempts ({e})",
                                        code=409, reason=e.reason) from None
                self._backoff(attempt)
