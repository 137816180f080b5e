"""``kimpki gateway mount`` / ``unmount``: a Secret volume in the ingress gateway Deployment."""

from __future__ import annotations

import json

import click

from kimpki.cli.common import check_output, cluster_options, emit, no_cluster_hint, note, output_options, render_objects
from kimpki.cli.gateway import load_objects
from kimpki.errors import UsageError
from kimpki.istio import contract as c

MOUNT_EPILOG = """\b
The manual kubectl step for a second file-mounted host:
  kubectl -n istio-system patch --type=json deploy istio-ingressgateway -p '[{"op":"add",
    "path":"/spec/template/spec/containers/0/volumeMounts/0", ...}, {"op":"add", ...}]'
is:
  kimpki gateway mount --secret istio-ingressgateway-bookinfo-certs \\
      --mount-path /etc/istio/ingressgateway-bookinfo-certs
\b
More:
  kimpki gateway mount ... --dry-run            # print the JSON patch, change nothing
  kimpki gateway mount ... --local -f deploy.yaml -o yaml   # patch a manifest file offline

\b
Safe to repeat: when the Secret is already mounted there it says so and changes nothing. The
patch finds the container by name and carries 'test' operations on what it read, so a
concurrent change to the Deployment makes it fail whole (kimpki then re-reads and retries)
instead of being overwritten. Changing the pod template rolls the gateway pods.
"""

UNMOUNT_EPILOG = """\b
Examples:
  kimpki gateway unmount --secret istio-ingressgateway-bookinfo-certs
  kimpki gateway unmount --mount-path /etc/istio/ingressgateway-bookinfo-certs --dry-run
  kimpki gateway unmount --secret istio-ingressgateway-bookinfo-certs --local -f deploy.yaml

\b
Removes the volumeMount(s) from the container, and the volume when nothing else mounts it.
Safe to repeat: when nothing is mounted it says so and changes nothing.
"""

RETRIES = 3


def _target_options(f):
    f = output_options("Print the patched Deployment in this format (with --local: default yaml).")(f)
    f = click.option("-f", "--filename", "filename", metavar="FILE",
                     help="With --local: the Deployment manifest to patch.")(f)
    f = click.option("--local", is_flag=True, help="Patch the manifest given with -f and print it; no cluster.")(f)
    f = click.option("--dry-run", is_flag=True, help="Print the JSON patch operations; change nothing.")(f)
    f = click.option("--container", default=c.GATEWAY_CONTAINER, show_default=True,
                     help="The container that mounts the volume (found by name).")(f)
    f = click.option("-n", "--namespace", default=c.DEFAULT_NAMESPACE, show_default=True)(f)
    f = click.option("--deployment", default=c.GATEWAY_DEPLOYMENT, show_default=True,
                     help="The ingress gateway Deployment.")(f)
    return f


def _load_local(filename: str | None, deployment: str) -> dict:
    if not filename:
        raise UsageError("--local needs -f FILE (the Deployment manifest)")
    found = [o for _, o in load_objects([filename]) if o.get("kind") == "Deployment"]
    if not found:
        raise UsageError(f"{filename} holds no Deployment")
    if len(found) > 1:
        named = [o for o in found if (o.get("metadata") or {}).get("name") == deployment]
        if len(named) != 1:
            raise UsageError(f"{filename} holds {len(found)} Deployments; keep one, or name it with --deployment")
        found = named
    return found[0]


def _run(*, action: str, compute, deployment: str, namespace: str, container: str, dry_run: bool, local: bool,
         filename: str | None, output: str | None, kubeconfig: str | None, context: str | None,
         as_json: bool, describe: dict, nothing: str, done: str) -> None:
    from kimpki.istio.volumes import apply_json_patch

    check_output(output, as_json, "the Deployment")
    if filename and not local:
        raise UsageError("-f FILE goes with --local (to patch the cluster's Deployment, leave -f out)")
    summary = {"action": None, "deployment": deployment, "namespace": namespace, "container": container,
               **describe, "ops": [], "dry_run": dry_run, "local": local}

    if local:
        obj = _load_local(filename, deployment)
        ops = compute(obj)
        patched = apply_json_patch(obj, ops)
        summary.update(action=action if ops else "unchanged", ops=ops)
        note(f"kimpki: {done if ops else nothing}")
        if as_json:
            emit(summary, True)
        elif dry_run and not output:
            click.echo(json.dumps(ops, indent=2))
        else:
            click.echo(render_objects([patched], output or "yaml"))
        return

    from kimpki.kube import Cluster
    from kimpki.ops.deployment_patch import patch_deployment

    with no_cluster_hint("or patch a manifest file with --local -f FILE"), \
            Cluster.connect(kubeconfig=kubeconfig, context=context) as cluster:
        outcome = patch_deployment(
            cluster, namespace, deployment, compute, dry_run=dry_run, retries=RETRIES,
            on_retry=lambda e: note(f"kimpki: deployment/{deployment} changed while patching ({e}); retrying"))
    ops, patched = outcome.ops, outcome.object
    summary["ops"] = ops
    summary["action"] = {"unchanged": "unchanged", "patched": action, "would patch": f"would be {action}"}[outcome.action]
    summary["resource_version"] = (patched.get("metadata") or {}).get("resourceVersion")
    unchanged = summary["action"] == "unchanged"
    if unchanged and (as_json or output):
        note(f"kimpki: {nothing}")
    if as_json:
        emit(summary, True)
    elif output:
        click.echo(render_objects([patched], output))
    elif unchanged:
        click.echo(f"deployment.apps/{deployment} unchanged: {nothing}")
    elif dry_run:
        click.echo(json.dumps(ops, indent=2))
    else:
        click.echo(f"deployment.apps/{deployment} patched in namespace {namespace}: {done}")
        note("kimpki: the pod template changed, so the gateway pods roll; "
             f"watch with: kubectl -n {namespace} rollout status deployment/{deployment}")


@click.command("mount", epilog=MOUNT_EPILOG)
@click.option("--secret", "secret_name", required=True, metavar="SECRET", help="The Secret to mount.")
@click.option("--mount-path", required=True, metavar="PATH",
              help="Where the files appear in the container, e.g. /etc/istio/ingressgateway-bookinfo-certs.")
@click.option("--volume-name", metavar="NAME",
              help="Volume name (default: the Secret's name without 'istio-', as the manual steps named it).")
@_target_options
@cluster_options
def mount(secret_name, mount_path, volume_name, deployment, namespace, container, dry_run, local, filename, output,
          kubeconfig, context, as_json):
    """Mount Secret SECRET read-only at PATH in the ingress gateway's istio-proxy container."""
    from kimpki.istio.volumes import mount_ops, volume_name_for

    vname = volume_name or volume_name_for(secret_name)

    def compute(obj: dict) -> list[dict]:
        return mount_ops(obj, secret_name=secret_name, mount_path=mount_path, container=container,
                         volume_name=vname)

    _run(action="mounted", compute=compute, deployment=deployment, namespace=namespace, container=container,
         dry_run=dry_run, local=local, filename=filename, output=output, kubeconfig=kubeconfig, context=context,
         as_json=as_json, describe={"secret": secret_name, "mount_path": mount_path, "volume": vname},
         nothing=f"Secret {secret_name} at {mount_path}: already mounted; nothing to do",
         done=f"Secret {secret_name} mounted at {mount_path} (container {container}, volume {vname})")


@click.command("unmount", epilog=UNMOUNT_EPILOG)
@click.option("--secret", "secret_name", metavar="SECRET", help="The Secret whose mount(s) to remove.")
@click.option("--mount-path", metavar="PATH", help="The mount path to remove.")
@_target_options
@cluster_options
def unmount(secret_name, mount_path, deployment, namespace, container, dry_run, local, filename, output,
            kubeconfig, context, as_json):
    """Remove a Secret's volumeMount from the istio-proxy container (and its volume, if unused)."""
    from kimpki.istio.volumes import unmount_ops

    if not secret_name and not mount_path:
        raise UsageError("say what to unmount: --secret, --mount-path or both")

    def compute(obj: dict) -> list[dict]:
        return unmount_ops(obj, secret_name=secret_name, mount_path=mount_path, container=container)

    what = " ".join(x for x in (f"Secret {secret_name}" if secret_name else "",
                                f"at {mount_path}" if mount_path else "") if x)
    _run(action="unmounted", compute=compute, deployment=deployment, namespace=namespace, container=container,
         dry_run=dry_run, local=local, filename=filename, output=output, kubeconfig=kubeconfig, context=context,
         as_json=as_json, describe={"secret": secret_name, "mount_path": mount_path},
         nothing=f"{what}: not mounted; nothing to do", done=f"{what} unmounted from container {container}")
