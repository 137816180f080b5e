"""Gateway, Secret and Deployment manifests → what a local gateway serves, by Istio's rules.

``load_manifests(paths)`` reads YAML files and folders (multi-document, ``kind: List`` too) into a
:class:`Manifests`; everything after that is pure: :func:`resolve` turns the documents into
:class:`ServerPlan` values, one per Gateway server that Istio would serve, and one warning line
per server it would leave unserved (missing Secret, missing key, bad PEM, unsupported mode).

The credential rules are Istio's (see :mod:`kimpki.istio.contract`):

* ``credentialName: X``: cert and key from ``cert``/``key`` when both are present, else from
  ``tls.crt``/``tls.key``; the Secret's ``type`` is never looked at. With ``tls.crt``/``tls.key``
  an OCSP staple in ``tls.ocsp-staple`` goes to Envoy too (one that Envoy would reject, not a
  successful response for that certificate, leaves the server unserved).
* MUTUAL / OPTIONAL_MUTUAL: the CA from Secret ``X-cacert`` when it exists (and then no
  fallback, even when it has no CA key), else ``cacert`` in ``X``, else ``ca.crt`` in ``X``. A CRL
  sits beside the CA: ``crl`` with ``cacert``, ``ca.crl`` with ``ca.crt``.
* File-mounted servers (``serverCertificate``/``privateKey``/``caCertificates``/``caCrl``): each path is
  mapped to a Secret through the gateway pod's mounts: the two legacy mounts
  (``istio-ingressgateway-certs``, ``istio-ingressgateway-ca-certs``) plus every ``secret`` volume
  mounted into the ``istio-proxy`` container of a Deployment manifest given. The file name is the
  Secret's data key (or an ``items`` path).

Secrets are looked up by name in the gateway's namespace (the Deployment's, else ``istio-system``),
as Istio does; a Secret without a namespace (what ``kubectl create secret --dry-run=client -o
yaml`` writes) counts as in it. A Secret of that name in another namespace is not found.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import posixpath
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from kimpki import safe_yaml
from kimpki.errors import UsageError
from kimpki.istio import contract as c

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")

# Gateway TLS modes the local gateway terminates; the others are reported and skipped.
TERMINATING_MODES = ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL")
PLAIN = "PLAIN"  # a plain-HTTP server (protocol HTTP/HTTP2/GRPC, no TLS termination)
PLAIN_PROTOCOLS = ("HTTP", "HTTP2", "GRPC", "GRPC-WEB")
TLS_PROTOCOLS = ("HTTPS", "TLS")

SDS_PREFIX = "kubernetes://"


# ---------------------------------------------------------------------------------------------
# Documents
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SecretDoc:
    name: str
    namespace: str | None
    data: dict[str, bytes]
    source: str


@dataclass(frozen=True)
class ConfigMapDoc:
    """A ConfigMap (``data`` as UTF-8, ``binaryData`` decoded): a ``caCertCredentialName`` CA source."""

    name: str
    namespace: str | None
    data: dict[str, bytes]
    source: str


@dataclass(frozen=True)
class GatewayDoc:
    name: str
    namespace: str | None
    servers: tuple[dict, ...]
    source: str

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


@dataclass(frozen=True)
class Mount:
    """A Secret volume seen by the gateway's ``istio-proxy`` container."""

    mount_path: str
    secret_name: str
    items: tuple[tuple[str, str], ...] | None = None  # (key, path) pairs when projected
    sub_path: str | None = None
    origin: str = "default"


@dataclass(frozen=True)
class Manifests:
    secrets: tuple[SecretDoc, ...] = ()
    gateways: tuple[GatewayDoc, ...] = ()
    mounts: tuple[Mount, ...] = ()
    namespace: str | None = None  # the gateway Deployment's namespace, when one was given
    warnings: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()  # "VirtualService/name" of documents not used
    config_maps: tuple[ConfigMapDoc, ...] = ()


DEFAULT_MOUNTS = (
    Mount(c.FILE_MOUNTED_CERTS_PATH, c.FILE_MOUNTED_CERTS_SECRET),
    Mount(c.FILE_MOUNTED_CA_PATH, c.FILE_MOUNTED_CA_SECRET),
)


def manifest_files(paths: Iterable[str | Path]) -> list[Path]:
    """The files behind ``paths``: files as given, folders' YAML/JSON files (not recursive)."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            # scandir and names: a folder of 1,000 Secrets is listed four times a second by a gateway.
            with os.scandir(p) as entries:
                names = sorted(e.name for e in entries
                               if os.path.splitext(e.name)[1].lower() in MANIFEST_SUFFIXES and e.is_file())
            out.extend(p / n for n in names)
        elif p.is_file():
            out.append(p)
        else:
            raise UsageError(f"no such manifest file or folder: {p}")
    return out


ParseCache = dict  # source → (text, its documents): a reload re-parses only the files that changed


def load_manifests(paths: Iterable[str | Path], cache: ParseCache | None = None, validate: bool = False) -> Manifests:
    """Read every document under ``paths``; malformed or oversized YAML is a :class:`UsageError`
    naming ``FILE:LINE`` (read through :mod:`kimpki.safe_yaml`, so an alias bomb is refused).
    With ``cache`` (kept by the caller between calls), a file whose text is unchanged is not
    parsed again: a gateway of 1,000 Secret files reloads one changed Secret quickly."""
    return parse_manifests([(str(f), safe_yaml.read_text(f)) for f in manifest_files(paths)], cache, validate)


def parse_manifests(texts: Iterable[tuple[str, str]], cache: ParseCache | None = None,
                    validate: bool = False) -> Manifests:
    """Pure (but for ``cache``): ``(source, yaml text)`` pairs → :class:`Manifests`. With
    ``validate``, Gateways and VirtualServices are checked as the API server would (:func:`check_istio`)."""
    docs: list[tuple[str, dict]] = []
    seen = set()
    for source, text in texts:
        seen.add(source)
        cached = cache.get(source) if cache is not None else None
        if cached is not None and cached[0] == text:
            loaded = cached[1]
        else:
            loaded = list(safe_yaml.load_all(text, source))
            if cache is not None:
                cache[source] = (text, loaded)
        n = 0
        for doc in loaded:
            for d in _flatten(doc):
                n += 1
                check_shape(d, source, text, n)
                if validate:
                    check_istio(d, source, text, n)
                docs.append((f"{source}#{n}", d))
    if cache is not None:
        for gone in set(cache) - seen:
            del cache[gone]
    return _classify(docs)


# ---------------------------------------------------------------------------------------------
# Shapes: fields whose type is wrong are refused at their FILE:LINE (kubectl would refuse them too)
# ---------------------------------------------------------------------------------------------

def _type_word(value: Any) -> str:
    if isinstance(value, (list, dict)) or value is None:
        return {list: "a list", dict: "a mapping"}.get(type(value), "null")
    shown = repr(value)  # one line (repr escapes newlines), and short: the value may be huge
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return f"the string {shown}" if isinstance(value, str) else shown


def _not_strings(mapping: dict, values_may_be_null: bool) -> Any:
    """The first key of ``mapping`` that is no string or whose value is no string, else None."""
    return next((k for k, v in mapping.items()
                 if not isinstance(k, str) or not (isinstance(v, str) or (v is None and values_may_be_null))), None)


def shape_problem(obj: dict) -> tuple[str, str] | None:
    """``(field path, message)`` for the first field of ``obj`` with the wrong type, else None."""
    meta = obj.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        return "metadata", f"metadata must be a mapping (name: ..., namespace: ...), not {_type_word(meta)}"
    meta = meta or {}
    for key in ("name", "namespace"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            return f"metadata.{key}", f"metadata.{key} must be a string, not {_type_word(meta[key])}"
    for key in ("labels", "annotations"):
        value = meta.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            return f"metadata.{key}", f"metadata.{key} must be a mapping of keys to strings, not {_type_word(value)}"
        bad = _not_strings(value, values_may_be_null=False)
        if bad is not None:
            return f"metadata.{key}", f"metadata.{key}.{bad} must be a string, not {_type_word(value[bad])}"
    if obj.get("kind") != "Secret":
        return None
    name = meta.get("name")
    for key, values in (("data", "base64 strings"), ("stringData", "strings")):
        value = obj.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            return key, f"Secret {name}: {key} must be a mapping of keys to {values}, not {_type_word(value)}"
        bad = _not_strings(value, values_may_be_null=True)
        if bad is not None:
            return key, f"Secret {name}: {key}.{bad} must be a string, not {_type_word(value[bad])}"
    return None


def check_shapes(docs: list, source: str, text: str) -> None:
    """:func:`check_shape` on every object of ``docs``, the documents of ``text``."""
    n = 0
    for doc in docs:
        for d in _flatten(doc):
            n += 1
            check_shape(d, source, text, n)


def check_shape(obj: dict, source: str, text: str, index: int) -> None:
    """Refuse ``obj`` (the ``index``-th object of ``text``, 1-based, as :func:`_flatten` counts)
    with ``FILE:LINE: message`` when :func:`shape_problem` finds something."""
    problem = shape_problem(obj)
    if problem is not None:
        key, message = problem
        line = _key_line(text, index, key)
        raise UsageError(f"{source}:{line}: {message}" if line else f"{source}: {message}")


def check_istio(obj: dict, source: str, text: str, index: int) -> None:
    """Refuse a Gateway or VirtualService the API server would refuse -- its CRD's OpenAPI schema,
    then the CRD's CEL rules -- with ``FILE:LINE: message``, the line of the field at fault."""
    from kimpki.istio import schema

    kind, api = obj.get("kind"), str(obj.get("apiVersion") or "")
    if kind not in schema.KINDS or api.rpartition("/")[0] != schema.GROUP or not schema.available():
        return  # not an Istio networking object: the server's business
    try:
        errs = schema.validate(obj)
    except UsageError as e:  # a version Istio does not serve
        raise UsageError(f"{source}: {e}") from None
    if errs:
        name = (obj.get("metadata") or {}).get("name") if isinstance(obj.get("metadata"), dict) else None
        path = errs[0].split(": ", 1)[0]
        line = _path_line(text, index, path)
        message = f"{kind} {name} does not match Istio's {api} schema: {errs[0]}"
        raise UsageError(f"{source}:{line}: {message}" if line else f"{source}: {message}")


_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _path_line(text: str, index: int, path: str) -> int | None:
    """The line of the deepest node of ``path`` (``spec.servers[0].tls``) that the ``index``-th
    object of ``text`` has (only on the error path: the text is composed again)."""
    import yaml

    n = 0
    try:
        for doc in yaml.compose_all(text, Loader=yaml.SafeLoader):
            for node in _flat_nodes(doc):
                n += 1
                if n != index:
                    continue
                line = node.start_mark.line + 1
                for key, item in _PATH_PART.findall(path):
                    if key and isinstance(node, yaml.MappingNode):
                        found = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key]
                        if not found:
                            break
                        line, node = found[0][0].start_mark.line + 1, found[0][1]
                    elif item and isinstance(node, yaml.SequenceNode) and int(item) < len(node.value):
                        node = node.value[int(item)]
                        line = node.start_mark.line + 1
                    else:
                        break
                return line
    except yaml.YAMLError:
        return None
    return None


def _key_line(text: str, index: int, key: str) -> int | None:
    """The line of top-level ``key`` in the ``index``-th object of ``text`` (else the object's)."""
    return _path_line(text, index, key)


def _flat_nodes(node: Any) -> list:
    """:func:`_flatten` on composed nodes."""
    import yaml

    if not isinstance(node, yaml.MappingNode):
        return []
    fields = {k.value: v for k, v in node.value if isinstance(k, yaml.ScalarNode)}
    kind, items = fields.get("kind"), fields.get("items")
    if isinstance(kind, yaml.ScalarNode) and kind.value.endswith("List") and isinstance(items, yaml.SequenceNode):
        return [m for item in items.value for m in _flat_nodes(item)]
    return [node]


def _flatten(doc: Any) -> list[dict]:
    if not isinstance(doc, dict):
        return []
    if str(doc.get("kind") or "").endswith("List") and isinstance(doc.get("items"), list):
        return [d for item in doc.get("items") or [] for d in _flatten(item)]
    return [doc]


def _classify(docs: list[tuple[str, dict]]) -> Manifests:
    secrets: list[SecretDoc] = []
    gateways: list[GatewayDoc] = []
    mounts: dict[str, Mount] = {m.mount_path: m for m in DEFAULT_MOUNTS}
    warnings: list[str] = []
    ignored: list[str] = []
    namespace = None
    config_maps: list[ConfigMapDoc] = []
    for source, d in docs:
        kind = d.get("kind")
        api = str(d.get("apiVersion") or "")
        meta = d.get("metadata") if isinstance(d.get("metadata"), dict) else {}
        name = meta.get("name")
        ns = meta.get("namespace")
        if kind == "Secret" and api == "v1":
            sec, problem = _secret(name, ns, d, source)
            if problem:
                warnings.append(problem)
            if sec:
                secrets.append(sec)
        elif kind == "ConfigMap" and api == "v1" and name:
            config_maps.append(config_map_doc(d, source))
        elif kind == "Gateway" and api.startswith("networking.istio.io/"):
            spec = d.get("spec") if isinstance(d.get("spec"), dict) else {}
            servers = spec.get("servers") if isinstance(spec.get("servers"), list) else []
            gateways.append(GatewayDoc(str(name or "gateway"), ns, tuple(s for s in servers if isinstance(s, dict)), source))
        elif kind == "Deployment" or (kind is None and _pod_spec(d) is not None):
            # A Deployment, or a kind-less strategic-merge patch of one (kubectl patch -p ...).
            found, problem = _deployment_mounts(d, source)
            if problem:
                warnings.append(problem)
            for m in found:
                mounts[m.mount_path] = m
            if found and ns:
                namespace = ns
        else:
            ignored.append(f"{kind or '?'}/{name or '?'}")
    return Manifests(tuple(secrets), tuple(gateways), tuple(mounts.values()), namespace, tuple(warnings),
                     tuple(ignored), tuple(config_maps))


def config_map_doc(d: dict, source: str) -> ConfigMapDoc:
    """A ConfigMap dict → :class:`ConfigMapDoc`; an undecodable ``binaryData`` value becomes empty."""
    meta = d.get("metadata") if isinstance(d.get("metadata"), dict) else {}
    data: dict[str, bytes] = {}
    for k, v in (d.get("binaryData") if isinstance(d.get("binaryData"), dict) else {}).items():
        try:
            data[str(k)] = base64.b64decode(str(v or ""), validate=True)
        except (binascii.Error, ValueError):
            data[str(k)] = b""
    for k, v in (d.get("data") if isinstance(d.get("data"), dict) else {}).items():
        data[str(k)] = str(v).encode("utf-8")
    return ConfigMapDoc(str(meta.get("name")), meta.get("namespace"), data, source)


def _secret(name: Any, ns: Any, d: dict, source: str) -> tuple[SecretDoc | None, str | None]:
    if not name:
        return None, f"{source}: Secret without metadata.name ignored"
    data: dict[str, bytes] = {}
    for k, v in (d.get("data") or {}).items():
        try:
            data[str(k)] = base64.b64decode(str(v or ""), validate=True)
        except (binascii.Error, ValueError):
            return None, f"{source}: Secret {name}: data key {k} is not valid base64; Secret ignored"
    for k, v in (d.get("stringData") or {}).items():
        data[str(k)] = str(v).encode("utf-8")
    return SecretDoc(str(name), ns, data, source), None


def _pod_spec(d: dict) -> dict | None:
    spec = d.get("spec")
    tmpl = spec.get("template") if isinstance(spec, dict) else None
    pod = tmpl.get("spec") if isinstance(tmpl, dict) else None
    if isinstance(pod, dict) and ("volumes" in pod or "containers" in pod):
        return pod
    return None


def _deployment_mounts(d: dict, source: str) -> tuple[list[Mount], str | None]:
    pod = _pod_spec(d)
    if pod is None:
        return [], None
    volumes = {}
    for v in pod.get("volumes") or []:
        if isinstance(v, dict) and isinstance(v.get("secret"), dict) and v.get("name"):
            s = v["secret"]
            items = None
            if isinstance(s.get("items"), list):
                items = tuple((str(i.get("key")), str(i.get("path"))) for i in s["items"] if isinstance(i, dict))
            volumes[v["name"]] = (str(s.get("secretName") or ""), items)
    containers = [x for x in pod.get("containers") or [] if isinstance(x, dict)]
    proxy = [x for x in containers if x.get("name") == c.GATEWAY_CONTAINER]
    if not proxy:
        if volumes:
            return [], f"{source}: no {c.GATEWAY_CONTAINER} container, so its Secret volumes are not used"
        return [], None
    out = []
    for vm in proxy[0].get("volumeMounts") or []:
        if not isinstance(vm, dict) or vm.get("name") not in volumes or not vm.get("mountPath"):
            continue
        secret_name, items = volumes[vm["name"]]
        out.append(Mount(posixpath.normpath(str(vm["mountPath"])), secret_name, items,
                         vm.get("subPath") or None, origin=source))
    return out, None


# ---------------------------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CertificateCredential:
    """A server certificate chain and its key, named as Envoy's SDS will know it."""

    resource_name: str  # "kubernetes://X" or "file-cert:CERT~KEY", like Istio
    cert_pem: str
    key_pem: str
    origin: str  # for humans: "Secret kim-credential (cert, key)"
    ocsp_staple: bytes | None = None  # DER OCSP response (tls.ocsp-staple, beside tls.crt/tls.key only)


@dataclass(frozen=True)
class CaCredential:
    """The CA bundle (and optional CRL) that client certificates are checked against."""

    resource_name: str  # "kubernetes://X-cacert" or "file-root:PATH", like Istio
    ca_pem: str
    crl_pem: str | None
    origin: str


@dataclass(frozen=True)
class CaCrlFile:
    """A file-mounted server's ``caCrl``: Istio gives Envoy the path (a ``filename`` data source
    in the default validation context); the local gateway writes the content to a file of its
    own, named by the content's hash (``local_path``), so that a changed CRL is a changed
    listener, which Envoy rebuilds in place."""

    path: str  # as the Gateway names it: /etc/istio/ingressgateway-ca-certs/example.com.crl
    crl_pem: str
    origin: str  # "Secret istio-ingressgateway-ca-certs key example.com.crl"
    local_path: str | None = None  # set by the runner once the file is written


@dataclass(frozen=True)
class TlsOptions:
    min_version: str | None = None  # Istio spelling: TLSV1_2
    max_version: str | None = None
    cipher_suites: tuple[str, ...] = ()
    subject_alt_names: tuple[str, ...] = ()
    spki: tuple[str, ...] = ()
    hashes: tuple[str, ...] = ()
    ecdh_curves: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServerPlan:
    """One Gateway server the local gateway serves: where, for which SNI names, with what."""

    gateway: str  # "namespace/name" or "name"
    gateway_name: str
    index: int  # position in the Gateway's servers list
    port: int  # the Gateway's port number (443), not the local one
    port_name: str
    protocol: str
    hosts: tuple[str, ...]  # as written, namespace prefixes removed
    server_names: tuple[str, ...]  # SNI match; () means "any name" (host "*")
    mode: str  # SIMPLE, MUTUAL, OPTIONAL_MUTUAL or PLAIN
    credential: str  # for humans: "credential kim-credential" / "Secret S mounted at /p"
    certificates: tuple[CertificateCredential, ...] = ()
    ca: CaCredential | None = None
    https_redirect: bool = False
    tls: TlsOptions = field(default_factory=TlsOptions)
    ca_crl: CaCrlFile | None = None  # file-mounted: tls.caCrl

    @property
    def label(self) -> str:
        """What the ``x-kimpki-gateway`` response header says: ``<gateway>/<port name>``."""
        return f"{self.gateway_name}/{self.port_name}"

    @property
    def is_tls(self) -> bool:
        return self.mode != PLAIN


@dataclass(frozen=True)
class Resolution:
    plans: tuple[ServerPlan, ...]
    warnings: tuple[str, ...]


class _Unserved(Exception):
    """Why Istio would leave a server without a working filter chain (one line)."""


def resolve(manifests: Manifests) -> Resolution:
    """Pure: every Gateway server → a :class:`ServerPlan` or a warning line naming it and why."""
    warnings = list(manifests.warnings)
    plans: list[ServerPlan] = []
    secrets = SecretIndex(manifests.secrets, manifests.namespace or c.DEFAULT_NAMESPACE, manifests.config_maps)
    claimed: dict[int, dict[str, str]] = {}  # port -> SNI name ("" = default) -> who has it
    port_kind: dict[int, tuple[bool, str]] = {}  # port -> (is_tls, who decided)
    for gw in manifests.gateways:
        for i, server in enumerate(gw.servers):
            what = _describe(gw, i, server)
            try:
                plan = _plan(gw, i, server, secrets, manifests.mounts)
            except _Unserved as e:
                warnings.append(f"{what} not served: {e}")
                continue
            kind = port_kind.setdefault(plan.port, (plan.is_tls, what))
            if kind[0] != plan.is_tls:
                warnings.append(f"{what} not served: port {plan.port} already serves "
                                f"{'TLS' if kind[0] else 'plain HTTP'} for {kind[1]}")
                continue
            taken = claimed.setdefault(plan.port, {})
            names = plan.server_names or ("",)
            clash = [n for n in names if n in taken]
            if clash:
                free = tuple(n for n in names if n not in taken)
                shown = ", ".join(n or "*" for n in clash)
                if not free:
                    warnings.append(f"{what} not served: host {shown} on port {plan.port} "
                                    f"already taken by {taken[clash[0]]}")
                    continue
                warnings.append(f"{what}: host {shown} on port {plan.port} already taken by "
                                f"{taken[clash[0]]}; serving only {', '.join(n or '*' for n in free)}")
                plan = _replace_names(plan, free)
                names = free
            for n in names:
                taken[n] = what
            plans.append(plan)
    return Resolution(tuple(plans), tuple(warnings))


def _replace_names(plan: ServerPlan, names: tuple[str, ...]) -> ServerPlan:
    return replace(plan, server_names=tuple(n for n in names if n))


def _describe(gw: GatewayDoc, i: int, server: dict) -> str:
    hosts = ", ".join(_strip_ns(h) for h in server.get("hosts") or []) or "(no hosts)"
    port = server.get("port") if isinstance(server.get("port"), dict) else {}
    return f"server {hosts} (Gateway {gw.ref}, port {port.get('number', '?')} {port.get('name') or '#' + str(i)})"


def _strip_ns(host: Any) -> str:
    host = str(host)
    return host.split("/", 1)[1] if "/" in host else host


def _plan(gw: GatewayDoc, i: int, server: dict, secrets: SecretIndex, mounts: tuple[Mount, ...]) -> ServerPlan:
    port = server.get("port") if isinstance(server.get("port"), dict) else {}
    try:
        number = int(port.get("number"))
    except (TypeError, ValueError):
        raise _Unserved("port.number is missing or not a number") from None
    protocol = str(port.get("protocol") or "").upper()
    port_name = str(port.get("name") or f"{protocol.lower() or 'port'}-{number}")
    hosts = tuple(_strip_ns(h).lower() for h in server.get("hosts") or [])
    if not hosts:
        raise _Unserved("it has no hosts")
    server_names = () if "*" in hosts else tuple(dict.fromkeys(hosts))
    tls = server.get("tls") if isinstance(server.get("tls"), dict) else {}
    base = dict(gateway=gw.ref, gateway_name=gw.name, index=i, port=number, port_name=port_name,
                protocol=protocol, hosts=hosts, server_names=server_names)

    if protocol in PLAIN_PROTOCOLS:
        return ServerPlan(**base, mode=PLAIN, credential="plain HTTP",
                          https_redirect=bool(tls.get("httpsRedirect")))
    if protocol not in TLS_PROTOCOLS:
        raise _Unserved(f"protocol {protocol or '(none)'} is not served by the local gateway (HTTP, HTTPS, TLS are)")
    mode = str(tls.get("mode") or "PASSTHROUGH").upper()
    if mode not in TERMINATING_MODES:
        default = " (the default when tls.mode is omitted)" if not tls.get("mode") else ""
        raise _Unserved(f"tls.mode {mode}{default} is not supported by the local gateway "
                        f"(SIMPLE, MUTUAL, OPTIONAL_MUTUAL are)")
    options = _tls_options(tls)
    names = credential_names(tls)
    if names:
        certs = tuple(_sds_certificate(n, secrets) for n in names)
        ca_cred = tls.get("caCertCredentialName")
        if mode == "SIMPLE":
            ca = None
        elif ca_cred:
            ca = _ca_credential(str(ca_cred), secrets)
        else:
            ca = _sds_ca(names[0], secrets)
        credential = "credential " + ", ".join(names)
    else:
        certs, ca, credential = _file_mounted(tls, mode, secrets, mounts)
    ca_crl = _file_ca_crl(tls, mode, secrets, mounts) if not names else None
    return ServerPlan(**base, mode=mode, credential=credential, certificates=certs, ca=ca, tls=options,
                      ca_crl=ca_crl)


def credential_names(tls: dict) -> tuple[str, ...]:
    """The Secret names a server's ``tls`` reads, without the ``kubernetes://`` prefix: a non-empty
    ``credentialNames`` wins over ``credentialName``, as in Istio's
    ``ApplyCredentialSDSToServerCommonTLSContext`` (pilot/pkg/security/model/authentication.go)."""
    names: list[str] = []
    if isinstance(tls.get("credentialNames"), list) and any(tls["credentialNames"]):
        names.extend(str(n) for n in tls["credentialNames"] if n)
    elif tls.get("credentialName"):
        names.append(str(tls["credentialName"]))
    return tuple(n[len(SDS_PREFIX):] if n.startswith(SDS_PREFIX) else n for n in names)


def _tls_options(tls: dict) -> TlsOptions:
    def strs(key: str) -> tuple[str, ...]:
        v = tls.get(key)
        return tuple(str(x) for x in v) if isinstance(v, list) else ()

    return TlsOptions(
        min_version=str(tls["minProtocolVersion"]) if tls.get("minProtocolVersion") else None,
        max_version=str(tls["maxProtocolVersion"]) if tls.get("maxProtocolVersion") else None,
        cipher_suites=strs("cipherSuites"),
        subject_alt_names=strs("subjectAltNames"),
        spki=strs("verifyCertificateSpki"),
        hashes=strs("verifyCertificateHash"),
        ecdh_curves=strs("ecdhCurves"),
    )


class SecretIndex:
    """Secrets by name: the one in the gateway's namespace wins, then one without a namespace
    (``kubectl create secret --dry-run=client -o yaml``). Istio reads only the gateway's own
    namespace, so a Secret elsewhere is not found."""

    def __init__(self, secrets: Iterable[SecretDoc], namespace: str, config_maps: Iterable[ConfigMapDoc] = ()):
        self.namespace = namespace
        self.by_name: dict[str, list[SecretDoc]] = {}
        for s in secrets:
            self.by_name.setdefault(s.name, []).append(s)
        self.config_maps: dict[str, list[ConfigMapDoc]] = {}
        for m in config_maps:
            self.config_maps.setdefault(m.name, []).append(m)

    def get_config_map(self, namespace: str, name: str) -> ConfigMapDoc | None:
        """ConfigMap ``namespace/name`` (one written without a namespace counts as in the gateway's)."""
        found = self.config_maps.get(name) or []
        matching = [m for m in found if (m.namespace or self.namespace) == namespace]
        return matching[-1] if matching else None

    def get(self, name: str, namespace: str | None = None) -> SecretDoc | None:
        found = self.by_name.get(name) or []
        namespace = namespace or self.namespace
        for want in (lambda s: s.namespace == namespace, lambda s: s.namespace is None and namespace == self.namespace):
            matching = [s for s in found if want(s)]
            if matching:
                return matching[-1]  # the later document wins, as with kubectl apply
        return None


def _has(data: dict[str, bytes], *keys: str) -> bool:
    return all(data.get(k) for k in keys)


def _sds_certificate(name: str, secrets: SecretIndex) -> CertificateCredential:
    sec = secrets.get(name)
    if sec is None:
        raise _Unserved(f"Secret {name} not found")
    if _has(sec.data, c.GENERIC_CERT, c.GENERIC_KEY):
        cert_key, key_key = c.GENERIC_CERT, c.GENERIC_KEY
    elif _has(sec.data, c.TLS_CERT, c.TLS_KEY):
        cert_key, key_key = c.TLS_CERT, c.TLS_KEY
    else:
        raise _Unserved(f"Secret {name} has neither keys {c.GENERIC_CERT} and {c.GENERIC_KEY} nor "
                        f"{c.TLS_CERT} and {c.TLS_KEY} (it has: {_keys(sec)})")
    where = f"Secret {name}"
    cert_pem, key_pem = check_key_pair(sec.data[cert_key], sec.data[key_key], f"{where} key {cert_key}",
                                       f"{where} key {key_key}")
    # Istio reads the staple only with the tls key set (its generic set has no staple key).
    staple = sec.data.get(c.OCSP_STAPLE) if cert_key == c.TLS_CERT else None
    if staple:
        check_staple(staple, cert_pem, f"{where} key {c.OCSP_STAPLE}")
    return CertificateCredential(SDS_PREFIX + name, cert_pem, key_pem, f"{where} ({cert_key}, {key_key})",
                                 staple or None)


def _sds_ca(name: str, secrets: SecretIndex) -> CaCredential:
    ca_name = c.cacert_secret_name(name)
    sec = secrets.get(ca_name)
    if sec is not None:
        picked = _ca_keys(sec.data)
        if picked is None:
            raise _Unserved(f"Secret {ca_name} exists but has neither {c.GENERIC_CA} nor {c.TLS_CA} "
                            f"(it has: {_keys(sec)}); Istio does not fall back to Secret {name}")
    else:
        sec = secrets.get(name)
        if sec is None:
            raise _Unserved(f"Secret {name} not found")
        picked = _ca_keys(sec.data)
        if picked is None:
            raise _Unserved(f"a MUTUAL server needs a CA: Secret {name} has neither {c.GENERIC_CA} nor "
                            f"{c.TLS_CA}, and there is no Secret {ca_name}")
    ca_key, crl_key = picked
    ca_pem = check_ca(sec.data[ca_key], f"Secret {sec.name} key {ca_key}")
    crl_pem = check_crl(sec.data[crl_key], f"Secret {sec.name} key {crl_key}") if sec.data.get(crl_key) else None
    return CaCredential(SDS_PREFIX + ca_name, ca_pem, crl_pem, f"Secret {sec.name} ({ca_key})")


CONFIGMAP_PREFIX = "configmap://"


def ca_credential_source(name: str, secrets: SecretIndex) -> tuple[str, str, str, SecretDoc | ConfigMapDoc | None]:
    """Where Istio reads a ``caCertCredentialName`` from (pilot/pkg/xds/sds.go, pilot/pkg/credentials/kube):
    ``(kind, namespace/name shown, SDS resource name, the document or None)``.

    * ``configmap://NAMESPACE/NAME``: ConfigMap NAME (keys ``cacert`` or ``ca.crt``);
    * ``NAME`` (``kubernetes://NAME``): istiod treats a resource as CA-only only when its name ends
      in ``-cacert``, and then reads Secret NAME, else NAME without the suffix. A NAME without the
      suffix is fetched as a certificate and key, never as a CA: ``kind`` is then ``"not-ca"``.
    """
    if name.startswith(CONFIGMAP_PREFIX):
        ns, _, cm_name = name[len(CONFIGMAP_PREFIX):].partition("/")
        if not ns or not cm_name or "/" in cm_name:
            return "invalid", name, name, None
        return "ConfigMap", f"{ns}/{cm_name}", name, secrets.get_config_map(ns, cm_name)
    plain = name[len(SDS_PREFIX):] if name.startswith(SDS_PREFIX) else name
    ns, _, bare = plain.rpartition("/")
    ns = ns or secrets.namespace
    if not bare.endswith(c.CACERT_SECRET_SUFFIX):
        return "not-ca", f"{ns}/{bare}", SDS_PREFIX + plain, secrets.get(bare, ns)
    sec = secrets.get(bare, ns) or secrets.get(bare[: -len(c.CACERT_SECRET_SUFFIX)], ns)
    return "Secret", f"{ns}/{bare}", SDS_PREFIX + plain, sec


def _ca_credential(name: str, secrets: SecretIndex) -> CaCredential:
    kind, shown, resource, doc = ca_credential_source(name, secrets)
    if kind == "invalid":
        raise _Unserved(f"caCertCredentialName {name}: a ConfigMap is named configmap://NAMESPACE/NAME")
    if kind == "not-ca":
        raise _Unserved(f"caCertCredentialName {name}: Istio reads a Secret whose name does not end in "
                        f"{c.CACERT_SECRET_SUFFIX} as a certificate and key, not as a CA; name the CA-only Secret "
                        f"{name}{c.CACERT_SECRET_SUFFIX}")
    if doc is None:
        raise _Unserved(f"caCertCredentialName: {kind} {shown} not found")
    picked = _ca_keys(doc.data)
    if picked is None:
        raise _Unserved(f"caCertCredentialName: {kind} {doc.name} has neither {c.GENERIC_CA} nor {c.TLS_CA} "
                        f"(it has: {', '.join(sorted(doc.data)) or 'no data'})")
    ca_key, crl_key = picked
    where = f"{kind} {doc.name}"
    ca_pem = check_ca(doc.data[ca_key], f"{where} key {ca_key}")
    crl_pem = check_crl(doc.data[crl_key], f"{where} key {crl_key}") if doc.data.get(crl_key) else None
    return CaCredential(resource, ca_pem, crl_pem, f"{where} ({ca_key})")


def _ca_keys(data: dict[str, bytes]) -> tuple[str, str] | None:
    if _has(data, c.GENERIC_CA):
        return c.GENERIC_CA, c.GENERIC_CRL
    if _has(data, c.TLS_CA):
        return c.TLS_CA, c.TLS_CRL
    return None


def _keys(sec: SecretDoc) -> str:
    return ", ".join(sorted(sec.data)) or "no data"


def _file_mounted(tls: dict, mode: str, secrets: SecretIndex, mounts: tuple[Mount, ...]):
    cert_path, key_path = tls.get("serverCertificate"), tls.get("privateKey")
    if not cert_path or not key_path:
        raise _Unserved("tls needs credentialName, or serverCertificate and privateKey")
    cert_raw, cert_where = _mounted_file(str(cert_path), secrets, mounts)
    key_raw, key_where = _mounted_file(str(key_path), secrets, mounts)
    cert_pem, key_pem = check_key_pair(cert_raw, key_raw, cert_where, key_where)
    cert = CertificateCredential(f"file-cert:{cert_path}~{key_path}", cert_pem, key_pem, f"{cert_where}, {key_where}")
    ca = None
    if mode != "SIMPLE":
        ca_path = tls.get("caCertificates")
        if not ca_path:
            raise _Unserved(f"a {mode} server needs credentialName or caCertificates")
        ca_raw, ca_where = _mounted_file(str(ca_path), secrets, mounts)
        ca = CaCredential(f"file-root:{ca_path}", check_ca(ca_raw, ca_where), None, ca_where)
    secret_names = sorted({_mount_for(str(p), mounts)[0].secret_name for p in (cert_path, key_path)})
    return (cert,), ca, "Secret " + ", ".join(secret_names) + f" mounted at {posixpath.dirname(str(cert_path))}"


def _file_ca_crl(tls: dict, mode: str, secrets: SecretIndex, mounts: tuple[Mount, ...]) -> "CaCrlFile | None":
    """A file-mounted server's ``caCrl`` (Istio >= 1.22): the file read through the pod's mounts,
    like ``caCertificates``. A missing file is a server Istio's Envoy would refuse (it reads the
    path when it builds the listener), so it is not served."""
    path = tls.get("caCrl")
    if not path or mode == "SIMPLE":
        return None
    raw, where = _mounted_file(str(path), secrets, mounts)
    return CaCrlFile(str(path), check_crl(raw, where), where)


def _mount_for(path: str, mounts: tuple[Mount, ...]) -> tuple[Mount, str]:
    path = posixpath.normpath(path)
    best = None
    for m in mounts:
        if m.sub_path and path == m.mount_path:
            return m, m.sub_path
        if not m.sub_path and path.startswith(m.mount_path.rstrip("/") + "/"):
            if best is None or len(m.mount_path) > len(best.mount_path):
                best = m
    if best is None:
        known = ", ".join(f"{m.mount_path} ({m.secret_name})" for m in mounts)
        raise _Unserved(f"{path} is not in a mounted Secret volume (mounts: {known}; "
                        f"give the gateway Deployment manifest to add more)")
    return best, path[len(best.mount_path.rstrip("/")) + 1:]


def mount_for(path: str, mounts: tuple[Mount, ...]) -> tuple[str, str]:
    """``/etc/istio/ingressgateway-certs/tls.crt`` → ``("istio-ingressgateway-certs", "tls.crt")``.

    Raises ``LookupError`` when no mount covers the path.
    """
    try:
        m, rel = _mount_for(path, mounts)
    except _Unserved as e:
        raise LookupError(str(e)) from None
    return m.secret_name, _key_for(m, rel) or rel


def _key_for(m: Mount, rel: str) -> str | None:
    if m.items is None:
        return rel
    for key, item_path in m.items:
        if posixpath.normpath(item_path) == rel:
            return key
    return None


def _mounted_file(path: str, secrets: SecretIndex, mounts: tuple[Mount, ...]) -> tuple[bytes, str]:
    m, rel = _mount_for(path, mounts)
    key = _key_for(m, rel)
    if key is None:
        raise _Unserved(f"{path}: the volume of Secret {m.secret_name} at {m.mount_path} does not project "
                        f"a file {rel} (its items: {', '.join(p for _, p in m.items or ())})")
    sec = secrets.get(m.secret_name)
    if sec is None:
        raise _Unserved(f"{path}: Secret {m.secret_name} (mounted at {m.mount_path}) not found")
    if not sec.data.get(key):
        raise _Unserved(f"{path}: Secret {m.secret_name} (mounted at {m.mount_path}) has no key {key} "
                        f"(it has: {_keys(sec)})")
    return sec.data[key], f"Secret {m.secret_name} key {key}"


# ---------------------------------------------------------------------------------------------
# PEM checks: what Envoy would reject, reported before Envoy sees it
# ---------------------------------------------------------------------------------------------

def _text(raw: bytes, where: str) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise _Unserved(f"{where} is not PEM text") from None


def check_key_pair(cert_raw: bytes, key_raw: bytes, cert_where: str, key_where: str) -> tuple[str, str]:
    cert_pem = _text(cert_raw, cert_where)
    key_pem = _text(key_raw, key_where)
    problem = _key_pair_problem(cert_raw, key_raw)
    if problem is not None:
        where = cert_where if problem.startswith("holds no PEM certificate") else key_where
        raise _Unserved(f"{where} {problem}".replace("{cert_where}", cert_where))
    return cert_pem, key_pem


@functools.lru_cache(maxsize=32768)
def _key_pair_problem(cert_raw: bytes, key_raw: bytes) -> str | None:
    """What is wrong with a certificate and key (None: nothing). Remembered, so that a gateway
    reloading 1,000 Secrets parses only the pairs that changed."""
    try:
        chain = x509.load_pem_x509_certificates(cert_raw)
    except ValueError:
        return "holds no PEM certificate"
    try:
        key = serialization.load_pem_private_key(key_raw, password=None)
    except TypeError:
        return "is an encrypted private key (Envoy needs it unencrypted)"
    except (ValueError, UnsupportedAlgorithm) as e:
        return f"holds no usable PEM private key ({type(e).__name__})"
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, pub) != chain[0].public_key().public_bytes(der, pub):
        return "does not match the certificate in {cert_where}"
    return None


def check_ca(raw: bytes, where: str) -> str:
    pem = _text(raw, where)
    try:
        x509.load_pem_x509_certificates(raw)
    except ValueError:
        raise _Unserved(f"{where} holds no PEM certificate") from None
    return pem


def check_staple(raw: bytes, cert_pem: str, where: str) -> None:
    """Envoy refuses a secret whose OCSP staple is not a successful response for exactly its
    certificate ("OCSP response does not match its TLS certificate"): such a server is not
    served. An expired staple is no reason: Envoy's lenient policy then serves it unstapled."""
    from kimpki.pki.revocation import staple_refusal

    why = staple_refusal(raw, x509.load_pem_x509_certificate(cert_pem.encode()).serial_number)
    if why is not None:
        raise _Unserved(f"{where} {why} (Envoy refuses it)")


def check_crl(raw: bytes, where: str) -> str:
    pem = _text(raw, where)
    try:
        x509.load_pem_x509_crl(raw)
    except ValueError:
        raise _Unserved(f"{where} holds no PEM CRL") from None
    return pem
