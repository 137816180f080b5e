"""Gateway and VirtualService manifests for an Istio ingress gateway, and Istio's Gateway rules (pure).

:func:`render_gateway` builds one ``networking.istio.io`` Gateway with one HTTPS server per
credential on port 443 (``selector: {istio: ingressgateway}``, as in the manual steps), and
:func:`render_virtual_service` routes the servers' hosts through it to a Service
(``kim-gateway-service:8080`` by default). A server gets its certificate either from a Secret
through SDS (``credentialName``) or from files mounted into the gateway pod
(``serverCertificate``/``privateKey``/``caCertificates``, the legacy way; ``caCrl`` for the CRL file
kimpki writes beside the CA file when the client trust uses revocation).

:func:`validate_gateway` checks what Istio's own validation (pilot/pkg/config/validation) would
refuse or silently mis-serve, in plain words: every server has hosts and a port with a unique
name; an HTTPS or TLS port has a ``tls`` block; a terminating server has exactly one certificate
source (``credentialName``/``credentialNames``/``tlsCertificates`` or file paths, not both, not
none); file-based servers name both the certificate and the key, and file-based MUTUAL needs
``caCertificates``.
"""

from __future__ import annotations

import copy
import posixpath
import re
from dataclasses import dataclass

from kimpki.errors import UsageError
from kimpki.istio import contract as c
from kimpki.istio import tlsparams
from kimpki.istio.credential import crl_file_name

GROUP = "networking.istio.io"
API_VERSIONS = ("v1", "v1beta1", "v1alpha3")  # what Istio 1.32's CRDs serve; v1 is stored
DEFAULT_API_VERSION = "v1"
MODES = ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL")  # OPTIONAL_MUTUAL: a CA credential exactly like MUTUAL
ALL_TLS_MODES = ("PASSTHROUGH", "SIMPLE", "MUTUAL", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL", "OPTIONAL_MUTUAL")
DEFAULT_SERVICE = "kim-gateway-service"
DEFAULT_SERVICE_PORT = 8080
DEFAULT_SERVICE_NAMESPACE = "default"
HTTPS_PORT = 443

TLS_FILE_CERT = c.TLS_CERT  # file names inside a mounted kubernetes.io/tls Secret
TLS_FILE_KEY = c.TLS_KEY


@dataclass(frozen=True)
class ServerSpec:
    """One HTTPS server: its hosts, TLS mode, and where the certificate comes from."""

    hosts: tuple[str, ...]
    mode: str = "SIMPLE"
    credential_name: str | None = None  # SDS
    server_certificate: str | None = None  # file-mounted
    private_key: str | None = None
    ca_certificates: str | None = None
    port_name: str | None = None  # default: derived, see port_names()
    # Istio's further tls fields (see kimpki.istio.tlsparams); empty = not written
    subject_alt_names: tuple[str, ...] = ()  # MUTUAL/OPTIONAL_MUTUAL: client identities allowed
    min_protocol_version: str | None = None
    max_protocol_version: str | None = None
    cipher_suites: tuple[str, ...] = ()
    ecdh_curves: tuple[str, ...] = ()
    ca_crl: str | None = None  # file-mounted MUTUAL: the CRL file (Istio >= 1.22 tls.caCrl)
    credential_names: tuple[str, ...] = ()  # SDS, Istio >= 1.27: an RSA and an ECDSA credential (at most 2)
    ca_cert_credential_name: str | None = None  # Istio >= 1.28: the MUTUAL CA from its own Secret/ConfigMap

    def __post_init__(self) -> None:
        if not self.hosts:
            raise UsageError("a Gateway server needs at least one --host")
        if self.mode not in MODES:
            raise UsageError(f"unknown TLS mode {self.mode!r}: choose {', '.join(MODES)}")
        problem = next(iter(tls_param_problems(self.mode, self.tls())), None)
        if problem:
            raise UsageError(problem)
        _check_credential_names(self)

    @classmethod
    def sds(cls, hosts, credential_name: str, mode: str = "SIMPLE",
            ca_cert_credential_name: str | None = None) -> "ServerSpec":
        """``credential_name`` with a comma (``kim-credential,kim-credential-rsa``) is a pair: credentialNames."""
        names = tuple(n.strip() for n in credential_name.split(",") if n.strip())
        if len(names) > 1:
            return cls(tuple(hosts), mode.upper(), credential_names=names,
                       ca_cert_credential_name=ca_cert_credential_name)
        return cls(tuple(hosts), mode.upper(), credential_name=names[0] if names else credential_name,
                   ca_cert_credential_name=ca_cert_credential_name)

    @classmethod
    def file_mounted(cls, hosts, mode: str = "SIMPLE", mount_path: str = c.FILE_MOUNTED_CERTS_PATH,
                     ca_file_name: str | None = None, ca_mount_path: str = c.FILE_MOUNTED_CA_PATH,
                     crl: bool = False) -> "ServerSpec":
        """Files of a mounted ``kubernetes.io/tls`` Secret: ``<mount_path>/tls.crt`` and ``tls.key``;
        for MUTUAL the CA file ``<ca_mount_path>/<ca_file_name>`` (``example.com.crt`` in the manual steps)
        and, with ``crl``, the CRL file beside it (``example.com.crl``, see
        :func:`kimpki.istio.credential.crl_file_name`) as ``caCrl``."""
        mode = mode.upper()
        mount_path = mount_path.rstrip("/") or "/"
        ca = None
        if mode in tlsparams.MUTUAL_MODES:
            if not ca_file_name:
                raise UsageError(f"a file-mounted {mode} server needs the CA file's name (--ca-file-name, "
                                 f"e.g. example.com.crt under {c.FILE_MOUNTED_CA_PATH})")
            ca = ca_file_name if ca_file_name.startswith("/") else f"{ca_mount_path.rstrip('/')}/{ca_file_name}"
        if crl and mode not in tlsparams.MUTUAL_MODES:
            raise UsageError("a CRL (caCrl) is for file-mounted MUTUAL and OPTIONAL_MUTUAL servers: add --mode MUTUAL")
        ca_crl = posixpath.join(posixpath.dirname(ca), crl_file_name(posixpath.basename(ca))) if crl else None
        return cls(tuple(hosts), mode, server_certificate=f"{mount_path}/{TLS_FILE_CERT}",
                   private_key=f"{mount_path}/{TLS_FILE_KEY}", ca_certificates=ca, ca_crl=ca_crl)

    def tls(self) -> dict:
        out: dict = {"mode": self.mode}
        if self.credential_names:
            out["credentialNames"] = list(self.credential_names)
        elif self.credential_name:
            out["credentialName"] = self.credential_name
        else:
            out["serverCertificate"] = self.server_certificate
            out["privateKey"] = self.private_key
            if self.ca_certificates:
                out["caCertificates"] = self.ca_certificates
            if self.ca_crl:
                out["caCrl"] = self.ca_crl
        if self.ca_cert_credential_name:
            out["caCertCredentialName"] = self.ca_cert_credential_name
        out.update(self.tls_params())
        return out

    def tls_params(self) -> dict:
        """The ``tls`` fields beyond mode and certificate, as Istio spells them (only those set)."""
        out: dict = {}
        if self.subject_alt_names:
            out["subjectAltNames"] = list(self.subject_alt_names)
        if self.min_protocol_version:
            out["minProtocolVersion"] = self.min_protocol_version
        if self.max_protocol_version:
            out["maxProtocolVersion"] = self.max_protocol_version
        if self.cipher_suites:
            out["cipherSuites"] = list(self.cipher_suites)
        if self.ecdh_curves:
            out["ecdhCurves"] = list(self.ecdh_curves)
        return out


def tls_param_problems(mode: str, tls: dict) -> list[str]:
    """What Istio would refuse, drop or mis-serve among a server's tls parameters, one line each:
    the values :mod:`kimpki.istio.tlsparams` lists, and subjectAltNames outside MUTUAL and
    OPTIONAL_MUTUAL (:func:`simple_sans_effect`)."""
    out = tlsparams.problems(tls)
    if tls.get("subjectAltNames") and mode not in tlsparams.MUTUAL_MODES:
        out.append(f"subjectAltNames pin client certificates: they need mode MUTUAL or OPTIONAL_MUTUAL, not "
                   f"{mode} ({simple_sans_effect(tls)})")
    pins = optional_mutual_pins(mode, tls)
    if pins:
        out.append(f"{pins} on an OPTIONAL_MUTUAL server make Envoy require a client certificate: it "
                   f"behaves as MUTUAL; use mode MUTUAL, or drop {pins}")
    return out


def optional_mutual_pins(mode: str, tls: dict) -> str | None:
    """The pins that turn OPTIONAL_MUTUAL into MUTUAL, named as the fields are, else None.

    Istio puts subjectAltNames (and certificate hashes/SPKIs) into the validation context of an
    OPTIONAL_MUTUAL server as it does for MUTUAL, and Envoy then fails a handshake without a
    client certificate (its CertificateValidationContext: "a client certificate is optional, unless
    one of ... verify_certificate_spki, verify_certificate_hash, or match_typed_subject_alt_names
    is also specified")."""
    if mode != "OPTIONAL_MUTUAL":
        return None
    fields = [f for f in ("subjectAltNames", "verifyCertificateSpki", "verifyCertificateHash") if tls.get(f)]
    return " and ".join(fields) or None


def simple_sans_effect(tls: dict) -> str:
    """What Istio does with subjectAltNames on a server that does not check client certificates.

    With credentialName(s) it still writes a validation context holding only the SAN matchers
    (pilot/pkg/security/model/authentication.go ``ApplyCredentialSDSToServerCommonTLSContext``),
    and Envoy rejects a SAN check without a CA, refusing the listener update that carries it,
    the gateway's other servers with it. File-mounted servers (``ApplyToCommonTLSContext``)
    ignore them."""
    if any(tls.get(f) for f in ("credentialName", "credentialNames")):
        return ("Istio gives Envoy a SAN check without a CA, which Envoy rejects: \"SAN-based verification "
                "of peer certificates without trusted CA is insecure and not allowed\", and the gateway's "
                "other servers are not updated either")
    return "a file-mounted server ignores them: no client certificate is checked"


MAX_CREDENTIAL_NAMES = 2  # the CRD's maxItems: one RSA and one ECDSA certificate


def _check_credential_names(spec: "ServerSpec") -> None:
    """Istio's rules for ``credentialNames`` and ``caCertCredentialName`` (CRD and pilot/pkg/security/model):
    at most two names, never beside ``credentialName``; a CA credential only for MUTUAL, where
    it replaces the ``-cacert`` lookup of the first name."""
    names = spec.credential_names
    if names and spec.credential_name:
        raise UsageError("give credentialName or credentialNames, not both")
    if len(names) > MAX_CREDENTIAL_NAMES:
        raise UsageError(f"at most {MAX_CREDENTIAL_NAMES} credentialNames (one RSA and one ECDSA certificate), "
                         f"not {len(names)}")
    if len(set(names)) != len(names):
        raise UsageError(f"credentialNames {', '.join(names)} name the same Secret twice")
    if spec.ca_cert_credential_name and spec.mode == "SIMPLE":
        raise UsageError("caCertCredentialName is for MUTUAL servers (a SIMPLE server checks no client certificate)")


def _label_of(host: str) -> str:
    first = host.split(".", 1)[0]
    if first == "*":
        first = "wildcard"
    return re.sub(r"[^a-z0-9-]", "-", first.lower()).strip("-") or "host"


def port_names(servers: list[ServerSpec] | tuple[ServerSpec, ...]) -> list[str]:
    """Unique port names: ``https`` for a single server, else ``https-<first label of its first host>``
    (the manual steps' ``https-kim`` and ``https-kim-new``), numbered when labels repeat."""
    names: list[str] = []
    for s in servers:
        if s.port_name:
            base = s.port_name
        elif len(servers) == 1:
            base = "https"
        else:
            base = f"https-{_label_of(s.hosts[0])}"
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def default_gateway_name(hosts: list[str] | tuple[str, ...]) -> str:
    """``kim.example.com`` → ``kim-gateway``; ``bookinfo.com`` → ``bookinfo-gateway`` (as named by hand)."""
    return f"{_label_of(hosts[0])}-gateway"


def _api_version(version: str) -> str:
    if version not in API_VERSIONS:
        raise UsageError(f"unknown Istio API version {version!r}: choose {', '.join(API_VERSIONS)}")
    return f"{GROUP}/{version}"


def _meta(name: str, namespace: str | None) -> dict:
    meta = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return meta


def render_gateway(name: str, servers: list[ServerSpec] | tuple[ServerSpec, ...], *,
                   namespace: str | None = c.DEFAULT_NAMESPACE, api_version: str = DEFAULT_API_VERSION,
                   selector: dict | None = None, port: int = HTTPS_PORT) -> dict:
    """A Gateway with one HTTPS server per :class:`ServerSpec`, all on ``port``."""
    if not servers:
        raise UsageError("a Gateway needs at least one server")
    out_servers = []
    for spec, pname in zip(servers, port_names(servers)):
        out_servers.append({
            "port": {"number": port, "name": pname, "protocol": "HTTPS"},
            "tls": spec.tls(),
            "hosts": list(spec.hosts),
        })
    return {
        "apiVersion": _api_version(api_version),
        "kind": "Gateway",
        "metadata": _meta(name, namespace),
        "spec": {"selector": dict(selector or c.GATEWAY_SELECTOR), "servers": out_servers},
    }


def file_ca_paths(gateway: dict) -> list[str]:
    """The ``caCertificates`` paths of a Gateway's file-mounted MUTUAL servers without ``caCrl``."""
    out = []
    for server in (gateway.get("spec") or {}).get("servers") or []:
        tls = server.get("tls") or {}
        if tls.get("caCertificates") and not tls.get("caCrl") and tls.get("mode") in ("MUTUAL", "OPTIONAL_MUTUAL"):
            out.append(str(tls["caCertificates"]))
    return out


def with_ca_crls(gateway: dict, crl_files: set[str]) -> dict:
    """``gateway`` with ``caCrl`` on each file-mounted MUTUAL server whose CA file under
    istio-ingressgateway-ca-certs has the CRL file beside it among ``crl_files`` (that Secret's keys):
    once a client trust uses revocation, its gateway must check the CRLs kimpki delivers."""
    out = copy.deepcopy(gateway)
    for server in (out.get("spec") or {}).get("servers") or []:
        tls = server.get("tls") or {}
        ca = str(tls.get("caCertificates") or "")
        if ca in file_ca_paths({"spec": {"servers": [server]}}) and posixpath.dirname(ca) == c.FILE_MOUNTED_CA_PATH \
                and crl_file_name(posixpath.basename(ca)) in crl_files:
            tls["caCrl"] = posixpath.join(c.FILE_MOUNTED_CA_PATH, crl_file_name(posixpath.basename(ca)))
    return out


def parse_service(text: str) -> tuple[str, int]:
    """``SVC:PORT`` → (SVC, PORT); a UsageError for anything else."""
    svc, sep, port = text.rpartition(":")
    if not sep or not svc or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--to-service wants SERVICE:PORT (e.g. {DEFAULT_SERVICE}:{DEFAULT_SERVICE_PORT}), not {text!r}")
    return svc, int(port)


def destination_host(service: str, vs_namespace: str | None, service_namespace: str = DEFAULT_SERVICE_NAMESPACE) -> str:
    """Istio reads a short host name relative to the VirtualService's namespace; when the
    VirtualService lives elsewhere (istio-system), qualify a short name with the Service's namespace."""
    if "." in service or not vs_namespace or vs_namespace == service_namespace:
        return service
    return f"{service}.{service_namespace}.svc.cluster.local"


def render_virtual_service(name: str, hosts: list[str] | tuple[str, ...], gateway: str, *,
                           namespace: str | None = c.DEFAULT_NAMESPACE, service: str = DEFAULT_SERVICE,
                           service_port: int = DEFAULT_SERVICE_PORT,
                           service_namespace: str = DEFAULT_SERVICE_NAMESPACE,
                           api_version: str = DEFAULT_API_VERSION) -> dict:
    """A VirtualService that sends every request for ``hosts`` arriving through ``gateway`` to a Service."""
    return {
        "apiVersion": _api_version(api_version),
        "kind": "VirtualService",
        "metadata": _meta(name, namespace),
        "spec": {
            "hosts": list(dict.fromkeys(hosts)),
            "gateways": [gateway],
            "http": [{"route": [{"destination": {
                "host": destination_host(service, namespace, service_namespace),
                "port": {"number": service_port}}}]}],
        },
    }


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

CREDENTIAL_FIELDS = ("credentialName", "credentialNames", "tlsCertificates")
FILE_FIELDS = ("serverCertificate", "privateKey")
TERMINATING = ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL")


def validate_gateway(obj: dict) -> list[str]:
    """Problems Istio would have with this Gateway, one line each; ``[]`` when there are none."""
    problems: list[str] = []
    if not isinstance(obj, dict) or obj.get("kind") != "Gateway":
        return ["not a Gateway"]
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return ["Gateway has no spec"]
    servers = spec.get("servers")
    if not isinstance(servers, list) or not servers:
        return ["Gateway has no servers"]
    seen_names: dict[str, int] = {}
    for i, server in enumerate(servers):
        where = f"servers[{i}]"
        if not isinstance(server, dict):
            problems.append(f"{where}: not an object")
            continue
        port = server.get("port")
        if not isinstance(port, dict):
            problems.append(f"{where}: has no port")
            port = {}
        pname = port.get("name")
        if pname:
            where = f"servers[{i}] (port {pname})"
        protocol = str(port.get("protocol") or "").upper()
        if not pname:
            problems.append(f"{where}: port has no name")
        elif pname in seen_names:
            problems.append(f"{where}: port name {pname!r} is already used by servers[{seen_names[pname]}]; "
                            f"port names must be unique")
        else:
            seen_names[pname] = i
        if not isinstance(port.get("number"), int) or not 0 < port["number"] < 65536:
            problems.append(f"{where}: port number must be 1..65535")
        if not protocol:
            problems.append(f"{where}: port has no protocol")
        hosts = server.get("hosts")
        if not isinstance(hosts, list) or not hosts:
            problems.append(f"{where}: has no hosts")
        tls = server.get("tls")
        if protocol in ("HTTPS", "TLS") and not isinstance(tls, dict):
            problems.append(f"{where}: an {protocol} port needs a tls block")
            continue
        if not isinstance(tls, dict):
            continue
        mode = str(tls.get("mode") or "PASSTHROUGH")
        if mode not in ALL_TLS_MODES:
            problems.append(f"{where}: unknown tls.mode {mode!r}")
            continue
        if mode in TERMINATING:
            problems.extend(f"{where}: {p}" for p in tls_param_problems(mode, tls))
        creds = [f for f in CREDENTIAL_FIELDS if tls.get(f)]
        files = [f for f in FILE_FIELDS + ("caCertificates",) if tls.get(f)]
        if len(creds) > 1:
            problems.append(f"{where}: only one of {', '.join(creds)} may be set")
        if creds and files:
            problems.append(f"{where}: one certificate source per server: {creds[0]} and "
                            f"{', '.join(files)} are both set")
        problems += _ca_crl_problems(where, tls, mode, creds)
        if mode not in TERMINATING or creds:
            continue
        if not files:
            problems.append(f"{where}: {mode} needs a certificate: credentialName, or serverCertificate "
                            f"and privateKey")
            continue
        for f in FILE_FIELDS:
            if not tls.get(f):
                problems.append(f"{where}: file-based {mode} needs {f}")
        if mode in ("MUTUAL", "OPTIONAL_MUTUAL") and not tls.get("caCertificates") and not tls.get("caCertCredentialName"):
            problems.append(f"{where}: file-based {mode} needs caCertificates (the CA that client "
                            f"certificates are checked against)")
    return problems


def _ca_crl_problems(where: str, tls: dict, mode: str, creds: list[str]) -> list[str]:
    """Istio's rules for ``caCrl`` (pkg/config/validation): a file path, not with a credential
    (an SDS credential carries its CRL in the Secret), not with SIMPLE."""
    if not tls.get("caCrl"):
        return []
    if creds:
        return [f"{where}: caCrl is not supported with {creds[0]}: the CRL goes into the credential Secret "
                f"(key crl or ca.crl)"]
    if mode == "SIMPLE":
        return [f"{where}: caCrl is not supported with SIMPLE TLS (no client certificates to check)"]
    return []
