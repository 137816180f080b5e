"""``kimpki gateway apply``: create or update Gateways and VirtualServices in the cluster."""

from __future__ import annotations

import click

from kimpki.cli.common import cluster_options, emit, json_option, note
from kimpki.cli.gateway import load_objects
from kimpki.errors import KimpkiError, UsageError
from kimpki.istio import contract as c

EPILOG = """\b
Examples:
  kimpki gateway apply -f gateway-sds.yaml
  kimpki gateway render --host kim.example.com --credential kim-credential | kimpki gateway apply -f -
  kimpki gateway apply -f ./manifests --dry-run      # the API server checks, nothing is stored

\b
Each object is created, or replaced in place guarded by the resourceVersion just read (a
concurrent writer makes kimpki re-read and retry, never overwrite blindly). Everything is
checked before anything is sent: Gateways by Istio's rules, and every object against Istio's
CRD schema for its apiVersion (--no-validate skips that). Secrets are written with
'kimpki secret create'; other kinds with kubectl.
"""

KINDS = ("Gateway", "VirtualService")


def _check(source: str, obj: dict, namespace: str | None, validate: bool) -> dict:
    from kimpki.istio.gateway import GROUP, validate_gateway

    kind, api = obj.get("kind"), str(obj.get("apiVersion") or "")
    name = (obj.get("metadata") or {}).get("name")
    if kind == "Secret":
        raise UsageError(f"{source}: Secret {name}: write credentials with 'kimpki secret create' (checked, "
                         f"labelled, updated in place); 'gateway apply' takes {' and '.join(KINDS)}")
    if kind not in KINDS or not api.startswith(GROUP + "/"):
        raise UsageError(f"{source}: {kind or '(no kind)'} {name or ''}: 'gateway apply' takes {GROUP} "
                         f"{' and '.join(KINDS)}; use kubectl for other kinds".replace("  ", " "))
    if not name:
        raise UsageError(f"{source}: {kind} without metadata.name")
    obj = dict(obj)
    meta = dict(obj.get("metadata") or {})
    ns = meta.get("namespace")
    if ns and namespace and ns != namespace:
        raise UsageError(f"{source}: {kind} {name} is in namespace {ns}, but --namespace says {namespace}")
    meta["namespace"] = ns or namespace or c.DEFAULT_NAMESPACE
    obj["metadata"] = meta
    if validate:
        # The API server's checks (schema, CEL rules) ran as the files were read (load_objects);
        # these are the rules Istio applies on top.
        if kind == "Gateway":
            problems = validate_gateway(obj)
            if problems:
                raise UsageError(f"{source}: Gateway {name}: {problems[0]}"
                                 + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    return obj


@click.command("apply", epilog=EPILOG)
@click.option("-f", "--filename", "paths", multiple=True, required=True, metavar="PATH",
              help="A manifest file (YAML or JSON, several documents or a List), a folder of them, or - for stdin.")
@click.option("-n", "--namespace", help=f"Namespace for objects that name none (default {c.DEFAULT_NAMESPACE}).")
@click.option("--dry-run", is_flag=True, help="Server-side dry run: the API server checks everything, stores nothing.")
@click.option("--validate/--no-validate", default=True, show_default=True,
              help="Check Gateways by Istio's rules and objects against Istio's CRD schemas first.")
@cluster_options
@json_option
def command(paths, namespace, dry_run, validate, kubeconfig, context, as_json):
    """Create or update the Gateways and VirtualServices in PATH(s), in place."""
    objs = [_check(src, o, namespace, validate) for src, o in load_objects(paths, validate=validate)]
    if not objs:
        raise UsageError("no Gateway or VirtualService in " + ", ".join(paths))

    from kimpki.kube import Cluster

    results = []
    with Cluster.connect(kubeconfig=kubeconfig, context=context) as cluster:
        for o in objs:
            meta = o["metadata"]
            try:
                res = cluster.apply(o, dry_run=dry_run)
            except KimpkiError:
                if results:
                    note("kimpki: already applied: " + ", ".join(
                        f"{r['kind'].lower()}/{r['name']} ({r['action']})" for r in results))
                raise
            results.append({"kind": o["kind"], "name": meta["name"], "namespace": meta["namespace"],
                            "api_version": o["apiVersion"], "action": res.action,
                            "resource_version": (res.object.get("metadata") or {}).get("resourceVersion")})

    def text(rs: list[dict]) -> str:
        suffix = " (server dry run)" if dry_run else ""
        return "\n".join(f"{r['kind'].lower()}.networking.istio.io/{r['name']} {r['action']} in namespace "
                         f"{r['namespace']}{suffix}" for r in rs)

    emit({"objects": results, "dry_run": dry_run}, as_json, lambda d: text(d["objects"]))
