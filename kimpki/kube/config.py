"""Where the cluster is and who we are: kubeconfig or in-cluster service account.

Order, as kubectl: ``--kubeconfig FILE``, else ``$KUBECONFIG`` (a ``:``-separated list), else
``~/.kube/config``, else the pod's service account (``KUBERNETES_SERVICE_HOST``). ``kubernetes``
is imported here only inside :func:`load`, which only :meth:`Cluster.connect` calls.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

from kimpki.errors import KimpkiError
from kimpki.kube.errors import ConfigError, NoConfigError, one_line

DEFAULT_TIMEOUT = 10.0
TIMEOUT_ENV = "KIMPKI_KUBE_TIMEOUT"
NO_CONFIG = "no Kubernetes configuration found: give --kubeconfig or set KUBECONFIG"


@dataclass(frozen=True)
class Source:
    """``kind`` is "kubeconfig" (``path`` as given, maybe a list) or "in-cluster"."""

    kind: str
    path: str | None = None

    def __str__(self) -> str:
        return f"kubeconfig {self.path}" if self.kind == "kubeconfig" else "in-cluster service account"


def find_source(kubeconfig: str | None, environ=None) -> Source:
    """Pure apart from ``os.path.exists``: which configuration to use, or :class:`ConfigError`."""
    env = os.environ if environ is None else environ
    if kubeconfig:
        if not os.path.isfile(os.path.expanduser(kubeconfig)):
            raise ConfigError(f"kubeconfig file {kubeconfig} not found")
        return Source("kubeconfig", os.path.expanduser(kubeconfig))
    listed = env.get("KUBECONFIG")
    if listed:
        paths = [os.path.expanduser(p) for p in listed.split(os.pathsep) if p]
        if not any(os.path.isfile(p) for p in paths):
            raise ConfigError(f"no kubeconfig file found at $KUBECONFIG ({listed})")
        return Source("kubeconfig", os.pathsep.join(paths))
    home = os.path.expanduser("~/.kube/config")
    if os.path.isfile(home):
        return Source("kubeconfig", home)
    if env.get("KUBERNETES_SERVICE_HOST") and env.get("KUBERNETES_SERVICE_PORT"):
        return Source("in-cluster")
    raise NoConfigError(NO_CONFIG)


def timeout_from_env(timeout: float | None) -> float:
    if timeout is not None:
        return float(timeout)
    raw = os.environ.get(TIMEOUT_ENV)
    if raw:
        try:
            value = float(raw.rstrip("s"))
            if value > 0:
                return value
        except ValueError:
            pass
        raise ConfigError(f"${TIMEOUT_ENV}={raw!r} is not a number of seconds")
    return DEFAULT_TIMEOUT


@contextmanager
def quiet_logs():
    """The kubernetes config loader logs to the root logger (``logging.error``): collect
    those lines instead of letting Python print them on stderr."""
    import logging

    class Capture(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages: list[str] = []

        def emit(self, record):
            try:
                self.messages.append(record.getMessage())
            except Exception:  # noqa: BLE001 - never let a log record break loading
                pass

    root = logging.getLogger()
    cap = Capture()
    root.addHandler(cap)
    try:
        yield cap
    finally:
        root.removeHandler(cap)


def silence_client_noise() -> None:
    """urllib3 and the client log and warn (retries, pool, InsecureRequestWarning): keep
    stderr clean; errors reach the user as one line through our own exceptions."""
    import logging
    import warnings

    for name in ("urllib3", "kubernetes"):
        lg = logging.getLogger(name)
        if not any(isinstance(h, logging.NullHandler) for h in lg.handlers):
            lg.addHandler(logging.NullHandler())
    try:
        from urllib3.exceptions import InsecureRequestWarning

        warnings.filterwarnings("ignore", category=InsecureRequestWarning)
    except ImportError:  # pragma: no cover
        pass


def load(kubeconfig: str | None, context: str | None):
    """``(kubernetes.client.ApiClient, server URL, Source)``; :class:`ConfigError` on failure."""
    source = find_source(kubeconfig)
    silence_client_noise()
    from kubernetes import config as kconfig
    from kubernetes.client import ApiClient, Configuration

    cfg = type.__call__(Configuration)
    _check_kubeconfig_files(source)
    with quiet_logs() as cap:
        try:
            if source.kind == "in-cluster":
                if context:
                    raise ConfigError(f"--context {context} needs a kubeconfig, and none was found "
                                      "(give --kubeconfig or set KUBECONFIG)")
                kconfig.load_incluster_config(client_configuration=cfg)
            else:
                kconfig.load_kube_config(config_file=source.path, context=context,
                                         client_configuration=cfg, persist_config=False)
        except ConfigError:
            raise
        except kconfig.ConfigException as e:
            raise ConfigError(_config_message(source, context, str(e), cap.messages)) from None
        except Exception as e:  # yaml errors, exec plugins, unreadable files
            raise ConfigError(_config_message(source, context, f"{type(e).__name__}: {e}", cap.messages)) from None
    if "server" not in _current_cluster_keys(source, context):
        raise ConfigError(f"{source} names no API server (clusters[].cluster.server) for the "
                          f"{'context ' + repr(context) if context else 'current context'}")
    # Never retry behind our back: a retried PUT/POST could apply twice, and retries print
    # warnings. A failed request is reported as one line instead.
    cfg.retries = False
    # The proxy (the kubeconfig's proxy-url, else $HTTPS_PROXY/$HTTP_PROXY for this server) is
    # settled here: the client builds its connection pools with it, once, just below. Pinned,
    # the token refresh hook, which sets the host again before every request, no longer reads
    # the whole environment again each time to work it out anew (client-go reads it once too).
    cfg.proxy = cfg.proxy
    client = ApiClient(configuration=cfg)
    from kimpki import __version__

    client.user_agent = f"kimpki/{__version__}"
    return client, cfg.host.rstrip("/"), source


def _check_kubeconfig_files(source: Source) -> None:
    """The kubernetes library reads kubeconfig files with plain ``yaml.safe_load``: give each
    file the bounds of :mod:`kimpki.safe_yaml` first (size, depth, alias expansion)."""
    if source.kind != "kubeconfig":
        return
    from kimpki import safe_yaml

    for p in (source.path or "").split(os.pathsep):
        if os.path.isfile(p):
            try:
                safe_yaml.check(safe_yaml.read_text(p), p)
            except KimpkiError as e:
                raise ConfigError(str(e)) from None


def _current_cluster_keys(source: Source, context: str | None) -> set[str]:
    """Best effort: the keys of the selected cluster entry (to tell a missing ``server``)."""
    if source.kind != "kubeconfig":
        return {"server"}
    try:
        from kimpki import safe_yaml

        for p in (source.path or "").split(os.pathsep):
            if not os.path.isfile(p):
                continue
            doc = safe_yaml.load(safe_yaml.read_text(p), p) or {}
            ctx_name = context or doc.get("current-context")
            ctx = next((c.get("context") or {} for c in doc.get("contexts") or [] if c.get("name") == ctx_name), {})
            cl = next((c.get("cluster") or {} for c in doc.get("clusters") or []
                       if c.get("name") == ctx.get("cluster")), None)
            if cl is not None:
                return set(cl)
    except Exception:  # noqa: BLE001
        pass
    return {"server"}  # unknown: let the client library decide


def _config_message(source: Source, context: str | None, text: str, logged: list[str]) -> str:
    text = one_line(text, 240)
    if context and "Expected object with name" in text and "contexts" in text:
        return f"context {context!r} not found in {source}"
    if "current-context" in text:
        return f"{source} has no current-context: give --context"
    if "No configuration found" in text:
        return f"{source} holds no configuration"
    extra = f" ({one_line(logged[-1], 160)})" if logged else ""
    return f"cannot use {source}: {text}{extra}"
