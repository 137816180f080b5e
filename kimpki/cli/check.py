"""``kimpki check``: analyse gateway credentials in a cluster (or in manifest files)."""

from __future__ import annotations

import click

from kimpki.cli.common import MANIFESTS_HINT, cluster_options, emit, json_option, no_cluster_hint, note, now_utc, table
from kimpki.istio import contract as c

GATEWAY_VERSIONS = ("v1", "v1beta1", "v1alpha3")


def _list_gateways(cluster, namespace: str | None) -> list[dict]:
    """Gateways in ``namespace`` (None: all), in the newest networking.istio.io version served."""
    from kimpki.kube import NotServed

    for v in GATEWAY_VERSIONS:
        try:
            return list(cluster.list("Gateway", namespace, api_version=f"networking.istio.io/{v}"))
        except NotServed:
            continue
    raise NotServed(f"the Kubernetes API at {cluster.server} serves no Istio Gateways (networking.istio.io "
                    f"{', '.join(GATEWAY_VERSIONS)}): is Istio installed?")


def _from_cluster(kubeconfig, context, namespace, gateway_namespace, warn_days, now):
    from kimpki.kube import Cluster, Forbidden, KubeError
    from kimpki.ops import check

    notes = []
    with Cluster.connect(kubeconfig=kubeconfig, context=context) as cluster:
        try:
            gateway_objs = _list_gateways(cluster, gateway_namespace)
        except Forbidden as e:
            if gateway_namespace is not None:
                raise
            note(f"kimpki: cannot list Gateways in all namespaces ({e}); checking namespace {namespace} only")
            notes.append(f"Gateways listed in namespace {namespace} only (listing all namespaces is forbidden)")
            gateway_objs = _list_gateways(cluster, namespace)
        gateways = [check.gateway_from_api(g) for g in gateway_objs]
        mounts = check.DEFAULT_MOUNTS
        if check.uses_file_mounts(gateways):
            try:
                mounts = check.mounts_from_deployment(cluster.get("Deployment", namespace, c.GATEWAY_DEPLOYMENT))
            except KubeError as e:
                notes.append(f"Deployment {namespace}/{c.GATEWAY_DEPLOYMENT} not read ({e}); "
                             "assuming the legacy certificate mounts only")
        try:
            secret_objs = list(cluster.list("Secret", namespace)) if gateways else []
        except Forbidden:
            # A Role may allow get on named Secrets without list: fetch the referenced ones.
            secret_objs = [s for n in check.referenced_secret_names(gateways, mounts)
                           if (s := cluster.get("Secret", namespace, n)) is not None]
        secrets = [check.secret_from_api(s) for s in secret_objs]
        config_maps = [check.config_map_from_api(m) for ns, n in check.referenced_config_maps(gateways)
                       if (m := cluster.get("ConfigMap", ns, n)) is not None]
    return check.analyse(gateways, secrets, namespace=namespace, mounts=mounts, now=now, warn_days=warn_days,
                         notes=notes, config_maps=config_maps)


def _from_files(files, namespace, namespace_given, warn_days, now):
    from kimpki.localgw.manifests import load_manifests
    from kimpki.ops import check

    m = load_manifests(files, validate=True)  # what the API server would refuse is a usage error
    ns = namespace if namespace_given or not m.namespace else m.namespace
    return check.analyse(m.gateways, m.secrets, namespace=ns, mounts=m.mounts, now=now, warn_days=warn_days,
                         notes=m.warnings, config_maps=m.config_maps)


def _text(report) -> str:
    from kimpki.ops import check

    lines = []
    if report.findings:
        lines.append(table(check.rows(report), check.HEADERS))
        lines.append("")
    lines += [f"note: {n}" for n in report.notes]
    lines.append(check.summary_line(report))
    return "\n".join(lines)


@click.command("check")
@click.option("-n", "--namespace", default=c.DEFAULT_NAMESPACE, show_default=True,
              help="Namespace of the gateway pods: where Istio reads credential Secrets.")
@click.option("--gateway-namespace", metavar="NS",
              help="Only Gateways in NS. Default: Gateways in all namespaces.")
@cluster_options
@click.option("-f", "--filename", "--manifests", "files", multiple=True, metavar="PATH",
              help="Analyse manifest files or folders (Gateways, Secrets, the gateway Deployment) offline "
                   "instead of a cluster. Repeatable; --manifests DIR is the same.")
@click.option("--warn-days", type=click.IntRange(min=0), default=30, show_default=True,
              help="Warn when a certificate has fewer days left.")
@json_option
@click.pass_context
def command(ctx, namespace, gateway_namespace, kubeconfig, context, files, warn_days, as_json):
    """Check the credentials of every TLS server of the Istio Gateways.

    \b
    What `istioctl analyze` checks for gateways:
      IST0101  the credential Secret does not exist
      IST0161  the credential is invalid (keys, PEM) or expired
    and what it does not:
      KIM0001  the private key does not match the certificate
      KIM0002  a server host is not covered by the certificate's DNS names
      KIM0003  a MUTUAL server has no CA (Secret X-cacert, else key cacert or ca.crt in X)
      KIM0004  the certificate expires within --warn-days (a warning)
      KIM0005  the server's tls settings name no credential
      KIM0006  the certificate breaks RFC 5280, e.g. serial 0 (a warning)
    and, for a MUTUAL credential carrying CRLs (Envoy then needs one for every CA of a chain):
      KIM0007  no readable CRL, or none of a CA of the chain: every client refused
      KIM0008  CRLs for some CAs of the chain, none for others
      KIM0009  a CRL past its nextUpdate: every client of that CA refused
      KIM0010  a CRL in the last third of its validity, not re-signed (a warning)
    and, for a file-mounted MUTUAL server:
      KIM0011  a file-mounted server's caCrl names a file its Secret lacks
      KIM0012  the CRL file is beside the CA file, but the server has no caCrl (a warning)
    and, for a tls-format credential carrying an OCSP staple (tls.ocsp-staple):
      KIM0013  not a successful OCSP response, or for another serial: Envoy rejects the secret
      KIM0014  the staple is past its nextUpdate: served without a staple (a warning)
    and, in a server's tls settings (what Istio or Envoy then do silently):
      KIM0015  subjectAltNames on a SIMPLE server (with credentialName Envoy rejects the listener)
      KIM0016  an OPTIONAL_MUTUAL server has no CA
      KIM0017  minProtocolVersion above maxProtocolVersion: every handshake fails
      KIM0018  OPTIONAL_MUTUAL with subjectAltNames acts as MUTUAL (a warning)
      KIM0019  more than one certificate source (credentialName(s), tlsCertificates, files)
      KIM0020  two certificates of one key algorithm in credentialNames
      KIM0021  caCertCredentialName names no Secret or ConfigMap (or a Secret not named *-cacert)
      KIM0022  an ecdhCurves name Envoy does not know: the port's listener is rejected (a warning)
    \b
    Credentials are read from --namespace (the gateway pods' namespace), as Istio does; file-
    mounted servers (serverCertificate) are mapped to Secrets through the gateway Deployment's
    volumes. Exit 0 when nothing is wrong (warnings allowed), 1 otherwise.

    \b
    Examples:
      kimpki check
      kimpki check --kubeconfig ~/.kube/prod --context prod --json
      kimpki check -f gateway-sds.yaml -f secrets/
    """
    now = now_utc()
    if files:
        if kubeconfig or context:
            raise click.UsageError("-f/--manifests analyses files offline; it does not go with --kubeconfig/--context")
        given = ctx.get_parameter_source("namespace") is not click.core.ParameterSource.DEFAULT
        report = _from_files(list(files), namespace, given, warn_days, now)
    else:
        with no_cluster_hint(MANIFESTS_HINT.replace("work on", "check")):
            report = _from_cluster(kubeconfig, context, namespace, gateway_namespace, warn_days, now)
    emit(report.to_dict(), as_json, lambda _d: _text(report))
    return 0 if report.ok else 1
