"""Pure: server plans → Envoy's bootstrap, its listeners (LDS) and its secrets (SDS), as dicts.

Shape of what Envoy 1.40 is given (written by :mod:`kimpki.localgw.runner`):

* ``bootstrap.json``: ``node`` (Envoy requires ``id`` and ``cluster`` for any xDS), an admin
  interface on a 0600 Unix socket (TCP on 127.0.0.1, open to every local user, only when asked
  for), ``dynamic_resources.lds_config`` pointing at ``lds/lds.json`` with ``watched_directory:
  lds/``, and ``ads_config``: an Aggregated Discovery Service stream to kimpki's SDS server
  (:mod:`kimpki.localgw.sds_server`) over the static cluster ``kimpki-sds``, HTTP/2 on a Unix
  socket. Listeners come from a file so that new servers and ports are picked up without
  restarting Envoy (a moved-in file makes Envoy re-read it).
* ``lds/lds.json``: a ``DiscoveryResponse``-shaped document, one Listener per Gateway port
  number (all Gateways merged, like Istio), a TLS inspector, one filter chain per server matched
  on SNI ``server_names`` (host ``*`` → no match = the default chain), each with an HTTP
  connection manager (codec AUTO, ALPN h2 + http/1.1) answering ``/health`` itself. Its TLS
  contexts name their secrets, ``sds_config: {ads: {}}``; no key is in this file.
* A file-mounted server's ``caCrl``: a file in the run folder named by its content's hash
  (:func:`ca_crl_source`), so a changed CRL changes the listener and Envoy rebuilds it in place.
* Secrets (:func:`secret_resources`): one SDS ``Secret`` per certificate and per CA bundle,
  served over the ADS stream, however many there are: a file-based secret would cost Envoy one
  inotify instance each, and Linux allows 128 per user.

Routes: ``/health`` → 200 ``{"status":"UP"}`` (application/json); every other path → 404 with a
JSON body saying that the local gateway routes nothing else (there are no upstreams: it checks
certificates, it is not a proxy). Every response carries ``x-kimpki-gateway:
<gateway-name>/<server-port-name>`` so a client can tell which filter chain answered.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, replace
from typing import Iterable

from kimpki.istio import tlsparams
from kimpki.localgw.manifests import SDS_PREFIX, ServerPlan

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
TLS_CONTEXT_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TLS_INSPECTOR_TYPE = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
HTTP_OPTIONS_NAME = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HTTP_OPTIONS_TYPE = "type.googleapis.com/" + HTTP_OPTIONS_NAME
CONNECTIONS_MONITOR_TYPE = (
    "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig")

HEALTH_PATH = "/health"
HEALTH_BODY = '{"status":"UP"}'
NOT_FOUND_BODY = '{"status":"NOT_FOUND","detail":"the local kimpki gateway answers only /health"}'
GATEWAY_HEADER = "x-kimpki-gateway"
ALPN = ("h2", "http/1.1")

# Istio's spelling → Envoy's.
TLS_VERSIONS = {"TLS_AUTO": "TLS_AUTO", "TLSV1_0": "TLSv1_0", "TLSV1_1": "TLSv1_1",
                "TLSV1_2": "TLSv1_2", "TLSV1_3": "TLSv1_3"}


@dataclass(frozen=True)
class WatchedFile:
    """A file-based xDS source (the listeners): Envoy watches ``directory`` and re-reads ``path``."""

    path: str
    directory: str


SDS_CLUSTER = "kimpki-sds"


def listener_name(port: int) -> str:
    """The Envoy listener for a Gateway port number (the local port may differ)."""
    return f"gateway_{port}"


# ---------------------------------------------------------------------------------------------
# Ports
# ---------------------------------------------------------------------------------------------

def map_ports(gateway_ports: Iterable[int], port_map: dict[int, int]) -> tuple[dict[int, int], list[str]]:
    """Gateway port → local port. Unmapped ports ≥ 1024 keep their number; lower ones are skipped.

    Port 0 asks the kernel for a free port (the runner reads the real one back from Envoy).
    """
    out: dict[int, int] = {}
    warnings: list[str] = []
    used: dict[int, int] = {}
    for gp in sorted(set(gateway_ports)):
        lp = port_map.get(gp)
        if lp is None:
            if gp < 1024:
                warnings.append(f"Gateway port {gp} not served: map it to a local port (e.g. --map {gp}:{gp + 8000})")
                continue
            lp = gp
        if lp != 0 and lp in used:
            warnings.append(f"Gateway port {gp} not served: local port {lp} already serves Gateway port {used[lp]}")
            continue
        used[lp] = gp
        out[gp] = lp
    return out, warnings


# ---------------------------------------------------------------------------------------------
# SDS
# ---------------------------------------------------------------------------------------------

def secret_resources(plans: Iterable[ServerPlan]) -> dict[str, dict]:
    """Every SDS ``Secret`` resource the plans need, by resource name (shared names once)."""
    out: dict[str, dict] = {}
    for p in plans:
        for cert in p.certificates:
            out[cert.resource_name] = {
                "@type": SECRET_TYPE,
                "name": cert.resource_name,
                "tls_certificate": {
                    "certificate_chain": {"inline_string": cert.cert_pem},
                    "private_key": {"inline_string": cert.key_pem},
                },
            }
            if cert.ocsp_staple:
                # As istio-agent does; Envoy's default policy (lenient) drops a staple past nextUpdate.
                out[cert.resource_name]["tls_certificate"]["ocsp_staple"] = {
                    "inline_bytes": base64.b64encode(cert.ocsp_staple).decode("ascii")}
        if p.ca is not None:
            vc: dict = {"trusted_ca": {"inline_string": p.ca.ca_pem}}
            if p.ca.crl_pem:
                vc["crl"] = {"inline_string": p.ca.crl_pem}
            out[p.ca.resource_name] = {"@type": SECRET_TYPE, "name": p.ca.resource_name, "validation_context": vc}
    return out


def discovery_response(resources: list[dict]) -> dict:
    """The file shape Envoy's path-based xDS reads; ``version_info`` is a content hash."""
    digest = hashlib.sha256(json.dumps(resources, sort_keys=True).encode()).hexdigest()[:16]
    return {"version_info": digest, "resources": resources}


def sds_config(name: str) -> dict:
    """A TLS context's reference to secret ``name``, fetched over the ADS stream."""
    return {"name": name, "sds_config": {"ads": {}, "resource_api_version": "V3"}}


# ---------------------------------------------------------------------------------------------
# LDS
# ---------------------------------------------------------------------------------------------

def listener_inputs(plans: Iterable[ServerPlan], local_ports: dict[int, int], address: str) -> tuple:
    """What :func:`listeners` makes its output from: the plans without their secrets' contents,
    which go over SDS and appear in the listeners by resource name only. Equal inputs, equal
    listeners: a reload that only changed Secrets skips rebuilding (and comparing) thousands of
    filter chains."""
    def without_pem(p: ServerPlan) -> ServerPlan:
        # Whether a staple or a CRL is there stays an input (only their content goes over SDS).
        certs = tuple(replace(c, cert_pem="", key_pem="", ocsp_staple=c.ocsp_staple and b"")
                      for c in p.certificates)
        ca = replace(p.ca, ca_pem="", crl_pem=p.ca.crl_pem and "") if p.ca is not None else None
        return replace(p, certificates=certs, ca=ca)

    return tuple(without_pem(p) for p in plans), tuple(sorted(local_ports.items())), address


def listeners(plans: Iterable[ServerPlan], local_ports: dict[int, int], address: str) -> list[dict]:
    """One Listener per served Gateway port.

    TLS ports get a TLS inspector and one filter chain per server, matched on SNI. Plain-HTTP
    ports get one filter chain whose virtual hosts are the servers (matched on Host).
    """
    by_port: dict[int, list[ServerPlan]] = {}
    for p in plans:
        if p.port in local_ports:
            by_port.setdefault(p.port, []).append(p)
    out = []
    for port in sorted(by_port):
        group = by_port[port]
        listener: dict = {
            "@type": LISTENER_TYPE,
            "name": listener_name(port),
            "address": {"socket_address": {"address": address, "port_value": local_ports[port]}},
        }
        if group[0].is_tls:
            listener["listener_filters"] = [{
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {"@type": TLS_INSPECTOR_TYPE},
            }]
            listener["filter_chains"] = [_tls_filter_chain(p, local_ports) for p in group]
        else:
            listener["filter_chains"] = [{
                "name": f"{listener_name(port)}/http",
                "filters": [_http_connection_manager(group, listener_name(port), local_ports, by_host=True)],
            }]
        out.append(listener)
    return out


def _tls_filter_chain(p: ServerPlan, local_ports: dict[int, int]) -> dict:
    chain: dict = {
        "name": f"{p.gateway}/servers/{p.index}",
        "filters": [_http_connection_manager([p], f"{listener_name(p.port)}_{p.index}", local_ports, by_host=False)],
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": _tls_context(p)},
    }
    if p.server_names:
        chain["filter_chain_match"] = {"server_names": list(p.server_names)}
    return chain


def _tls_context(p: ServerPlan) -> dict:
    """The DownstreamTlsContext Istio builds for a terminating Gateway server.

    Istio: pilot/pkg/networking/core/gateway.go ``buildGatewayListenerTLSContext`` (cipher suites
    through ``FilterCipherSuites``) → pilot/pkg/networking/core/listener.go
    ``BuildListenerTLSContext`` (require_client_certificate true only for MUTUAL; the client is
    validated for MUTUAL and OPTIONAL_MUTUAL) → ``applyServerTLSSettings`` (tls_params), and for
    the validation context pilot/pkg/security/model/authentication.go
    ``ApplyCredentialSDSToServerCommonTLSContext`` (credentialName) or ``ApplyToCommonTLSContext``
    (file-mounted)."""
    common: dict = {
        "alpn_protocols": list(ALPN),
        "tls_certificate_sds_secret_configs": [sds_config(c.resource_name) for c in p.certificates],
    }
    params = tls_params(p.tls)
    if params:
        common["tls_params"] = params
    validation = _validation_context(p)
    if validation:
        common.update(validation)
    return {"@type": TLS_CONTEXT_TYPE, "common_tls_context": common,
            "require_client_certificate": p.mode == "MUTUAL"}


def tls_params(tls) -> dict:
    """Istio's ``applyServerTLSSettings``: a version only when it is not TLS_AUTO (Envoy's defaults,
    TLS 1.2 to 1.3, stay), curves as given, cipher suites as ``FilterCipherSuites`` leaves them."""
    params: dict = {}
    if tlsparams.version_rank(tls.min_version) is not None:
        params["tls_minimum_protocol_version"] = TLS_VERSIONS[tls.min_version]
    if tls.ecdh_curves:
        params["ecdh_curves"] = list(tls.ecdh_curves)
    suites = tlsparams.filter_cipher_suites(tls.cipher_suites)
    if suites:
        params["cipher_suites"] = suites
    if tlsparams.version_rank(tls.max_version) is not None:
        params["tls_maximum_protocol_version"] = TLS_VERSIONS[tls.max_version]
    return params


def san_matchers(names) -> list[dict]:
    """Istio writes ``match_subject_alt_names: [{exact: NAME}]`` (``util.StringToExactMatch``);
    Envoy reads that deprecated field as one typed matcher per SAN type DNS, URI, EMAIL and
    IP_ADDRESS (``CertificateValidationContextConfigImpl::getSubjectAltNameMatchers``). This is
    that typed form, so a name matches a client certificate SAN of any of those types exactly."""
    return [{"san_type": t, "matcher": {"exact": n}} for n in names for t in ("DNS", "URI", "EMAIL", "IP_ADDRESS")]


def _validation_context(p: ServerPlan) -> dict:
    sds = bool(p.certificates) and p.certificates[0].resource_name.startswith(SDS_PREFIX)
    mutual = p.mode in tlsparams.MUTUAL_MODES
    if mutual and p.ca is not None:
        default: dict = {}
        if p.tls.subject_alt_names:
            default["match_typed_subject_alt_names"] = san_matchers(p.tls.subject_alt_names)
        if sds:  # ApplyToCommonTLSContext (file-mounted) passes no certificate pins
            if p.tls.spki:
                default["verify_certificate_spki"] = list(p.tls.spki)
            if p.tls.hashes:
                default["verify_certificate_hash"] = list(p.tls.hashes)
        if p.ca_crl is not None:  # file-mounted caCrl (ApplyToCommonTLSContext)
            default["crl"] = ca_crl_source(p)
        return {"combined_validation_context": {
            "default_validation_context": default,
            "validation_context_sds_secret_config": sds_config(p.ca.resource_name)}}
    if sds and not mutual and p.tls.subject_alt_names:
        # SIMPLE with subjectAltNames: Istio still writes a validation context holding only the
        # SAN matchers (no CA), the ``else if len(tlsOpts.SubjectAltNames) > 0`` branch.
        return {"validation_context": {"match_typed_subject_alt_names": san_matchers(p.tls.subject_alt_names)}}
    return {}


def ca_crl_source(p: ServerPlan) -> dict:
    """A file-mounted server's ``caCrl`` as Istio passes it (pilot/pkg/security/model
    ApplyToCommonTLSContext): a ``filename`` data source in the default validation context, which
    Envoy reads when it builds the listener. The local gateway's copy of the file when it has one."""
    return {"filename": p.ca_crl.local_path or p.ca_crl.path}


def _routes(p: ServerPlan, local_ports: dict[int, int]) -> list[dict]:
    json_type = [{"header": {"key": "content-type", "value": "application/json"},
                  "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
    if p.https_redirect:
        redirect: dict = {"https_redirect": True}
        if local_ports.get(443):
            redirect["port_redirect"] = local_ports[443]
        return [{"name": "https-redirect", "match": {"prefix": "/"}, "redirect": redirect}]
    return [
        {"name": "health", "match": {"path": HEALTH_PATH},
         "direct_response": {"status": 200, "body": {"inline_string": HEALTH_BODY}},
         "response_headers_to_add": json_type},
        {"name": "not-found", "match": {"prefix": "/"},
         "direct_response": {"status": 404, "body": {"inline_string": NOT_FOUND_BODY}},
         "response_headers_to_add": json_type},
    ]


def _http_connection_manager(group: list[ServerPlan], stat_prefix: str, local_ports: dict[int, int],
                             by_host: bool) -> dict:
    virtual_hosts = [{
        "name": f"{p.gateway}/servers/{p.index}",
        "domains": (list(p.server_names) or ["*"]) if by_host else ["*"],
        "routes": _routes(p, local_ports),
        "response_headers_to_add": [{"header": {"key": GATEWAY_HEADER, "value": p.label},
                                     "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
    } for p in group]
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM_TYPE,
            "stat_prefix": stat_prefix,
            "codec_type": "AUTO",
            "server_name": "istio-envoy",
            "strip_any_host_port": True,
            "route_config": {"name": stat_prefix, "virtual_hosts": virtual_hosts},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}],
        },
    }


# ---------------------------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------------------------

def bootstrap(lds: WatchedFile, sds_socket: str, admin_port: int = 0, node_id: str = "kimpki-localgw",
              cluster: str = "istio-ingressgateway", max_connections: int = 10000,
              admin_socket: str | None = None) -> dict:
    """Envoy's bootstrap: node (required for xDS), admin on the Unix socket ``admin_socket`` (else
    on 127.0.0.1:``admin_port``), listeners from a file, secrets over ADS from the SDS server
    listening on the Unix socket ``sds_socket``."""
    admin = ({"pipe": {"path": admin_socket, "mode": 0o600}} if admin_socket
             else {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}})
    return {
        "node": {"id": node_id, "cluster": cluster},
        "admin": {"address": admin},
        "static_resources": {"clusters": [{
            "name": SDS_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {HTTP_OPTIONS_NAME: {
                "@type": HTTP_OPTIONS_TYPE, "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": SDS_CLUSTER, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"pipe": {"path": sds_socket}}}}]}]},
        }]},
        "dynamic_resources": {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                           "grpc_services": [{"envoy_grpc": {"cluster_name": SDS_CLUSTER}}]},
            "lds_config": {
                "path_config_source": {"path": lds.path, "watched_directory": {"path": lds.directory}},
                "resource_api_version": "V3",
            },
        },
        "overload_manager": {"resource_monitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {"@type": CONNECTIONS_MONITOR_TYPE, "max_active_downstream_connections": max_connections},
        }]},
    }
