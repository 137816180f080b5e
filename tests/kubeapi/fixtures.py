"""pytest fixtures for the stand-in API server.

Import them into a conftest with ``from tests.kubeapi.fixtures import *``.

* ``kube_api`` -- a fresh, running :class:`KubeApiServer` per test (namespaces
  ``default``, ``istio-system``, ``kube-system``).
* ``kube_env`` -- ``kube_api`` plus the environment pointing at it: ``KUBECONFIG`` is the
  server's kubeconfig (also patched into ``kubernetes.config.kube_config``'s default
  location, which the client computes once at import, so ``load_kube_config()`` with no
  argument finds it) and ``KUBECACHEDIR`` a per-test kubectl cache directory; in-cluster
  variables are removed. Yields the server.
* ``kube_client`` -- a ``kubernetes.client.ApiClient`` configured from the server's
  kubeconfig (closed after the test).
"""

from __future__ import annotations

import pytest

from .server import KubeApiServer

__all__ = ["kube_api", "kube_env", "kube_client"]


@pytest.fixture
def kube_api():
    srv = KubeApiServer()
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def kube_env(kube_api, monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", kube_api.kubeconfig_path)
    monkeypatch.setenv("KUBECACHEDIR", str(tmp_path / "kube-cache"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    try:  # the client reads $KUBECONFIG once, at import time
        from kubernetes.config import kube_config

        monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", kube_api.kubeconfig_path)
    except ImportError:  # pragma: no cover
        pass
    yield kube_api


@pytest.fixture
def kube_client(kube_api):
    from kubernetes import config

    client = config.new_client_from_config(config_file=kube_api.kubeconfig_path)
    try:
        yield client
    finally:
        client.close()
