"""``kimpki cron render``: a crontab line, or a Kubernetes CronJob, that runs ``kimpki renew``."""

from __future__ import annotations

import click

from kimpki.cli.common import (check_output, cluster_options, emit, home_of, note, output_options,
                               passphrase_file_option)
from kimpki.istio import contract as c
from kimpki.ops import cron  # light: no store, no kubernetes
from kimpki.ops.cron import CA_SECRET as DEFAULT_CA_SECRET
from kimpki.ops.cron import DEFAULT_SCHEDULE, DEFAULT_TIME_ZONE

EPILOG = """\b
Examples:
  (crontab -l 2>/dev/null; kimpki cron render) | crontab -      # add it to your crontab
  kimpki cron render --schedule "45 2 * * 1-5" --log -          # weekdays; output to cron's mail
  kimpki cron render --manifests ./deploy                        # a folder the local gateway serves
  kimpki cron render --kubernetes --image registry.example.com/kimpki:0.1.0 | kubectl apply -f -
  kimpki cron render --kubernetes --image IMG --with-ca-secret -o json > renew.json   # holds the CA key!
\b
crontab: the line runs this kimpki by absolute path on this home (--home), sweeping the cluster
of --kubeconfig/--context (default: $KUBECONFIG or ~/.kube/config, written out in full since cron
has no environment) or the --manifests folders, and appends its log to HOME/renew.log (--log
FILE; --log - leaves the output to cron's mail). Renew locks itself: no flock wrapper needed.
\b
--kubernetes: a ServiceAccount, Role, RoleBinding and CronJob (batch/v1) in -n NAMESPACE. The
Role allows only what renew sends: secrets get/list/update, the Lease kimpki-renew get/update,
leases create (RBAC cannot limit create to one name), and the ConfigMap kimpki-revocations
get/update (the revoked list and CRL numbers, kept there by 'kimpki revoke -n NS'; loaded into
the pod's home, a CRL number reserved there before each CRL is signed). The pod imports the CAs from the
Secret kimpki-ca (--ca-secret-name) into a memory-backed home, then runs renew. Create that
Secret with the kubectl line printed on stderr, or add --with-ca-secret to print it with the
rest (it then contains the CA private key). --image is required: kimpki publishes no image; any
image with kimpki on its PATH works (it runs as UID 65532 with a read-only root filesystem).
\b
Schedules: five fields (minute hour day-of-month month day-of-week) of *, N, N-M, */S, N-M/S
and lists, month/day names, or @daily/@weekly/@monthly/@yearly/@hourly. Exit 2 when invalid.
"""


def _abs(path) -> str:
    """Absolute and normalised (no ``..``), symlinks kept: cron runs in another directory."""
    import os

    return os.path.abspath(os.path.expanduser(str(path)))


def _home(ctx):
    from pathlib import Path

    from kimpki.store.store import default_home

    return Path(_abs(home_of(ctx) or default_home()))


def _default_kubeconfig() -> tuple[list[str], dict[str, str]]:
    """What cron needs to find the cluster kimpki would use now: $KUBECONFIG (as an environment
    assignment when it lists several files, which kubectl merges), else ~/.kube/config."""
    import os
    from pathlib import Path

    env = os.environ.get("KUBECONFIG")
    if env:
        files = [_abs(p) for p in env.split(os.pathsep) if p]
        if len(files) == 1:
            return ["--kubeconfig", files[0]], {}
        if files:
            return [], {"KUBECONFIG": os.pathsep.join(files)}
    default = Path("~/.kube/config").expanduser()
    if default.is_file():
        return ["--kubeconfig", str(default.absolute())], {}
    return [], {}


@click.group("cron")
def group():
    """Run 'kimpki renew' on a schedule: crontab or Kubernetes CronJob."""


@group.command("render", epilog=EPILOG)
@click.option("--schedule", default=DEFAULT_SCHEDULE, show_default=True, metavar="CRON",
              help="When to run renew: five cron fields or a macro like @daily.")
@click.option("--kubernetes", is_flag=True,
              help="Print a CronJob, ServiceAccount, Role and RoleBinding instead of a crontab line.")
@click.option("-n", "--namespace", default=c.DEFAULT_NAMESPACE, show_default=True, metavar="NS",
              help="The gateway's namespace: whose Secrets renew sweeps; with --kubernetes also where the "
                   "objects and the Lease live.")
@click.option("--manifests", multiple=True, type=click.Path(file_okay=False), metavar="DIR",
              help="crontab: sweep this folder of manifests instead of a cluster (repeatable).")
@cluster_options
@click.option("--log", "log_file", metavar="FILE",
              help="crontab: append renew's log to FILE (default HOME/renew.log); '-' leaves it to cron's mail.")
@click.option("--log-format", type=click.Choice(["text", "json"]),
              help="renew's log lines. Default: text for crontab (cron mail), json for --kubernetes "
                   "(log collectors).")
@click.option("--renew-before", metavar="X", help="Passed to renew (e.g. 30d or 25%).")
@click.option("--jitter", metavar="X", help="Passed to renew (e.g. 2h or 10%).")
@click.option("--textfile", metavar="FILE.prom",
              help="crontab: renew writes its run's metrics there (node_exporter's textfile collector).")
@click.option("--pushgateway", metavar="URL", help="renew pushes its run's metrics to this Pushgateway.")
@click.option("--job", metavar="NAME", help="With --pushgateway: the job name (renew's default: kimpki-renew).")
@passphrase_file_option
@click.option("--image", metavar="IMAGE", help="--kubernetes: the container image with kimpki on its PATH (required).")
@click.option("--ca", "ca_names", multiple=True, metavar="CA",
              help="--kubernetes: a CA the job imports from the home (repeatable). Default: every CA not retired.")
@click.option("--ca-secret-name", default=DEFAULT_CA_SECRET, show_default=True, metavar="NAME",
              help="--kubernetes: the Secret the job reads the CA certificates and keys from.")
@click.option("--with-ca-secret", is_flag=True,
              help="--kubernetes: print that Secret too. It contains the CA private keys.")
@click.option("--time-zone", metavar="TZ", help=f"--kubernetes: the CronJob's timeZone (default {DEFAULT_TIME_ZONE}).")
@output_options("--kubernetes: print the objects as YAML documents (default) or one JSON List.")
@click.pass_context
def render(ctx, schedule, kubernetes, namespace, manifests, kubeconfig, context, log_file, log_format, renew_before,
           jitter, textfile, pushgateway, job, passphrase_file, image, ca_names, ca_secret_name, with_ca_secret, time_zone, output, as_json):
    """Print a crontab line (or, with --kubernetes, a CronJob and its RBAC) that runs 'kimpki renew'."""
    from kimpki.errors import UsageError

    schedule = cron.check_schedule(schedule, kubernetes=kubernetes)  # usage errors before anything else
    given = {k: v for k, v in dict(image=image, ca=ca_names, with_ca_secret=with_ca_secret, time_zone=time_zone,
                                   output=output).items() if v}
    if ca_secret_name != DEFAULT_CA_SECRET:
        given["ca_secret_name"] = ca_secret_name
    local = {k: v for k, v in dict(manifests=manifests, kubeconfig=kubeconfig, context=context,
                                   log=log_file, textfile=textfile).items() if v}
    if kubernetes and local:
        opt = next(iter(local)).replace("_", "-")
        hint = ("; a CronJob has no node_exporter beside it: use --pushgateway URL" if opt == "textfile"
                else "; the CronJob uses its own service account and home")
        raise UsageError(f"--{opt} is for the crontab line{hint}")
    if not kubernetes and given:
        opt = next(iter(given)).replace("_", "-")
        raise UsageError(f"--{opt} only applies with --kubernetes")
    check_output(output, as_json, "the objects")
    if manifests and (kubeconfig or context):
        raise UsageError("--kubeconfig/--context choose a cluster, but --manifests sweeps folders only; drop one")

    from kimpki.pki.renewal import Jitter, RenewBefore

    RenewBefore.parse(renew_before)  # refuse now what every scheduled run would refuse
    Jitter.parse(jitter)
    renew_args = ["--namespace", namespace] if not manifests else []
    if renew_before:
        renew_args += ["--renew-before", renew_before]
    if jitter:
        renew_args += ["--jitter", jitter]
    renew_args += _metrics_args(textfile, pushgateway, job)
    if kubernetes:
        _render_kubernetes(ctx, schedule, namespace, renew_args + ["--log-format", log_format or "json"], image,
                           ca_names, ca_secret_name, with_ca_secret, time_zone or DEFAULT_TIME_ZONE, passphrase_file,
                           output, as_json)
    else:
        _render_crontab(ctx, schedule, renew_args, manifests, kubeconfig, context, log_file, log_format or "text",
                        passphrase_file, as_json)


def _metrics_args(textfile: str | None, pushgateway: str | None, job: str | None) -> list[str]:
    """renew's metrics options, checked now rather than at every scheduled run."""
    from kimpki.errors import UsageError
    from kimpki.ops import metrics

    if job and not pushgateway:
        raise UsageError("--job names the Pushgateway job: give --pushgateway URL too")
    args = []
    if textfile:
        metrics.check_textfile_path(textfile)
        args += ["--textfile", _abs(textfile)]
    if pushgateway:
        metrics.check_pushgateway_url(pushgateway)
        args += ["--pushgateway", pushgateway] + (["--job", job] if job else [])
    return args


def _render_crontab(ctx, schedule, renew_args, manifests, kubeconfig, context, log_file, log_format,
                    passphrase_file, as_json):
    from pathlib import Path

    home = _home(ctx)
    args = list(renew_args)
    env: dict[str, str] = {}
    for d in manifests:
        args += ["--manifests", _abs(d)]
    if not manifests:
        if kubeconfig:
            args += ["--kubeconfig", _abs(kubeconfig)]
        else:
            found, env = _default_kubeconfig()
            args += found
            if not found and not env:
                note("kimpki: warning: no kubeconfig found ($KUBECONFIG, ~/.kube/config): the cron job will not "
                     "reach a cluster; give --kubeconfig FILE or --manifests DIR")
        if context:
            args += ["--context", context]
    if log_format != "text":
        args += ["--log-format", log_format]
    if passphrase_file:
        args += ["--passphrase-file", _abs(passphrase_file)]
    elif _encrypted_cas(home):
        note("kimpki: warning: a CA key in this home is encrypted and cron has no KIMPKI_CA_PASSPHRASE: "
             "add --passphrase-file FILE")
    log = None if log_file == "-" else Path(_abs(log_file)) if log_file else home / "renew.log"
    entry = cron.crontab_entry(schedule=schedule, home=home, renew_args=args, log=log)
    entry.env.update(env)
    emit(entry.to_dict(), as_json, lambda d: f"# kimpki renew, home {home}\n{entry.line}")


def _encrypted_cas(home) -> list[str]:
    """Names of the home's CAs whose keys are encrypted (an absent home has none; nothing is created)."""
    if not (home / "inventory.db").is_file():
        return []
    from kimpki.store import Store

    store = Store.open(home)
    try:
        return [ca.name for ca in store.list_cas() if ca.encrypted and ca.state != "retired"]
    finally:
        store.close()


def _render_kubernetes(ctx, schedule, namespace, renew_args, image, ca_names, ca_secret_name, with_ca_secret,
                       time_zone, passphrase_file, output, as_json):
    from kimpki.cli.common import read_passphrase_file
    from kimpki.cli.common import render_objects
    from kimpki.errors import UsageError
    from kimpki.store import Store

    if not image:
        raise UsageError("--kubernetes needs --image IMAGE: kimpki publishes no container image; give one with "
                         "kimpki on its PATH (e.g. built with 'pip install kimpki')")
    home = _home(ctx)
    if not (home / "inventory.db").is_file():
        raise UsageError(f"no kimpki home at {home}: the CronJob imports its CAs from it (see --home, kimpki ca init)")
    store = Store.open(home)
    try:
        cas = cron.cas_from_store(store, ca_names)
    finally:
        store.close()
    settings = cron.CronJobSettings(schedule=schedule, namespace=namespace, image=cron.check_image(image), cas=cas,
                                    renew_args=renew_args, time_zone=cron.check_time_zone(time_zone),
                                    ca_secret=ca_secret_name)
    objects = cron.kubernetes_objects(settings)
    create_secret = None
    if with_ca_secret:
        passphrase = read_passphrase_file(passphrase_file) if any(ca.encrypted for ca in cas) else None
        objects.insert(-1, cron.ca_secret(settings, passphrase))  # before the CronJob that mounts it
    else:
        create_secret = cron.ca_secret_command(settings, _abs(passphrase_file) if passphrase_file else None)
        note(f"kimpki: note: the CronJob imports CA {', '.join(ca.name for ca in cas)} from Secret "
             f"{namespace}/{ca_secret_name}; create it first (it holds the CA private key): {create_secret}")
    if with_ca_secret:
        from kimpki.cli.common import stdout_will_hold_keys

        stdout_will_hold_keys()  # the CA Secret holds the CA private keys
    if as_json:
        emit({"namespace": namespace, "schedule": objects[-1]["spec"]["schedule"], "time_zone": time_zone,
              "image": settings.image, "cas": [ca.name for ca in cas], "ca_secret": ca_secret_name,
              "ca_secret_included": with_ca_secret, "create_ca_secret": create_secret, "objects": objects}, True)
        return
    click.echo(render_objects(objects, output or "yaml"))
