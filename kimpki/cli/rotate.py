"""``kimpki rotate NAME``: a new key and certificate for a credential Secret, updated in place."""

from __future__ import annotations

import click

from kimpki.cli.common import (MANIFESTS_HINT, cluster_options, days_option, emit, json_option, no_cluster_hint,
                               note, now_utc, open_store, passphrase_file_option, passphrase_source)
from kimpki.errors import UsageError
from kimpki.pki.keys import KEY_TYPES

EPILOG = """\b
The manual steps rotated by deleting the Secret and creating it again (a window with no credential):
  kubectl delete -n istio-system secret kim-credential
  kubectl create -n istio-system secret generic kim-credential --from-file=key=... --from-file=cert=...
kimpki updates it in place instead, so the gateway never goes without a certificate:
  kimpki rotate kim-credential
\b
More examples:
  kimpki rotate kim-new-credential --new-ca example-2026        # move to another CA
  kimpki rotate kim-credential --manifests ./deploy              # a folder 'gateway serve' reads
  kimpki rotate kim-credential --dry-run --json
\b
If the update fails (API error, timeout, interrupted), the old Secret is untouched and still
served, and the new certificate stays in the store as pending: run the same command again
to finish with it. Exit codes: 0 rotated, 1 failed (or unknown NAME), 2 usage error.
"""


def _text(d: dict) -> str:
    if d["action"] == "would rotate":
        return (f"secret/{d['secret']} would be rotated ({d['place']}): serial {d['old_serial']} "
                f"(valid until {d['old_not_after']}) would get a new key and certificate from CA {d['ca']}")
    how = " (finished with the certificate an earlier run left pending)" if d["action"] == "resumed" else ""
    lines = [f"secret/{d['secret']} rotated in namespace {d['namespace']} ({d['place']}){how}",
             f"  old: serial {d['old_serial']}, valid until {d['old_not_after']}",
             f"  new: serial {d['new_serial']}, valid until {d['new_not_after']}",
             f"  hosts: {', '.join(d['hosts'])}; CA {d['ca']}"]
    for s in d["secrets"]:
        lines.append(f"  secret/{s['name']}: {s['action']}")
    return "\n".join(lines)


@click.command("rotate", epilog=EPILOG)
@click.argument("name", metavar="NAME")
@click.option("-n", "--namespace", metavar="NS",
              help="The Secret's namespace (default istio-system; with --manifests: wherever NAME is).")
@click.option("--manifests", type=click.Path(file_okay=False), metavar="DIR",
              help="A folder of manifests standing in for the cluster ('gateway serve' reads it): the Secret "
                   "is rewritten there in place.")
@click.option("--new-ca", metavar="CA", help="Issue from (and, for MUTUAL, publish) this store CA instead.")
@days_option(None, "Validity of the new certificate in days. Default: the same lifetime as the old one.")
@click.option("--key-type", type=click.Choice(KEY_TYPES), help="Default: the old certificate's key type.")
@click.option("--dry-run", is_flag=True, help="Say what would be rotated; issue and write nothing.")
@click.option("--force", is_flag=True, help="Update the Secret even though kimpki's label is missing.")
@passphrase_file_option
@cluster_options
@json_option
@click.pass_context
def command(ctx, name, namespace, manifests, new_ca, days, key_type, dry_run, force, passphrase_file,
            kubeconfig, context, as_json):
    """Give credential Secret NAME a new key and certificate, updating it in place.

    The hosts, CA, key set (key/cert/cacert or tls.*) and SIMPLE/MUTUAL form come from the
    kimpki.io/* annotations kimpki wrote on the Secret ('kimpki secret create').
    """
    from kimpki.ops.places import open_place
    from kimpki.ops.rotation import rotate_with_pair
    from kimpki.pki.keys import parse_key_type

    if manifests is not None and (kubeconfig or context):
        raise UsageError("--manifests rotates a Secret in a folder; --kubeconfig/--context choose a cluster: "
                         "give one or the other")
    store = open_store(ctx)
    if manifests is None and namespace is None:
        from kimpki.istio.contract import DEFAULT_NAMESPACE
        namespace = DEFAULT_NAMESPACE
    with no_cluster_hint(MANIFESTS_HINT), open_place(manifests=manifests, kubeconfig=kubeconfig,
                                                      context=context) as place:
        results = rotate_with_pair(store, place, name, namespace, now=now_utc(),
                                   passphrase=passphrase_source(passphrase_file), new_ca=new_ca, force=force,
                                   dry_run=dry_run, days=days,
                                   key_type=parse_key_type(key_type) if key_type else None)
    for res in results:
        for w in res.warnings:
            note(f"kimpki: warning: {w}")
    out = results[0].to_dict()
    if len(results) > 1:  # half of an RSA+ECDSA pair: the other half was rotated with it
        out["pair"] = results[1].to_dict()
    emit(out, as_json, lambda d: _text(d) + ("\n" + _text(d["pair"]) if d.get("pair") else ""))
