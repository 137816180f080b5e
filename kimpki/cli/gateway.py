"""``kimpki gateway``: render, mount, unmount, apply, serve (each loaded only when invoked)."""

from __future__ import annotations

import click

from kimpki.cli.lazy import LazyGroup

GATEWAY_COMMANDS = {
    "render": ("kimpki.cli.gateway_render:command", "Print a Gateway and VirtualService for hosts and credentials."),
    "apply": ("kimpki.cli.gateway_apply:command", "Create or update Gateways and VirtualServices in the cluster."),
    "mount": ("kimpki.cli.gateway_mount:mount", "Mount a certificate Secret into the ingress gateway (file-mounted)."),
    "unmount": ("kimpki.cli.gateway_mount:unmount", "Remove a Secret volume mounted by 'gateway mount'."),
    "serve": ("kimpki.cli.gateway_serve:command", "Serve Gateway manifests locally with Envoy, for testing."),
}

EPILOG = """\b
Examples (the manual kubectl steps they replace):
  kimpki gateway render --host kim.example.com --credential kim-credential --mode SIMPLE
  kimpki gateway render --host kim.example.com --file-mounted --mode MUTUAL --ca-file-name example.com.crt
  kimpki gateway mount --secret istio-ingressgateway-bookinfo-certs \\
      --mount-path /etc/istio/ingressgateway-bookinfo-certs
  kimpki gateway render --host kim.example.com --credential kim-credential -o yaml > gw.yaml
  kimpki gateway apply -f gw.yaml
  kimpki gateway serve -f gw.yaml -f secret.yaml
"""


@click.group("gateway", cls=LazyGroup, lazy_commands=GATEWAY_COMMANDS, epilog=EPILOG)
def group():
    """Istio Gateway and VirtualService manifests, and the ingress gateway's Secret volumes."""


def load_objects(paths: tuple[str, ...] | list[str], validate: bool = False) -> list[tuple[str, dict]]:
    """``(source, object)`` for every document in ``paths`` (files, folders, ``-`` for stdin);
    ``kind: List`` documents are unpacked. Malformed input is a UsageError; with ``validate``, so
    is a Gateway or VirtualService the API server would refuse (schema, CEL rules), at FILE:LINE."""
    import sys

    from kimpki import safe_yaml
    from kimpki.errors import UsageError
    from kimpki.localgw.manifests import check_istio, check_shape, manifest_files

    texts: list[tuple[str, str]] = []
    for p in paths:
        if p == "-":
            texts.append(("<stdin>", safe_yaml.read_stream(sys.stdin)))
            continue
        texts.extend((str(f), safe_yaml.read_text(f)) for f in manifest_files([p]))
    out: list[tuple[str, dict]] = []
    counts: dict[str, int] = {}  # objects per source, as check_shape counts them

    def add(source: str, text: str, doc) -> None:
        if doc is None:
            return
        if not isinstance(doc, dict):
            raise UsageError(f"{source}: a document is not a mapping")
        if str(doc.get("kind") or "").endswith("List") and isinstance(doc.get("items"), list):
            for item in doc["items"]:
                add(source, text, item)
            return
        out.append((source, doc))
        counts[source] = counts.get(source, 0) + 1
        check_shape(doc, source, text, counts[source])
        if validate:
            check_istio(doc, source, text, counts[source])

    for source, text in texts:
        for d in safe_yaml.load_all(text, source):
            add(source, text, d)
    return out
