"""kimpki.localgw: a real local Istio-style ingress gateway, Envoy configured from manifests.

* :mod:`~kimpki.localgw.manifests`: YAML → Secrets, Gateways, mounts; Istio's credential rules →
  :class:`~kimpki.localgw.manifests.ServerPlan` values and warnings (pure).
* :mod:`~kimpki.localgw.envoy_config`: plans → Envoy bootstrap, listeners (LDS), secrets (SDS) (pure).
* :mod:`~kimpki.localgw.sds_server`: serves the secrets to Envoy over one gRPC (ADS) stream.
* :mod:`~kimpki.localgw.limits`: a system limit Envoy ran into, as one line naming its setting.
* :mod:`~kimpki.localgw.runner`: :class:`~kimpki.localgw.runner.LocalGateway` writes the files,
  runs Envoy, waits until it serves, and reloads changed manifests without restarting it.
* :mod:`~kimpki.localgw.envoy_process`: Envoy as a child that dies with kimpki (even on SIGKILL),
  sees none of its secrets, answers its admin API on a private Unix socket; private run folders
  and their cleanup; why Envoy died.
"""
