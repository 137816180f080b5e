"""Facts about how Istio reads gateway credentials, in one place.

Read from Istio 1.32 (pilot/pkg/credentials/kube/secrets.go, pilot/pkg/model/credentials.go):

* SDS (``tls.credentialName: X``): Secret ``X`` in the gateway pod's namespace. Server cert and key
  come from ``cert``/``key`` (generic form) or ``tls.crt``/``tls.key`` (TLS form). The Secret's
  ``type`` is never checked; when both forms are present the generic form wins.
* MUTUAL: the CA comes from Secret ``X-cacert`` when that Secret exists (and then there is no
  fallback even if it holds no CA key), otherwise from key ``cacert`` (preferred) or ``ca.crt``
  in ``X``. CRLs live in ``crl`` / ``ca.crl``; an OCSP staple in ``tls.ocsp-staple``.
* istiod pushes whatever the Secret holds, even an expired certificate, and a missing Secret
  leaves new listeners warming: so credentials are validated before writing and updated in place.
* File-mounted (legacy): ``istio-ingressgateway-certs`` (kubernetes.io/tls) mounted at
  ``/etc/istio/ingressgateway-certs``; ``istio-ingressgateway-ca-certs`` (generic, key
  ``<file>.crt``) at ``/etc/istio/ingressgateway-ca-certs``. Older gateways need a pod restart
  to pick up changed files.
* File-mounted MUTUAL CRLs (Istio >= 1.22): ``tls.caCrl``, a path (refused with
  ``credentialName`` and with SIMPLE), passed to Envoy as a ``filename`` data source in the default
  validation context (pilot/pkg/security/model/authentication.go): Envoy reads the file when it
  builds the listener, so a changed CRL file needs a pod restart too.
"""

import re

# Generic form keys (what `kubectl create secret generic --from-file=key=... ...` makes).
GENERIC_KEY = "key"
GENERIC_CERT = "cert"
GENERIC_CA = "cacert"
GENERIC_CRL = "crl"

# TLS form keys (type kubernetes.io/tls, as cert-manager writes).
TLS_KEY = "tls.key"
TLS_CERT = "tls.crt"
TLS_CA = "ca.crt"
TLS_CRL = "ca.crl"
OCSP_STAPLE = "tls.ocsp-staple"

SECRET_TYPE_TLS = "kubernetes.io/tls"
SECRET_TYPE_OPAQUE = "Opaque"

CACERT_SECRET_SUFFIX = "-cacert"

DEFAULT_NAMESPACE = "istio-system"

# Legacy file-mounted names.
FILE_MOUNTED_CERTS_SECRET = "istio-ingressgateway-certs"
FILE_MOUNTED_CA_SECRET = "istio-ingressgateway-ca-certs"
FILE_MOUNTED_CERTS_PATH = "/etc/istio/ingressgateway-certs"
FILE_MOUNTED_CA_PATH = "/etc/istio/ingressgateway-ca-certs"

GATEWAY_DEPLOYMENT = "istio-ingressgateway"
GATEWAY_CONTAINER = "istio-proxy"
GATEWAY_SELECTOR = {"istio": "ingressgateway"}

# What kimpki writes on every Secret it manages.
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "kimpki"
ANNOTATION_PREFIX = "kimpki.io/"


# Kubernetes object names, as the API server validates them (apimachinery's IsDNS1123Subdomain
# for Secret and ConfigMap names, IsDNS1123Label for namespaces): checked before anything is
# written, so that a folder of manifests or a dry run never shows a name a cluster would refuse.
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def object_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a Secret or ConfigMap, or None."""
    if len(name) <= 253 and _DNS1123_SUBDOMAIN.fullmatch(name):
        return None
    return "lower-case letters, digits, '-' and '.', at most 253"


def label_problem(text: str) -> str | None:
    """Why ``text`` cannot name a namespace (or a pod volume), or None."""
    if len(text) <= 63 and _DNS1123_LABEL.fullmatch(text):
        return None
    return "lower-case letters, digits and '-', at most 63"


def cacert_secret_name(credential_name: str) -> str:
    """The name of the separate CA Secret Istio looks for first for MUTUAL servers."""
    return credential_name + CACERT_SECRET_SUFFIX
