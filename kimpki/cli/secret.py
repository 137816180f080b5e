"""``kimpki secret create``: a gateway credential Secret from a certificate in the store."""

from __future__ import annotations

import click

from kimpki.cli.common import (check_output, cluster_options, emit, no_cluster_hint, note, now_utc, open_store,
                               output_options, passphrase_file_option, passphrase_source, render_objects,
                               stdout_will_hold_keys)
from kimpki.errors import UsageError
from kimpki.istio import contract as c

EPILOG = """\b
The manual kubectl steps and kimpki's equivalents:
  kubectl create -n istio-system secret generic kim-credential \\
      --from-file=key=kim.example.com.key --from-file=cert=kim.example.com.crt
    kimpki secret create kim-credential --cert kim.example.com
  kubectl create -n istio-system secret generic kim-new-credential --from-file=key=... \\
      --from-file=cert=... --from-file=cacert=example.com.crt
    kimpki secret create kim-new-credential --cert kim-new.example.com --mutual
  kubectl create -n istio-system secret tls istio-ingressgateway-certs --key ... --cert ...
  kubectl create -n istio-system secret generic istio-ingressgateway-ca-certs --from-file=example.com.crt
    kimpki secret create --file-mounted --cert kim.example.com --mutual
\b
More examples:
  kimpki secret create kim-credential --cert kim.example.com --format tls --dry-run -o yaml
  kimpki secret create kim-credential --cert kim.example.com --mutual --ca-secret   # + kim-credential-cacert
  kimpki secret create istio-ingressgateway-bookinfo-certs --file-mounted --cert bookinfo.com
  kimpki secret create kim-credential --cert kim.example.com --ocsp-staple   # tls keys + tls.ocsp-staple
  kimpki secret create kim-credential --cert kim.example.com --dual   # + kim-credential-rsa (credentialNames)
  kimpki secret create kim-clients-cacert --ca-only --ca example.com  # caCertCredentialName, no key
  kimpki secret create kim-clients --ca-only --config-map             # configmap://istio-system/kim-clients

\b
An existing Secret is updated in place (never deleted and re-created, so the gateway keeps
serving); one kimpki did not create is refused unless --force. Certificates that are expired,
not yet valid, do not match their key or do not chain to the CA are refused before anything
is written.
"""


def _summary_text(d: dict) -> str:
    mode = "MUTUAL" if d["mode"] == "mutual" else "SIMPLE"
    how = "file-mounted" if d["delivery"] == "file-mounted" else "SDS"
    lines = []
    for s in d["secrets"]:
        verb = s["action"] + (" (dry run)" if d["dry_run"] else "")
        lines.append(f"secret/{s['name']} {verb} in namespace {d['namespace']}")
    lines.append(f"  certificate: {d['certificate']} (serial {d['serial']}, valid until {d['not_after']})")
    lines.append(f"  hosts:       {', '.join(d['hosts'])}")
    lines.append(f"  form:        {d['format']}, {mode}, {how}" + (f", CA {d['ca']}" if d["mode"] == "mutual" else ""))
    if d.get("ocsp_staple"):
        st = d["ocsp_staple"]
        lines.append(f"  OCSP staple: {st['status']}, next update {st['next_update']}")
    return "\n".join(lines)


def _staple_summary(secret: dict) -> dict | None:
    """What the staple in the credential Secret says (None: no staple)."""
    from kimpki.ops.stapling import secret_staple
    from kimpki.pki.revocation import read_ocsp_staple

    der = secret_staple(secret)
    info = read_ocsp_staple(der) if der else None
    return info.to_dict() if info is not None else None


@click.group("secret")
def group():
    """Credential Secrets for Istio ingress gateways."""


@group.command("create", epilog=EPILOG)
@click.argument("name", required=False)
@click.option("--cert", "cert_name", metavar="CERT",
              help="The certificate's name in the store (see 'kimpki list'), or a host it was issued for.")
@click.option("-n", "--namespace", default=c.DEFAULT_NAMESPACE, show_default=True,
              help="The gateway's namespace (where Istio looks for credentials).")
@click.option("--format", "fmt", type=click.Choice(["generic", "tls"]),
              help="Key set: generic (key/cert/cacert) or tls (tls.crt/tls.key/ca.crt). "
                   "Default: generic; tls with --file-mounted or --ocsp-staple.")
@click.option("--mutual", is_flag=True, help="Include the CA that client certificates are checked against (MUTUAL).")
@click.option("--ca-secret", is_flag=True, help="With --mutual: put the CA in a separate Secret NAME-cacert.")
@click.option("--ca", "ca_name", metavar="CA",
              help="With --mutual: the store CA to publish. Default: the root that issued the certificate.")
@click.option("--file-mounted", is_flag=True,
              help=f"Legacy file-mounted gateway: TLS form, NAME defaults to {c.FILE_MOUNTED_CERTS_SECRET}; "
                   f"with --mutual the CA goes to {c.FILE_MOUNTED_CA_SECRET} (and the CRLs beside it as "
                   f"<CA>.crl once its trust uses revocation: the Gateway's caCrl).")
@click.option("--ca-file-name", metavar="FILE",
              help="With --file-mounted --mutual: the CA's file name (default <CA name>.crt, e.g. example.com.crt).")
@click.option("--ocsp-staple", is_flag=True,
              help=f"Add an OCSP response for the certificate, signed by its CA (valid 4 days; 'kimpki renew' "
                   f"keeps it fresh), as {c.OCSP_STAPLE}: the gateway staples it. tls key set only.")
@click.option("--dual", is_flag=True,
              help="An RSA+ECDSA pair (Istio >= 1.27, tls.credentialNames): CERT as Secret NAME and its partner "
                   "certificate (CERT-rsa or CERT-ecdsa, 'kimpki issue --dual') as Secret NAME-rsa or NAME-ecdsa.")
@click.option("--ca-only", is_flag=True,
              help="Only the CA bundle of --ca (default: the default CA), no key: a Secret NAME ending in -cacert "
                   "for tls.caCertCredentialName (Istio >= 1.28).")
@click.option("--config-map", is_flag=True,
              help="With --ca-only: write a ConfigMap instead (caCertCredentialName configmap://NAMESPACE/NAME).")
@click.option("--dry-run", is_flag=True, help="Print the Secret(s) instead of writing them; no cluster needed.")
@click.option("--force", is_flag=True, help="Update an existing Secret that kimpki does not manage.")
@passphrase_file_option
@cluster_options
@output_options("Print the Secret(s) in this format (with --dry-run: what would be written; default yaml).")
@click.pass_context
def create(ctx, name, cert_name, namespace, fmt, mutual, ca_secret, ca_name, file_mounted, ca_file_name,
           ocsp_staple, dual, ca_only, config_map, dry_run, output, force, passphrase_file, kubeconfig, context,
           as_json):
    """Create or update the credential Secret NAME from certificate CERT in the store.

    The Secret holds the certificate chain (leaf and intermediates, never the root) and its
    key; with --mutual also the CA bundle. It is labelled app.kubernetes.io/managed-by=kimpki
    and annotated (kimpki.io/*) with the store name, hosts, CA, serial and expiry.
    """
    from dataclasses import replace

    from kimpki.istio.credential import CredentialSpec
    from kimpki.ops import credentials
    from kimpki.pki.parse import rfc3339

    check_output(output, as_json, "the Secrets")
    _check_names(name, namespace, "ConfigMap" if config_map else "Secret")
    if config_map and not ca_only:
        raise UsageError("--config-map writes a CA-only ConfigMap: add --ca-only")
    if ca_only:
        if cert_name or dual or mutual or ca_secret or file_mounted or ca_file_name:
            raise UsageError("--ca-only writes only a CA bundle: drop --cert, --dual, --mutual, --ca-secret and "
                             "--file-mounted")
        if not name:
            raise UsageError("give the NAME of the CA-only Secret (ending in -cacert) or ConfigMap")
        return _create_ca_only(ctx, name, namespace, fmt or "generic", ca_name, config_map, dry_run, output,
                               force, kubeconfig, context, as_json)
    if not cert_name:
        raise UsageError("give --cert CERT (the certificate in the store), or --ca-only for a CA bundle")
    if ca_name and not mutual:
        raise UsageError("--ca chooses the CA published for MUTUAL: add --mutual")
    spec = CredentialSpec(name=name, namespace=namespace,
                          format=fmt or ("tls" if file_mounted or ocsp_staple else "generic"), mutual=mutual,
                          ca_secret=ca_secret, file_mounted=file_mounted, ca_file_name=ca_file_name,
                          ocsp_staple=ocsp_staple)
    store = open_store(ctx)
    passphrase = passphrase_source(passphrase_file)

    def prepare(want: CredentialSpec, read: dict | None = None) -> list:
        """The credential's halves (one, or a --dual pair); ``read``: its Secrets as they are now."""
        if dual:
            return credentials.prepare_pair(store, cert_name, want, now=now_utc(), ca_name=ca_name,
                                            passphrase=passphrase, read=read)
        return [credentials.prepare(store, cert_name, want, now=now_utc(), ca_name=ca_name, passphrase=passphrase,
                                    current=(read or {}).get(want.secret_name))]

    if dry_run:
        halves = prepare(spec)
        results = [{"name": s["metadata"]["name"], "action": "would write", "object": s}
                   for half in halves for s in half.secrets]
    else:
        # The material is checked before connecting; an OCSP staple is signed once the Secrets
        # in place are read, so a staple that still serves is kept (a second run is "unchanged").
        halves = prepare(replace(spec, ocsp_staple=False) if ocsp_staple else spec)
        halves, results = _write(store, halves, force=force, kubeconfig=kubeconfig, context=context,
                                 restaple=(lambda read: prepare(spec, read)) if ocsp_staple else None)
    prepared = halves[0]
    rec = prepared.record

    if file_mounted:
        note("kimpki: note: older gateways read mounted certificate files only at start-up; if the new "
             f"certificate is not served, restart the gateway pods: kubectl -n {namespace} rollout restart "
             f"deployment {c.GATEWAY_DEPLOYMENT}")
        if spec.secret_name != c.FILE_MOUNTED_CERTS_SECRET:
            note(f"kimpki: note: mount it into the gateway with: kimpki gateway mount --secret {spec.secret_name} "
                 f"--mount-path /etc/istio/{spec.secret_name.removeprefix('istio-')}")

    if output or (dry_run and not as_json):
        stdout_will_hold_keys()  # the credential Secret holds the certificate's key
        click.echo(render_objects([r["object"] for r in results], output or "yaml"))
        return
    summary = {
        "namespace": namespace,
        "secrets": [{"name": r["name"], "action": r["action"],
                     "uid": (r["object"].get("metadata") or {}).get("uid"),
                     "resource_version": (r["object"].get("metadata") or {}).get("resourceVersion")}
                    for r in results],
        "certificate": rec.name,
        "serial": rec.serial,
        "hosts": rec.hosts,
        "not_after": rfc3339(rec.not_after),
        "ca": prepared.ca_name,
        "format": spec.format,
        "mode": spec.mode,
        "delivery": spec.delivery,
        "ocsp_staple": _staple_summary(prepared.credential.credential),
        "dry_run": dry_run,
    }
    if dual:
        summary["credential_names"] = [h.credential.spec.secret_name for h in halves]
        summary["pair"] = [{"secret": h.credential.spec.secret_name, "certificate": h.record.name,
                            "serial": h.record.serial, "key_type": h.record.key_type} for h in halves]
    emit(summary, as_json, _summary_text)


def _check_names(name: str | None, namespace: str, kind: str) -> None:
    """What the API server would refuse, refused before anything is read or written (a dry run
    and a folder of manifests included)."""
    if name and (problem := c.object_name_problem(name)):
        raise UsageError(f"{name!r} is not a valid {kind} name ({problem})")
    if problem := c.label_problem(namespace):
        raise UsageError(f"-n/--namespace {namespace!r} is not a valid namespace ({problem})")


def _create_ca_only(ctx, name, namespace, fmt, ca_name, config_map, dry_run, output, force, kubeconfig, context,
                    as_json):
    from kimpki.ops import credentials

    store = open_store(ctx)
    published, obj = credentials.prepare_ca_only(store, name, namespace=namespace, ca_name=ca_name, now=now_utc(),
                                                 format=fmt, config_map=config_map)
    kind = obj["kind"]
    if dry_run:
        action, written = "would write", obj
    else:
        from kimpki.ops.places import ClusterPlace

        with no_cluster_hint("or print it with --dry-run -o yaml"), \
                ClusterPlace.connect(kubeconfig=kubeconfig, context=context) as place:
            res = place.write(obj, force=force)  # a Secret or a ConfigMap, in place
            action, written = res.action, res.object
    if output or (dry_run and not as_json):
        click.echo(render_objects([written], output or "yaml"))
        return
    ref = f"configmap://{namespace}/{name}" if config_map else name
    emit({"namespace": namespace, "kind": kind, "name": name, "action": action, "ca": published,
          "ca_cert_credential_name": ref, "dry_run": dry_run}, as_json,
         lambda d: (f"{d['kind'].lower()}/{d['name']} {d['action']} in namespace {d['namespace']}: the CA bundle of "
                    f"{d['ca']}, no key\n  Gateway: tls.caCertCredentialName: {d['ca_cert_credential_name']}"))


def _write(store, halves: list, *, force: bool, kubeconfig: str | None, context: str | None,
           restaple=None) -> tuple[list, list[dict]]:
    """Write the credential's Secrets in place (the partner of a pair first: a Gateway naming
    both never waits for the second) and remember in the store where they went. ``restaple``:
    given the credential Secrets as they are now (by name), the credential prepared again with
    its OCSP staple (the current one kept while it serves). Returns the halves written and the
    results in credentialNames order."""
    from kimpki.ops.credentials import deployment_record, publish
    from kimpki.ops.places import ClusterPlace

    with no_cluster_hint("or print the Secrets with --dry-run -o yaml"), \
            ClusterPlace.connect(kubeconfig=kubeconfig, context=context) as place:
        read = {}
        if restaple is not None:
            for half in halves:
                spec = half.credential.spec
                current = place.get(spec.namespace, spec.secret_name)
                if current is not None:
                    read[spec.secret_name] = current
            halves = restaple(read)
        written = []
        for prepared in reversed(halves):
            results, warnings = publish(place, prepared, force=force, read=read)
            written.append(results)
            for w in warnings:
                note(f"kimpki: warning: {w}")
            with store.locked():
                for s in prepared.secrets:
                    store.record_deployment(prepared.record.id,
                                            deployment_record(s, context=context, kubeconfig=kubeconfig))
    return halves, [r for w in reversed(written) for r in w]
