"""What a policy says, as typed, frozen values (built and checked by :mod:`kimpki.policy.load`).

Every value keeps ``where`` (the ``FILE:LINE`` of its document) so later steps can point at it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from kimpki.istio import contract as c
from kimpki.pki.constraints import NameConstraints
from kimpki.pki.keys import KeyType
from kimpki.pki.names import HostName
from kimpki.pki.renewal import RenewBefore
from kimpki.pki.windows import MaintenanceWindow
from kimpki.policy.source import Where

API_VERSION = "kimpki.io/v1alpha1"


@dataclass(frozen=True)
class PassphraseRef:
    """Where a CA key's passphrase comes from: a file's first line, or an environment variable."""

    file: Path | None = None
    env: str | None = None

    def describe(self) -> str:
        return f"file {self.file}" if self.file else f"${self.env}"


@dataclass(frozen=True)
class Target:
    """Where credentials, Gateways and the Deployment patch go: a folder of manifests or a cluster."""

    name: str
    where: Where
    manifests: Path | None = None  # absolute (resolved against the policy file)
    kubeconfig: str | None = None
    context: str | None = None
    maintenance_windows: tuple[MaintenanceWindow, ...] = ()  # the default of its Credentials

    @property
    def is_cluster(self) -> bool:
        return self.manifests is None

    def describe(self) -> str:
        if self.manifests is not None:
            return f"manifests {self.manifests}"
        parts = [f"context {self.context}" if self.context else "current context"]
        if self.kubeconfig:
            parts.append(f"kubeconfig {self.kubeconfig}")
        return "cluster (" + ", ".join(parts) + ")"


@dataclass(frozen=True)
class CertificateAuthority:
    name: str
    where: Where
    org: str | None = None
    common_name: str | None = None
    key_type: KeyType = KeyType.EC_P256
    duration: timedelta = timedelta(days=3650)
    parent: str | None = None
    passphrase: PassphraseRef | None = None
    constraints: NameConstraints | None = None
    crl_validity: timedelta | None = None  # its CRLs' validity (None: whatever the store has, default 7d)


@dataclass(frozen=True)
class Certificate:
    name: str  # the name in the store
    where: Where
    # Parsed and checked once, when the policy is loaded; the first is the CN. Issuing takes them
    # as they are (kimpki.pki.names.parse_host returns a HostName unchanged).
    names: tuple[HostName, ...]
    ca: str
    usage: str = "server"  # server | client
    org: str | None = None
    key_type: KeyType = KeyType.EC_P256
    duration: timedelta = timedelta(days=90)
    renew_before: RenewBefore = field(default_factory=lambda: RenewBefore.parse(None))
    renew_before_text: str | None = None
    dual: bool = False  # also the other algorithm's certificate, NAME-rsa or NAME-ecdsa (kimpki.pki.pairs)

    @property
    def hosts(self) -> tuple[str, ...]:
        """The names as written into the certificate: IDNA A-labels, lower case, canonical IPs."""
        return tuple(h.value for h in self.names)


@dataclass(frozen=True)
class Credential:
    """A credential Secret (and its CA Secret, if any) built from a server certificate."""

    name: str  # the Secret's name
    namespace: str
    where: Where
    certificate: str
    target: Target
    format: str = "generic"  # generic | tls
    mode: str = "SIMPLE"  # SIMPLE | MUTUAL
    ca_secret: bool = False  # MUTUAL over SDS: the CA bundle in a separate Secret NAME-cacert
    client_ca: str | None = None  # MUTUAL: the CA published (default: the certificate's CA)
    delivery: str = "sds"  # sds | file-mounted
    ca_file_name: str | None = None  # file-mounted MUTUAL: the CA's file name
    ocsp_staple: bool = False  # an OCSP staple (tls.ocsp-staple) signed by the certificate's CA, kept fresh
    dual: bool = False  # an RSA+ECDSA pair: this Secret and NAME-rsa/-ecdsa from a dual Certificate
    pair: str | None = None  # the other Secret of the pair (set when the policy is linked)
    ca_only: bool = False  # only client_ca's bundle, no key: a ...-cacert Secret for caCertCredentialName
    config_map: bool = False  # ca_only: a ConfigMap instead (caCertCredentialName configmap://NS/NAME)
    # When renew may rotate it: its own windows, else its Target's (resolved when the policy is
    # linked; None only before that, for "not given"). () = any time.
    maintenance_windows: tuple[MaintenanceWindow, ...] | None = None

    @property
    def mutual(self) -> bool:
        return self.mode == "MUTUAL"

    @property
    def kind(self) -> str:
        """What it writes: a ConfigMap for a ``caOnly`` Credential with ``configMap: true``."""
        return "ConfigMap" if self.config_map else "Secret"

    @property
    def file_mounted(self) -> bool:
        return self.delivery == "file-mounted"


@dataclass(frozen=True)
class GatewayMount:
    """A Secret volume mounted into the ingress gateway's proxy container (file-mounted hosts)."""

    name: str  # the volume's name
    namespace: str  # the Deployment's namespace
    where: Where
    secret: str
    mount_path: str
    target: Target
    deployment: str = c.GATEWAY_DEPLOYMENT
    container: str = c.GATEWAY_CONTAINER


@dataclass(frozen=True)
class GatewayServer:
    credential: str
    where: Where
    hosts: tuple[str, ...] = ()  # () = the certificate's hosts
    port_name: str | None = None
    mode: str | None = None  # None = the credential's; OPTIONAL_MUTUAL needs a MUTUAL credential (its CA)
    subject_alt_names: tuple[str, ...] = ()  # Istio's tls fields, as ServerSpec takes them
    min_protocol_version: str | None = None
    max_protocol_version: str | None = None
    cipher_suites: tuple[str, ...] = ()
    ecdh_curves: tuple[str, ...] = ()
    ca_credential: str | None = None  # MUTUAL: tls.caCertCredentialName (a ...-cacert Secret, configmap://NS/NAME)


@dataclass(frozen=True)
class VirtualServiceRoute:
    name: str
    service: str
    port: int
    service_namespace: str = "default"


@dataclass(frozen=True)
class Gateway:
    name: str
    namespace: str
    where: Where
    servers: tuple[GatewayServer, ...]
    target: Target
    istio_api_version: str = "v1"
    selector: tuple[tuple[str, str], ...] = tuple(c.GATEWAY_SELECTOR.items())
    virtual_service: VirtualServiceRoute | None = None
    objects: tuple = ()  # the rendered Gateway (and VirtualService) dicts, checked at load time


@dataclass(frozen=True)
class Policy:
    files: tuple[str, ...]
    targets: tuple[Target, ...] = ()
    authorities: tuple[CertificateAuthority, ...] = ()  # parents before children
    certificates: tuple[Certificate, ...] = ()
    credentials: tuple[Credential, ...] = ()
    mounts: tuple[GatewayMount, ...] = ()
    gateways: tuple[Gateway, ...] = ()

    def authority(self, name: str) -> CertificateAuthority | None:
        return next((a for a in self.authorities if a.name == name), None)

    def certificate(self, name: str) -> Certificate | None:
        return next((x for x in self.certificates if x.name == name), None)

    def credential(self, name: str) -> Credential | None:
        return next((x for x in self.credentials if x.name == name), None)
