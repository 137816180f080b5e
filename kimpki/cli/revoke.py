"""``kimpki revoke`` and ``kimpki crl``: shut one certificate out, publish each CA's CRL."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kimpki.cli.common import (MANIFESTS_HINT, cluster_options, emit, json_option, no_cluster_hint, note, now_utc,
                               open_store, passphrase_file_option, passphrase_source)
from kimpki.errors import UsageError

REASON_HELP = ("keyCompromise, superseded, affiliationChanged, cessationOfOperation, privilegeWithdrawn, "
               "cACompromise or unspecified (default).")

REVOKE_EPILOG = """\b
Examples:
  kimpki revoke kim-client.example.com --reason keyCompromise
  kimpki revoke --serial 4f3a9c... --ca example.com
  kimpki revoke kim-client.example.com --manifests ./deploy     # and republish the CRLs there
  kimpki revoke kim-client.example.com -n istio-system           # ... or in the cluster
\b
The revocation is recorded in the store (when, why, by which command) and the issuing
CA's CRL is re-signed with the next CRL number: 'kimpki crl CA' prints it. Every other CA
of its trust tree (root and CAs below) gets a CRL too when it has none or a stale one:
Envoy needs one for every CA of a chain. Revoking what is already revoked changes
nothing (exit 0). MUTUAL credentials kimpki writes carry these CRLs beside their CA
(Istio's 'crl'/'ca.crl' keys; file-mounted: <CA>.crl beside <CA>.crt in
istio-ingressgateway-ca-certs, the Gateway's caCrl). With --manifests DIR, or a cluster
(-n, --kubeconfig, --context), every MUTUAL credential whose client trust holds the CA gets
the new CRLs in place (only the CRL key changes, guarded by resourceVersion), and every
stapled credential serving the revoked certificate gets a new staple saying revoked.
\b
Exit codes: 0 revoked (or already), 1 unknown certificate or CA key not usable, 2 usage.
"""

CRL_EPILOG = """\b
Examples:
  kimpki crl example.com                      # PEM on stdout
  kimpki crl example.com --der --out example.com.crl
  kimpki crl example.com --next-update 3d     # this CA's CRLs are valid 3 days from now on
\b
One X.509 v2 CRL per CA, signed by it: CRL Number (only ever grows), authority key
identifier, thisUpdate and nextUpdate (7 days unless --next-update set another validity),
a reason code per entry; certificates past their notAfter leave the list. The stored CRL
is printed while it is fresh; inside the last third of its validity (or with --refresh) a
new one is signed (the CA key's passphrase: --passphrase-file or KIMPKI_CA_PASSPHRASE).
"""


@click.command("revoke", epilog=REVOKE_EPILOG)
@click.argument("name", required=False)
@click.option("--serial", metavar="HEX", help="Revoke the certificate with this serial (any version, or an "
                                              "intermediate CA) instead of NAME's current one.")
@click.option("--ca", "ca_name", metavar="CA", help="The issuing CA (checked against NAME; narrows --serial).")
@click.option("--reason", default="unspecified", show_default=True, metavar="REASON", help=REASON_HELP)
@click.option("--manifests", type=click.Path(file_okay=False), metavar="DIR",
              help="Republish the CRLs in the MUTUAL credentials of this folder of manifests.")
@click.option("-n", "--namespace", metavar="NS",
              help="Republish the CRLs in the cluster's MUTUAL credentials of this namespace only.")
@passphrase_file_option
@cluster_options
@json_option
@click.pass_context
def revoke(ctx, name, serial, ca_name, reason, manifests, namespace, passphrase_file, kubeconfig, context, as_json):
    """Revoke a certificate kimpki issued: NAME's current version, or --serial HEX."""
    from contextlib import nullcontext

    from kimpki.ops.revoking import revoke as do_revoke

    if manifests is not None and (kubeconfig or context):
        raise UsageError("--manifests republishes in a folder; --kubeconfig/--context choose a cluster: "
                         "give one or the other")
    store = open_store(ctx)
    command = "kimpki revoke " + " ".join(a for a in sys.argv[2:] if "passphrase" not in a)
    in_cluster = manifests is None and bool(namespace or kubeconfig or context)
    if manifests is not None or in_cluster:
        from kimpki.ops.places import open_place

        hinted, opened = no_cluster_hint(MANIFESTS_HINT), open_place(manifests=manifests, kubeconfig=kubeconfig,
                                                                      context=context)
    else:
        hinted, opened = nullcontext(), nullcontext()
    with hinted, opened as place:
        res = do_revoke(store, name=name, serial=serial, ca=ca_name, reason=reason, now=now_utc(),
                        passphrase=passphrase_source(passphrase_file), command=command.strip(), place=place,
                        namespace=namespace)
    if in_cluster and any(r.get("file_mounted") for r in res.republished or ()):
        from kimpki.istio import contract as c

        # Istio hands Envoy the caCrl path, and Envoy reads that file only when it builds the listener.
        note(f"kimpki: note: a file-mounted gateway reads its caCrl file when its listener is built; restart "
             f"the gateway pods to refuse the revoked certificate: kubectl -n {namespace or c.DEFAULT_NAMESPACE} "
             f"rollout restart deployment {c.GATEWAY_DEPLOYMENT}")
    emit(res.to_dict(), as_json, _revoked_text)


def _revoked_text(d: dict) -> str:
    who = f"{d['name']} (serial {d['serial']}, CA {d['ca']})" if d["name"] else f"serial {d['serial']} (CA {d['ca']})"
    if d["already_revoked"]:
        lines = [f"{who} was already revoked on {d['revoked_at']} ({d['reason']})"]
    else:
        lines = [f"revoked {who}: {d['reason']}"]
        for crl in [d["crl"], *d["tree_crls"]]:
            lines.append(f"CRL {crl['crl_number']} of CA {crl['ca']} signed: {crl['revoked_entries']} entries, next "
                         f"update {crl['next_update']} ({crl['path']})")
    if d["republished"] is not None:
        for r in d["republished"]:
            lines.append(f"  secret/{r['secret']} ({r['namespace']}): CRLs {r['action']}")
        if not d["republished"]:
            lines.append(f"  no MUTUAL credential in {d['place']} trusts CA {d['ca']}")
        for r in d["restapled"] or []:
            lines.append(f"  secret/{r['secret']} ({r['namespace']}): OCSP staple {r['action']} ({r['status']}, "
                         f"next update {r['next_update']})")
    elif d["already_revoked"]:
        lines[0] += "; nothing changed"
    if d.get("pair"):
        p = d["pair"]
        verb = "was already revoked" if p["already_revoked"] else "revoked too"
        lines.append(f"{p['name']} (serial {p['serial']}), the other half of its RSA+ECDSA pair: {verb}")
    return "\n".join(lines)


@click.command("crl", epilog=CRL_EPILOG)
@click.argument("ca_name", metavar="CA")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), help="Write the CRL to FILE instead of stdout.")
@click.option("--der", is_flag=True, help="DER instead of PEM.")
@click.option("--refresh", is_flag=True, help="Sign a new CRL even if the stored one is still fresh.")
@click.option("--next-update", metavar="DURATION", help="This CA's CRL validity from now on (e.g. 7d, 36h); "
                                                         "signs a new CRL.")
@passphrase_file_option
@json_option
@click.pass_context
def crl(ctx, ca_name, out_file, der, refresh, next_update, passphrase_file, as_json):
    """Print CA's current certificate revocation list (signing a new one when due)."""
    from kimpki.ops import revoking
    from kimpki.pki.durations import parse_duration

    store = open_store(ctx)
    if next_update:
        revoking.set_crl_validity(store, store.get_ca(ca_name).name, parse_duration(next_update))
        refresh = True
    res = revoking.current_crl(store, ca_name, now=now_utc(), passphrase=passphrase_source(passphrase_file),
                               refresh=refresh)
    data = res.pem
    if der:
        from cryptography.hazmat.primitives.serialization import Encoding

        data = revoking.parse_crl(res.pem, res.path).public_bytes(Encoding.DER)
    if out_file:
        from kimpki.store.fs import PUBLIC_FILE, write_output

        write_output(out_file, data, PUBLIC_FILE)  # a link planted at FILE is replaced, not followed
        note(f"kimpki: CRL {res.number} of CA {res.ca} written to {out_file}")
    if as_json:
        emit({**res.to_dict(), "out_file": out_file}, True)
    elif not out_file:
        if der:
            if sys.stdout.isatty():
                raise UsageError("--der output is binary: give --out FILE or redirect stdout")
            sys.stdout.buffer.write(data)
        else:
            click.echo(data.decode(), nl=False)
