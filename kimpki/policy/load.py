"""Load and check policy files: YAML documents → a :class:`~kimpki.policy.model.Policy`.

Two passes. The first reads each document on its own (kind, fields, types, names, durations,
host names); the second checks what documents say about each other (references, duplicates,
a client certificate used as a server credential, hosts outside a CA's constraints, mounts for
file-mounted servers) and renders every Gateway, checking it by Istio's rules and against the
CRD schema kimpki ships (``jsonschema``). Every problem is a
:class:`~kimpki.policy.source.PolicyError`: one line ``FILE:LINE: message``, exit code 2.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

import yaml

from kimpki import safe_yaml, secret_env
from kimpki.errors import KimpkiError, UsageError
from kimpki.istio import contract as c
from kimpki.istio.credential import CredentialSpec, default_ca_file_name
from kimpki.pki import pairs
from kimpki.pki.constraints import NameConstraints, violations
from kimpki.pki.durations import DurationOutOfRange, check_lifetime, parse_duration
from kimpki.pki.keys import DEFAULT_KEY_TYPE, parse_key_type
from kimpki.pki.names import HostName, check_org, check_san_count, parse_host, parse_hosts, safe_store_name
from kimpki.pki.renewal import RenewBefore
from kimpki.pki.windows import MaintenanceWindow, parse_time_of_day, parse_weekdays, parse_zone
from kimpki.policy import model as m
from kimpki.policy.source import Document, Fields, PolicyError, Where, read_documents, where_of

KINDS = ("Target", "CertificateAuthority", "Certificate", "Credential", "GatewayMount", "Gateway")
NAMESPACED = ("Credential", "GatewayMount", "Gateway")

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def load_policy(paths: Iterable[str | Path]) -> m.Policy:
    """Read and check every policy file under ``paths``; a PolicyError for the first problem."""
    # The documents' nodes live until the policy is built from them, and no longer: no collection
    # meanwhile (safe_yaml.collector_paused says why); _load's locals, the nodes, are freed by
    # reference counting when it returns, before the collector is back.
    with safe_yaml.collector_paused():
        return _load(list(paths))


def _load(paths: list[str | Path]) -> m.Policy:
    docs = read_documents(paths)
    if not docs:
        raise UsageError(f"no policy documents in {', '.join(map(str, paths))}")
    raw = [_read(d) for d in docs]
    return _link(raw, tuple(dict.fromkeys(d.file for d in docs)))


# ---------------------------------------------------------------------------------------------
# Pass 1: one document at a time
# ---------------------------------------------------------------------------------------------

@dataclass
class _Raw:
    """A document read on its own: ``value`` is the model object with ``target`` still a Target's
    name (or None for "the only one"); ``refs`` the lines of the fields that name other documents."""

    kind: str
    name: str
    namespace: str | None
    where: Where
    value: object
    refs: dict[str, Where]


def _read(doc: Document) -> _Raw:
    top = Fields(doc.file, doc.node, "", "")
    top.allow("apiVersion", "kind", "metadata", "spec")
    api = top.string("apiVersion", required=True)
    if api != m.API_VERSION:
        raise top.error(top.node_of("apiVersion"), f"apiVersion must be {m.API_VERSION}, not {api}")
    kind = top.string("kind", required=True)
    if kind not in KINDS:
        raise top.error(top.node_of("kind"), f"unknown kind {kind!r} (kinds: {', '.join(KINDS)})")
    meta = top.mapping("metadata", what=kind, required=True)
    meta.allow(*(("name", "namespace") if kind in NAMESPACED else ("name",)))
    name = meta.string("name", required=True)
    what = f"{kind} {name}"
    meta.what = what
    _check_name(kind, name, meta)
    namespace = None
    if kind in NAMESPACED:
        namespace = meta.string("namespace", default=c.DEFAULT_NAMESPACE)
        if problem := c.label_problem(namespace):
            raise meta.error(meta.node_of("namespace"), f"metadata.namespace {namespace!r} is not a valid namespace "
                                                        f"({problem})")
    spec_node = top.node_of("spec")
    if spec_node is None:
        raise top.error(doc.node, f"{what}: spec is required")
    spec = Fields(doc.file, spec_node, "spec", what)
    reader = {"Target": _target, "CertificateAuthority": _authority, "Certificate": _certificate,
              "Credential": _credential, "GatewayMount": _mount, "Gateway": _gateway}[kind]
    refs: dict[str, Where] = {}
    value = reader(doc, name, namespace, spec, refs)
    return _Raw(kind, name, namespace, meta.where("name"), value, refs)


def _check_name(kind: str, name: str, meta: Fields) -> None:
    node = meta.node_of("name")
    if kind in ("CertificateAuthority", "Certificate"):
        meta.check("name", node, lambda: safe_store_name(name))
    elif problem := c.object_name_problem(name):
        raise meta.error(node, f"metadata.name {name!r} is not a valid Kubernetes name ({problem})")
    if kind == "GatewayMount" and c.label_problem(name):
        raise meta.error(node, f"metadata.name {name!r} is the volume's name: lower-case letters, digits and '-', "
                               "at most 63")


def _duration(spec: Fields, key: str, default: str):
    """A certificate lifetime (``duration``, ``maxDuration``): checked here, not first at apply."""
    text, node = spec.text_or_number(key, default=default)
    return spec.check(key, node, lambda: check_lifetime(parse_duration(text), f"lifetime {text!r}"))


def _key_type(spec: Fields):
    text = spec.string("keyType", default=DEFAULT_KEY_TYPE.value)
    return spec.check("keyType", spec.node_of("keyType"), lambda: parse_key_type(text))


def _org(spec: Fields) -> str | None:
    """``org``, checked as ``--org`` is (:func:`check_org`), at its line."""
    org = spec.string("org")
    if org:
        try:
            check_org(org)
        except UsageError as e:
            raise spec.error(spec.node_of("org"), str(e)) from None
    return org


def _no_nul(text: str) -> None:
    if "\0" in text:  # no file name holds one: the operating system refuses it
        raise UsageError("a path must not contain a NUL character")


def _relative(doc: Document, fields: Fields, key: str) -> Path | None:
    """The path in ``fields[key]``, relative to the policy file (``~`` expanded); None when absent."""
    text = fields.string(key)
    if text is None:
        return None
    fields.check(key, fields.node_of(key), lambda: _no_nul(text))
    p = Path(os.path.expanduser(text))
    return p if p.is_absolute() else (doc.path.parent / p).resolve()


def _target(doc: Document, name: str, namespace, spec: Fields, refs) -> m.Target:
    spec.allow("manifests", "cluster", "maintenanceWindows")
    if spec.has("manifests") == spec.has("cluster"):
        raise spec.error(spec.node, "spec needs exactly one of manifests (a folder) or cluster")
    where = where_of(doc.file, doc.node)
    windows = _windows(spec) or ()
    if spec.has("manifests"):
        return m.Target(name, where, manifests=_relative(doc, spec, "manifests"), maintenance_windows=windows)
    cluster = spec.mapping("cluster")
    cluster.allow("context", "kubeconfig")
    kubeconfig = _relative(doc, cluster, "kubeconfig")
    return m.Target(name, where, kubeconfig=str(kubeconfig) if kubeconfig else None,
                    context=cluster.string("context"), maintenance_windows=windows)


_CLOCK = "a time of day such as 02:00"


def _windows(spec: Fields) -> tuple[MaintenanceWindow, ...] | None:
    """``spec.maintenanceWindows`` (None when not given): a non-empty list of
    ``{days, start, duration | end, timeZone}``, every value checked at its own line."""
    if not spec.has("maintenanceWindows"):
        return None
    out = []
    for wf in spec.mappings("maintenanceWindows"):
        wf.allow("days", "start", "duration", "end", "timeZone")
        days = None
        if wf.has("days"):
            days = []
            for text, node in wf.strings("days", non_empty=True):
                wf.check("days", node, lambda: parse_weekdays([text]))
                days.append(text)
        start, start_node = wf.scalar_text("start", _CLOCK, required=True)
        wf.check("start", start_node, lambda: parse_time_of_day(start))
        if wf.has("duration") == wf.has("end"):
            raise wf.error(wf.node, f"{wf.path} needs exactly one of duration (e.g. 4h) and end (e.g. 06:00)")
        duration, _ = wf.text_or_number("duration")
        end, end_node = wf.scalar_text("end", _CLOCK)
        if end is not None:
            wf.check("end", end_node, lambda: parse_time_of_day(end))
        zone = wf.string("timeZone")
        if zone is not None:
            wf.check("timeZone", wf.node_of("timeZone"), lambda: parse_zone(zone))
        key = "duration" if duration is not None else "end"
        out.append(wf.check(key, wf.node_of(key), lambda: MaintenanceWindow.parse(
            weekdays=days, start=start, duration=duration, end=end, zone=zone)))
    return tuple(out)


def _authority(doc: Document, name: str, namespace, spec: Fields, refs) -> m.CertificateAuthority:
    spec.allow("org", "commonName", "keyType", "duration", "parent", "passphrase", "constraints", "crlValidity")
    key_type = _key_type(spec)
    duration = _duration(spec, "duration", "3650d")
    crl_validity = _crl_validity(spec)
    parent = spec.string("parent")
    if parent:
        refs["parent"] = spec.where("parent")
    passphrase = None
    pnode = spec.node_of("passphrase")
    if pnode is not None:
        if not isinstance(pnode, yaml.MappingNode):
            raise spec.error(pnode, "spec.passphrase must be {file: PATH} or {env: VARIABLE}; a passphrase is "
                                    "never written into a policy")
        p = spec.mapping("passphrase")
        p.allow("file", "env")
        if p.has("file") == p.has("env"):
            raise p.error(pnode, "spec.passphrase needs exactly one of file or env")
        if p.has("file"):
            passphrase = m.PassphraseRef(file=_relative(doc, p, "file"))
        else:
            env = p.string("env")
            if not _ENV_NAME.fullmatch(env):
                raise p.error(p.node_of("env"), f"spec.passphrase.env {env!r} is not an environment variable name")
            passphrase = m.PassphraseRef(env=env)
            secret_env.hide(env)  # before any child (a kubeconfig exec plugin) can inherit it
    constraints = None
    cf = spec.mapping("constraints")
    if cf is not None:
        cf.allow("allowedDomains", "allowBareDomains", "allowSubdomains", "allowWildcards", "allowIPs", "maxDuration")
        domains = []
        for text, node in cf.strings("allowedDomains"):
            h = cf.check("allowedDomains", node, lambda: parse_host(text))
            if h.is_ip or h.value.startswith("*"):
                raise cf.error(node, f"spec.constraints.allowedDomains: {text!r} is not a domain name "
                                     "(wildcards and IPs are allowed with allowWildcards and allowIPs)")
            domains.append(h.value)
        max_duration = None
        if cf.has("maxDuration"):
            max_duration = _duration(cf, "maxDuration", "")
        flags = dict(allow_bare_domains=cf.boolean("allowBareDomains", True),
                     allow_subdomains=cf.boolean("allowSubdomains", True),
                     allow_wildcards=cf.boolean("allowWildcards", False),
                     allow_ips=cf.boolean("allowIPs", False))
        constraints = cf.check("constraints", None, lambda: NameConstraints(
            allowed_domains=tuple(dict.fromkeys(domains)), max_duration=max_duration, **flags))
    return m.CertificateAuthority(name, where_of(doc.file, doc.node), org=_org(spec),
                                  common_name=spec.string("commonName"), key_type=key_type, duration=duration,
                                  parent=parent, passphrase=passphrase, constraints=constraints,
                                  crl_validity=crl_validity)


def _crl_validity(spec: Fields):
    """``crlValidity``: how long each CRL the CA signs is valid (1h to 366d), checked here."""
    if not spec.has("crlValidity"):
        return None
    from kimpki.pki.revocation import check_crl_validity

    text, node = spec.text_or_number("crlValidity")
    return spec.check("crlValidity", node, lambda: check_crl_validity(parse_duration(text)))


def _certificate(doc: Document, name: str, namespace, spec: Fields, refs) -> m.Certificate:
    spec.allow("hosts", "usage", "ca", "org", "keyType", "duration", "renewBefore", "dual")
    hosts: dict[HostName, None] = {}  # ordered, and a linear duplicate check
    for text, node in spec.strings("hosts", required=True, non_empty=True):
        hosts[spec.check("hosts", node, lambda: parse_host(text))] = None
    spec.check("hosts", spec.node_of("hosts"), lambda: check_san_count(len(hosts)))
    usage = spec.string("usage", default="server")
    if usage not in ("server", "client"):
        raise spec.error(spec.node_of("usage"), f"spec.usage must be server or client, not {usage!r}")
    ca = spec.string("ca", required=True)
    refs["ca"] = spec.where("ca")
    rb_text, rb_node = spec.text_or_number("renewBefore")
    rb = RenewBefore.parse(None)
    if rb_text is not None:
        try:
            rb = RenewBefore.parse(rb_text, "spec.renewBefore")
        except DurationOutOfRange as e:
            raise spec.error(rb_node, str(e)) from None
        except UsageError:
            raise spec.error(rb_node, f"spec.renewBefore must be a duration (30d, 12h) or a percentage of the "
                                      f"lifetime (25%), not {rb_text!r}") from None
    refs["hosts"] = spec.where("hosts")
    return m.Certificate(name, where_of(doc.file, doc.node), names=tuple(hosts), ca=ca, usage=usage,
                         org=_org(spec), key_type=_key_type(spec), duration=_duration(spec, "duration", "90d"),
                         renew_before=rb, renew_before_text=rb_text, dual=spec.boolean("dual", False))


def _target_ref(spec: Fields, refs) -> str | None:
    target = spec.string("target")
    if target:
        refs["target"] = spec.where("target")
    return target


def _credential(doc: Document, name: str, namespace: str, spec: Fields, refs) -> m.Credential:
    spec.allow("certificate", "format", "mode", "caSecret", "clientCA", "delivery", "caFileName", "target",
               "maintenanceWindows", "ocspStaple", "dual", "caOnly", "configMap")
    if spec.boolean("caOnly", False):
        return _ca_only_credential(doc, name, namespace, spec, refs)
    if spec.has("configMap"):
        raise spec.error(spec.node_of("configMap"), "spec.configMap (the CA bundle in a ConfigMap) goes with "
                                                    "caOnly: true")
    certificate = spec.string("certificate", required=True)
    refs["certificate"] = spec.where("certificate")
    delivery = spec.string("delivery", default="sds")
    if delivery not in ("sds", "file-mounted"):
        raise spec.error(spec.node_of("delivery"), f"spec.delivery must be sds or file-mounted, not {delivery!r}")
    ocsp_staple = spec.boolean("ocspStaple", False)
    fmt = spec.string("format", default="tls" if delivery == "file-mounted" or ocsp_staple else "generic")
    if fmt not in ("generic", "tls"):
        raise spec.error(spec.node_of("format"), f"spec.format must be generic or tls, not {fmt!r}")
    mode = spec.string("mode", default="SIMPLE").upper()
    if mode not in ("SIMPLE", "MUTUAL"):
        raise spec.error(spec.node_of("mode"), f"spec.mode must be SIMPLE or MUTUAL, not {spec.string('mode')!r}")
    client_ca = spec.string("clientCA")
    if client_ca:
        refs["clientCA"] = spec.where("clientCA")
        if mode != "MUTUAL":
            raise spec.error(spec.node_of("clientCA"), "spec.clientCA is the CA client certificates are checked "
                                                       "against: it needs mode: MUTUAL")
    ca_secret = spec.boolean("caSecret", False)
    ca_file_name = spec.string("caFileName")
    if delivery == "file-mounted" and fmt != "tls":
        raise spec.error(spec.node_of("format"), "a file-mounted credential is always in the TLS form "
                                                 "(tls.crt, tls.key): drop format: generic")
    if ca_secret and (mode != "MUTUAL" or delivery != "sds"):
        raise spec.error(spec.node_of("caSecret"), "spec.caSecret (the CA bundle in a separate Secret NAME-cacert) "
                                                   "is for MUTUAL credentials delivered by SDS")
    if ocsp_staple and delivery != "sds":
        raise spec.error(spec.node_of("ocspStaple"), "spec.ocspStaple is for credentials delivered by SDS: a "
                                                     "file-mounted gateway reads only the certificate and key files")
    if ocsp_staple and fmt != "tls":
        raise spec.error(spec.node_of("ocspStaple"), f"spec.ocspStaple needs format: tls (Istio reads "
                                                     f"{c.OCSP_STAPLE} only beside {c.TLS_CERT}/{c.TLS_KEY})")
    if ca_file_name is not None:
        if mode != "MUTUAL" or delivery != "file-mounted":
            raise spec.error(spec.node_of("caFileName"), "spec.caFileName is for file-mounted MUTUAL credentials")
        if "/" in ca_file_name or ca_file_name in (".", ".."):
            raise spec.error(spec.node_of("caFileName"), f"spec.caFileName must be a plain file name, "
                                                         f"not {ca_file_name!r}")
    dual = spec.boolean("dual", False)
    if dual and delivery != "sds":
        raise spec.error(spec.node_of("dual"), "spec.dual (an RSA+ECDSA pair, credentialNames) is for credentials "
                                               "delivered by SDS")
    if dual:
        refs["dual"] = spec.where("dual")
    cred = m.Credential(name, namespace, where_of(doc.file, doc.node), certificate=certificate,
                        target=_target_ref(spec, refs), format=fmt, mode=mode, ca_secret=ca_secret,
                        client_ca=client_ca, delivery=delivery, ca_file_name=ca_file_name,
                        maintenance_windows=_windows(spec), ocsp_staple=ocsp_staple, dual=dual)
    spec.check("", None, lambda: credential_spec(cred, "x"))  # any rule CredentialSpec adds later
    return cred


def _ca_only_credential(doc: Document, name: str, namespace: str, spec: Fields, refs) -> m.Credential:
    """``caOnly: true``: a Secret holding only ``clientCA``'s bundle, for a Gateway server's
    ``caCredential`` (caCertCredentialName). istiod reads a Secret as CA-only only when its name
    ends in -cacert (pilot/pkg/xds/sds.go)."""
    for key in ("certificate", "mode", "caSecret", "delivery", "caFileName", "dual", "maintenanceWindows"):
        if spec.has(key):
            raise spec.error(spec.node_of(key), f"spec.{key} does not go with caOnly: true (a CA bundle, "
                                                f"no certificate)")
    config_map = spec.boolean("configMap", False)
    if not config_map and not name.endswith(c.CACERT_SECRET_SUFFIX):
        raise spec.error(doc.node, f"a caOnly credential's name must end in {c.CACERT_SECRET_SUFFIX} (Istio reads "
                                   f"any other Secret as a certificate and key): e.g. {name}{c.CACERT_SECRET_SUFFIX}, "
                                   f"or write a ConfigMap with configMap: true")
    client_ca = spec.string("clientCA", required=True)
    refs["clientCA"] = spec.where("clientCA")
    fmt = spec.string("format", default="generic")
    if fmt not in ("generic", "tls"):
        raise spec.error(spec.node_of("format"), f"spec.format must be generic or tls, not {fmt!r}")
    return m.Credential(name, namespace, where_of(doc.file, doc.node), certificate="", target=_target_ref(spec, refs),
                        format=fmt, mode="MUTUAL", client_ca=client_ca, ca_only=True, config_map=config_map,
                        maintenance_windows=())


def credential_spec(cred: m.Credential, ca_name: str) -> CredentialSpec:
    """The :class:`CredentialSpec` for a policy credential; ``ca_name`` is the CA it publishes."""
    ca_file = None
    if cred.file_mounted and cred.mutual:
        ca_file = cred.ca_file_name or default_ca_file_name(ca_name)
    return CredentialSpec(name=cred.name, namespace=cred.namespace, format=cred.format, mutual=cred.mutual,
                          ca_secret=cred.ca_secret, file_mounted=cred.file_mounted, ca_file_name=ca_file,
                          ocsp_staple=cred.ocsp_staple, pair=cred.pair)


def _mount(doc: Document, name: str, namespace: str, spec: Fields, refs) -> m.GatewayMount:
    spec.allow("secret", "mountPath", "deployment", "container", "target")
    secret = spec.string("secret", required=True)
    if c.object_name_problem(secret):
        raise spec.error(spec.node_of("secret"), f"spec.secret {secret!r} is not a valid Secret name")
    mount_path = spec.string("mountPath", required=True)
    if not mount_path.startswith("/"):
        raise spec.error(spec.node_of("mountPath"), f"spec.mountPath must be absolute, not {mount_path!r}")
    return m.GatewayMount(name, namespace, where_of(doc.file, doc.node), secret=secret,
                          mount_path=posixpath.normpath(mount_path), target=_target_ref(spec, refs),
                          deployment=spec.string("deployment", default=c.GATEWAY_DEPLOYMENT),
                          container=spec.string("container", default=c.GATEWAY_CONTAINER))


def _gateway(doc: Document, name: str, namespace: str, spec: Fields, refs) -> m.Gateway:
    from kimpki.istio.gateway import API_VERSIONS, parse_service

    spec.allow("servers", "virtualService", "selector", "istioApiVersion", "target")
    servers = []
    for sf in spec.mappings("servers", required=True):
        sf.allow("credential", "hosts", "portName", "caCredential", *SERVER_TLS_FIELDS)
        hosts = tuple(sf.check("hosts", node, lambda: parse_hosts([text])[0].value)
                      for text, node in sf.strings("hosts", non_empty=sf.has("hosts")))
        servers.append(m.GatewayServer(sf.string("credential", required=True), sf.where("credential"),
                                       hosts=hosts, port_name=sf.string("portName"),
                                       ca_credential=sf.string("caCredential"), **_server_tls(sf)))
    version = spec.string("istioApiVersion", default="v1")
    if version not in API_VERSIONS:
        raise spec.error(spec.node_of("istioApiVersion"),
                         f"spec.istioApiVersion must be one of {', '.join(API_VERSIONS)}, not {version!r}")
    selector = spec.string_map("selector")
    vs = None
    vf = spec.mapping("virtualService")
    if vf is not None:
        vf.allow("name", "service", "serviceNamespace")
        text = vf.string("service", required=True)
        try:
            service, port = parse_service(text)
        except UsageError:
            raise vf.error(vf.node_of("service"), f"spec.virtualService.service must be SERVICE:PORT "
                                                  f"(e.g. kim-gateway-service:8080), not {text!r}") from None
        vs = m.VirtualServiceRoute(vf.string("name", default=f"{name}-service"), service, port,
                                   vf.string("serviceNamespace", default="default"))
    gw = m.Gateway(name, namespace, where_of(doc.file, doc.node), servers=tuple(servers),
                   target=_target_ref(spec, refs), istio_api_version=version, virtual_service=vs)
    if selector is not None:
        gw = replace(gw, selector=tuple(selector.items()))
    return gw


SERVER_TLS_FIELDS = ("mode", "subjectAltNames", "minProtocolVersion", "maxProtocolVersion", "cipherSuites",
                     "ecdhCurves")


def _server_tls(sf: Fields) -> dict:
    """A Gateway server's own tls fields (Istio's spelling and values), as GatewayServer keywords."""
    from kimpki.istio.gateway import MODES
    from kimpki.istio.tlsparams import PROTOCOL_VERSIONS

    def choice(key: str, allowed: tuple[str, ...]) -> str | None:
        value = sf.string(key)
        if value is not None and value.upper() not in allowed:
            raise sf.error(sf.node_of(key), f"{sf._name(key)} must be one of {', '.join(allowed)}, not {value!r}")
        return value.upper() if value is not None else None

    def strings(key: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(text for text, _ in sf.strings(key, non_empty=sf.has(key))))

    return dict(mode=choice("mode", MODES), subject_alt_names=strings("subjectAltNames"),
                min_protocol_version=choice("minProtocolVersion", PROTOCOL_VERSIONS),
                max_protocol_version=choice("maxProtocolVersion", PROTOCOL_VERSIONS),
                cipher_suites=strings("cipherSuites"), ecdh_curves=strings("ecdhCurves"))


# ---------------------------------------------------------------------------------------------
# Pass 2: documents together
# ---------------------------------------------------------------------------------------------

def _err(where: Where, what: str, message: str) -> PolicyError:
    return PolicyError(where, f"{what}: {message}")


def _link(raws: list[_Raw], files: tuple[str, ...]) -> m.Policy:
    seen: dict[tuple, _Raw] = {}
    for r in raws:
        key = (r.kind, r.name)  # names are unique per kind (Credentials across namespaces too)
        if key in seen:
            raise _err(r.where, f"{r.kind} {r.name}", f"duplicate name (also defined at {seen[key].where})")
        seen[key] = r
    by_kind = {k: [r for r in raws if r.kind == k] for k in KINDS}

    targets = {r.name: r.value for r in by_kind["Target"]}
    manifests_of: dict[Path, m.Target] = {}
    for t in targets.values():
        if t.manifests is not None:
            if t.manifests in manifests_of:
                raise _err(t.where, f"Target {t.name}", f"same folder as Target {manifests_of[t.manifests].name}")
            manifests_of[t.manifests] = t

    def target_of(r: _Raw) -> m.Target:
        what = f"{r.kind} {r.name}"
        name = r.value.target
        if name is None:
            if len(targets) == 1:
                return next(iter(targets.values()))
            if not targets:
                raise _err(r.where, what, "there is no Target: add a Target document (manifests: DIR or cluster)")
            raise _err(r.where, what, f"spec.target is required when there are several Targets "
                                      f"({', '.join(sorted(targets))})")
        if name not in targets:
            raise _err(r.refs["target"], what, f"spec.target {name!r} is not a Target in the policy "
                                               f"(Targets: {', '.join(sorted(targets)) or 'none'})")
        return targets[name]

    # Authorities: parents exist, no cycles, parents first.
    cas = {r.name: r for r in by_kind["CertificateAuthority"]}
    ordered: list[m.CertificateAuthority] = []
    state: dict[str, str] = {}

    def visit(r: _Raw, chain: list[str]) -> None:
        if state.get(r.name) == "done":
            return
        if state.get(r.name) == "visiting":
            raise _err(r.refs.get("parent", r.where), f"CertificateAuthority {r.name}",
                       f"parent cycle: {' -> '.join(chain + [r.name])}")
        state[r.name] = "visiting"
        parent = r.value.parent
        if parent is not None:
            if parent not in cas:
                raise _err(r.refs["parent"], f"CertificateAuthority {r.name}",
                           f"spec.parent {parent!r} is not a CertificateAuthority in the policy{_known(cas)}")
            visit(cas[parent], chain + [r.name])
        state[r.name] = "done"
        ordered.append(r.value)

    for r in by_kind["CertificateAuthority"]:
        visit(r, [])
    authorities = {a.name: a for a in ordered}

    certificates: list[m.Certificate] = []
    for r in by_kind["Certificate"]:
        cert: m.Certificate = r.value
        what = f"Certificate {cert.name}"
        if cert.ca not in authorities:
            raise _err(r.refs["ca"], what,
                       f"spec.ca {cert.ca!r} is not a CertificateAuthority in the policy{_known(cas)}")
        # Constraints of the CA and every CA above it, as issuance will apply them.
        a: m.CertificateAuthority | None = authorities[cert.ca]
        while a is not None:
            if a.constraints is not None:
                problems = violations(a.constraints, list(cert.names), cert.duration)
                if problems:
                    raise _err(r.refs["hosts"], what, f"CA {a.name} does not allow it: {problems[0]}")
            a = authorities.get(a.parent) if a.parent else None
        certificates.append(cert)
        if cert.dual:
            # The pair's second half: the same hosts, the other algorithm, named NAME-rsa / NAME-ecdsa.
            kt = pairs.partner_key_type(cert.key_type)
            certificates.append(replace(cert, name=pairs.partner_name(cert.name, pairs.algorithm_of(kt)),
                                        key_type=kt, dual=False))
    certs_by_name: dict[str, m.Certificate] = {}
    for x in certificates:
        if x.name in certs_by_name:
            raise _err(x.where, f"Certificate {x.name}", "duplicate name (the second half of a dual Certificate "
                                                          "is named NAME-rsa or NAME-ecdsa)")
        certs_by_name[x.name] = x

    credentials: list[m.Credential] = []
    secret_names: dict[tuple, str] = {}
    for r in by_kind["Credential"]:
        cred: m.Credential = r.value
        what = f"Credential {cred.name}"
        if cred.ca_only:
            if cred.client_ca not in authorities:
                raise _err(r.refs["clientCA"], what, f"spec.clientCA {cred.client_ca!r} is not a CertificateAuthority "
                                                     f"in the policy{_known(cas)}")
            cred = replace(cred, target=target_of(r))
            key = (cred.target.name, cred.namespace, cred.name, cred.kind)
            if key in secret_names:
                raise _err(r.where, what, f"{cred.kind} {cred.namespace}/{cred.name} is also written by "
                                          f"{secret_names[key]}")
            secret_names[key] = what
            credentials.append(cred)
            continue
        cert = certs_by_name.get(cred.certificate)
        if cert is None:
            raise _err(r.refs["certificate"], what, f"spec.certificate {cred.certificate!r} is not a Certificate "
                                                    f"in the policy{_known(certs_by_name)}")
        if cert.usage != "server":
            raise _err(r.refs["certificate"], what, f"certificate {cert.name} is a client certificate (usage: client), "
                                                    "not a server credential")
        if cred.client_ca is not None and cred.client_ca not in authorities:
            raise _err(r.refs["clientCA"], what, f"spec.clientCA {cred.client_ca!r} is not a CertificateAuthority "
                                                 f"in the policy{_known(cas)}")
        target = target_of(r)
        windows = target.maintenance_windows if cred.maintenance_windows is None else cred.maintenance_windows
        cred = replace(cred, target=target, maintenance_windows=windows)
        halves = [cred]
        if cred.dual:
            if not cert.dual:
                raise _err(r.refs["dual"], what, f"spec.dual needs certificate {cert.name} to be dual too "
                                                 f"(dual: true on the Certificate)")
            partner_cert = pairs.partner_name(cert.name, pairs.algorithm_of(pairs.partner_key_type(cert.key_type)))
            partner = pairs.partner_name(cred.name, pairs.algorithm_of(certs_by_name[partner_cert].key_type))
            # Istio reads a MUTUAL server's CA from the first credentialName: the second holds no CA.
            halves = [replace(cred, pair=partner),
                      replace(cred, name=partner, certificate=partner_cert, mode="SIMPLE", ca_secret=False,
                              client_ca=None, dual=False, pair=cred.name)]
        for half in halves:
            spec = credential_spec(half, half.client_ca or cert.ca)
            for secret in [spec.secret_name] + ([c.cacert_secret_name(spec.secret_name)] if spec.ca_secret else []):
                key = (half.target.name, half.namespace, secret)
                if key in secret_names and secret != c.FILE_MOUNTED_CA_SECRET:
                    raise _err(r.where, what, f"Secret {half.namespace}/{secret} is also written by "
                                              f"{secret_names[key]}")
                secret_names[key] = what
            credentials.append(half)
    creds_by_name = {x.name: x for x in credentials}

    mounts: list[m.GatewayMount] = []
    mount_keys: dict[tuple, m.GatewayMount] = {}
    for r in by_kind["GatewayMount"]:
        mount = replace(r.value, target=target_of(r))
        key = (mount.target.name, mount.namespace, mount.deployment, mount.mount_path)
        if key in mount_keys:
            raise _err(r.where, f"GatewayMount {mount.name}",
                       f"{mount.mount_path} is also mounted by GatewayMount {mount_keys[key].name}")
        mount_keys[key] = mount
        mounts.append(mount)

    gateways = [_link_gateway(r, replace(r.value, target=target_of(r)), creds_by_name, certs_by_name, mounts)
                for r in by_kind["Gateway"]]
    return m.Policy(files, tuple(targets.values()), tuple(ordered), tuple(certificates), tuple(credentials),
                    tuple(mounts), tuple(gateways))


def _known(names) -> str:
    return f" (known: {', '.join(sorted(names))})" if names else " (there are none)"


def _covered(host: str, cert_hosts: tuple[str, ...]) -> bool:
    if host in cert_hosts:
        return True
    first, _, rest = host.partition(".")
    return f"*.{rest}" in cert_hosts and first != "*"


def _link_gateway(r: _Raw, gw: m.Gateway, creds: dict[str, m.Credential], certs: dict[str, m.Certificate],
                  mounts: list[m.GatewayMount]) -> m.Gateway:
    from kimpki.istio import gateway as g
    from kimpki.istio.tlsparams import MUTUAL_MODES

    what = f"Gateway {gw.name}"
    specs = []
    for s in gw.servers:
        cred = creds.get(s.credential)
        if cred is None:
            raise _err(s.where, what, f"credential {s.credential!r} is not a Credential in the policy{_known(creds)}")
        if cred.ca_only:
            raise _err(s.where, what, f"credential {cred.name} holds only a CA bundle: name it in caCredential, "
                                      f"and a credential with a certificate in credential")
        if cred.target != gw.target:
            raise _err(s.where, what, f"credential {cred.name} goes to Target {cred.target.name}, the Gateway to "
                                      f"Target {gw.target.name}: a gateway reads credentials where it runs")
        cert = certs[cred.certificate]
        for h in s.hosts:
            if not _covered(h, cert.hosts):
                raise _err(s.where, what, f"host {h} is not covered by certificate {cert.name} "
                                          f"({', '.join(cert.hosts)})")
        hosts = s.hosts or cert.hosts
        mode = s.mode or cred.mode
        if mode in MUTUAL_MODES and not cred.mutual and not s.ca_credential:
            article = "an" if mode[0] in "AEIOU" else "a"
            raise _err(s.where, what, f"{article} {mode} server checks client certificates against a CA: "
                                      f"credential {cred.name} has mode {cred.mode} (give it mode: MUTUAL, which "
                                      f"adds the CA)")
        try:
            if cred.file_mounted:
                mount_path = _mount_path(cred, mounts, s.where, what)
                ca_file = credential_spec(cred, cred.client_ca or cert.ca).ca_file_name if mode != "SIMPLE" else None
                spec = g.ServerSpec.file_mounted(hosts, mode, mount_path, ca_file_name=ca_file)
            else:
                # A dual credential is served as credentialNames: itself first (it holds the CA), then its pair.
                names = f"{cred.name},{cred.pair}" if cred.dual and cred.pair else cred.name
                spec = g.ServerSpec.sds(hosts, names, mode, s.ca_credential)
            if s.port_name:
                spec = replace(spec, port_name=s.port_name)
            spec = replace(spec, subject_alt_names=s.subject_alt_names, min_protocol_version=s.min_protocol_version,
                           max_protocol_version=s.max_protocol_version, cipher_suites=s.cipher_suites,
                           ecdh_curves=s.ecdh_curves)
        except PolicyError:
            raise
        except KimpkiError as e:
            raise _err(s.where, what, str(e)) from None
        specs.append(spec)
    objs = [g.render_gateway(gw.name, specs, namespace=gw.namespace, api_version=gw.istio_api_version,
                             selector=dict(gw.selector))]
    if gw.virtual_service is not None:
        vs = gw.virtual_service
        objs.append(g.render_virtual_service(vs.name, [h for sp in specs for h in sp.hosts], gw.name,
                                             namespace=gw.namespace, service=vs.service, service_port=vs.port,
                                             service_namespace=vs.service_namespace,
                                             api_version=gw.istio_api_version))
    from kimpki.istio import schema

    if schema.available():
        for o in objs:
            errs = schema.validate(o)
            if errs:
                raise _err(gw.where, what, f"the rendered {o['kind']} does not match Istio's {o['apiVersion']} "
                                           f"schema: {errs[0]}")
    # Istio's own rules after the API server's (schema and CEL), so the server's wording comes first.
    problems = g.validate_gateway(objs[0])
    if problems:
        raise _err(gw.where, what, f"Istio would not accept it: {problems[0]}")
    return replace(gw, objects=tuple(objs))


def _mount_path(cred: m.Credential, mounts: list[m.GatewayMount], where: Where, what: str) -> str:
    if cred.name == c.FILE_MOUNTED_CERTS_SECRET:
        return c.FILE_MOUNTED_CERTS_PATH  # the legacy mount every ingress gateway has
    found = [x for x in mounts if x.secret == cred.name and x.target == cred.target and x.namespace == cred.namespace]
    if not found:
        raise _err(where, what, f"credential {cred.name} is file-mounted, but no GatewayMount mounts Secret "
                                f"{cred.name} (add one, e.g. mountPath: /etc/istio/{cred.name.removeprefix('istio-')})")
    return found[0].mount_path


__all__ = ["load_policy", "credential_spec"]
