"""kimpki.kube: the only package that talks to a Kubernetes API server (and imports ``kubernetes``).

    from kimpki.kube import Cluster
    cluster = Cluster.connect(kubeconfig=None, context=None)
    res = cluster.upsert_secret(secret_dict)          # created / updated in place / unchanged

Modules: ``config`` (kubeconfig or in-cluster), ``client`` (:class:`Cluster`), ``errors`` (one
line per failure), ``kinds`` (REST paths), ``objects`` (pure merge and compare helpers), ``lease`` (a
coordination.k8s.io/v1 Lease lock with client-go's leader-election rules).
Importing this package is cheap: ``kubernetes`` is imported inside :meth:`Cluster.connect`.
"""

from kimpki.kube.client import Cluster, UpsertResult
from kimpki.kube.errors import (AlreadyExists, ConfigError, Conflict, ConnectionLost, Expired, Forbidden,
                                ImmutableSecretType, Invalid, KubeError, NamespaceNotFound, NoConfigError,
                                NotFound, NotServed, ServerError, Timeout, Unauthorized, Unmanaged, Unreachable)

__all__ = [
    "Cluster", "UpsertResult", "KubeError", "ConfigError", "Unreachable", "Timeout", "ConnectionLost",
    "Expired", "Unauthorized", "Forbidden", "NotFound", "NamespaceNotFound", "NoConfigError", "NotServed",
    "AlreadyExists", "Conflict", "Invalid", "ImmutableSecretType", "ServerError", "Unmanaged",
]
