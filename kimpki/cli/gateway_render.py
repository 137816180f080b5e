"""``kimpki gateway render``: a Gateway and a VirtualService for hosts and their credentials."""

from __future__ import annotations

import click

from kimpki.cli.common import check_output, emit, note, output_options
from kimpki.errors import UsageError
from kimpki.istio import contract as c
from kimpki.istio.tlsparams import PROTOCOL_VERSIONS as TLS_VERSIONS

EPILOG = """\b
The four Gateways of the manual steps:
  # file-mounted SIMPLE (istio-ingressgateway-certs at /etc/istio/ingressgateway-certs)
  kimpki gateway render --host kim.example.com --file-mounted --mode SIMPLE
  # file-mounted MUTUAL (CA file example.com.crt from istio-ingressgateway-ca-certs)
  kimpki gateway render --host kim.example.com --file-mounted --mode MUTUAL --ca-file-name example.com.crt
  # ... checking client certificates against the CRLs kimpki writes beside it (example.com.crl)
  kimpki gateway render --host kim.example.com --file-mounted --mode MUTUAL --ca-file-name example.com.crt --crl
  # SDS SIMPLE
  kimpki gateway render --host kim.example.com --credential kim-credential --mode SIMPLE
  # two SDS servers, the second MUTUAL (the n-th --host goes with the n-th --credential and --mode)
  kimpki gateway render --name kim-gateway \\
      --host kim.example.com --credential kim-credential --mode SIMPLE \\
      --host kim-new.example.com --credential kim-new-credential --mode MUTUAL
\b
More:
  kimpki gateway render --host bookinfo.com --file-mounted \\
      --mount-path /etc/istio/ingressgateway-bookinfo-certs --to-service productpage:9080
  kimpki gateway render --host 'kim.example.com,www.kim.example.com' --credential kim-credential -o json
  # an ECDSA and an RSA certificate on one server (credentialNames; 'secret create --dual' writes both)
  kimpki gateway render --host kim.example.com --credential kim-credential,kim-credential-rsa
  # MUTUAL with the client CA from a CA-only Secret (caCertCredentialName; 'secret create --ca-only')
  kimpki gateway render --host kim.example.com --credential kim-credential --mode MUTUAL \\
      --ca-credential kim-clients-cacert
  kimpki gateway render ... | kimpki gateway apply -f -
\b
Client identities, protocol versions and ciphers (every server gets them; SANs go to the
MUTUAL and OPTIONAL_MUTUAL ones):
  kimpki gateway render --host kim.example.com --credential kim-credential --mode OPTIONAL_MUTUAL \\
      --subject-alt-name kim-client.example.com --min-protocol-version TLSV1_3

\b
One HTTPS server per credential on port 443, selector istio=ingressgateway. A --host value may
list several hosts separated by commas (one server). Port names are 'https' for one server, else
https-<first label of the host>. The VirtualService sends all hosts to --to-service; a short
service name is qualified with --service-namespace when the objects live in another namespace.
"""


def _split_hosts(values: tuple[str, ...]) -> list[tuple[str, ...]]:
    out = []
    for v in values:
        hosts = tuple(h.strip() for h in v.split(",") if h.strip())
        if not hosts:
            raise UsageError("--host must not be empty")
        out.append(hosts)
    return out


def _per_server(values: tuple[str, ...], n: int, option: str, default: str | None = None) -> list[str | None]:
    if not values:
        return [default] * n
    if len(values) == 1:
        return [values[0]] * n
    if len(values) != n:
        raise UsageError(f"give {option} once, or once per server ({n}), not {len(values)} times")
    return list(values)


def with_tls_params(servers: list, subject_alt_names: tuple[str, ...] = (), min_version: str | None = None,
                    max_version: str | None = None, cipher_suites: tuple[str, ...] = (),
                    ecdh_curves: tuple[str, ...] = ()) -> list:
    """``servers`` with the tls parameters the options give: versions, cipher suites and curves on
    every server, subjectAltNames on those that check client certificates (a UsageError when none does)."""
    from dataclasses import replace

    from kimpki.istio.tlsparams import MUTUAL_MODES

    sans = tuple(dict.fromkeys(n.strip() for v in subject_alt_names for n in v.split(",") if n.strip()))
    if subject_alt_names and not sans:
        raise UsageError("--subject-alt-name must not be empty")
    if sans and not any(s.mode in MUTUAL_MODES for s in servers):
        raise UsageError("--subject-alt-name pins the client certificates a MUTUAL or OPTIONAL_MUTUAL server "
                         "accepts: give --mode MUTUAL or --mode OPTIONAL_MUTUAL (a SIMPLE server checks no client)")
    return [replace(s, subject_alt_names=sans if s.mode in MUTUAL_MODES else (),
                    min_protocol_version=min_version and min_version.upper(),
                    max_protocol_version=max_version and max_version.upper(),
                    cipher_suites=tuple(dict.fromkeys(cipher_suites)), ecdh_curves=tuple(dict.fromkeys(ecdh_curves)))
            for s in servers]


def build(hosts: tuple[str, ...], credentials: tuple[str, ...], file_mounted: bool, mount_paths: tuple[str, ...],
          modes: tuple[str, ...], ca_file_name: str | None, crl: bool = False,
          ca_credentials: tuple[str, ...] = ()) -> list:
    """The ServerSpecs the options describe (pairing the n-th --host, --credential, --mode, --mount-path)."""
    from kimpki.istio.gateway import ServerSpec

    if bool(credentials) == bool(file_mounted):
        raise UsageError("choose where certificates come from: --credential SECRET (SDS) or --file-mounted")
    if mount_paths and not file_mounted:
        raise UsageError("--mount-path is for --file-mounted servers")
    if ca_file_name and not file_mounted:
        raise UsageError("--ca-file-name is for --file-mounted MUTUAL and OPTIONAL_MUTUAL servers (SDS reads "
                         "the CA from the Secret)")
    if crl and not file_mounted:
        raise UsageError("--crl is for --file-mounted MUTUAL and OPTIONAL_MUTUAL servers (an SDS credential "
                         "carries its CRLs in the Secret, and Istio refuses caCrl with credentialName)")
    groups = _split_hosts(hosts)
    if credentials:
        if len(credentials) == 1:
            groups = [tuple(dict.fromkeys(h for g in groups for h in g))]
        elif len(credentials) != len(groups):
            raise UsageError(f"give one --host per --credential ({len(credentials)} credentials, "
                             f"{len(groups)} --host values), or a single --credential for all hosts")
    elif len(mount_paths) > 1:
        if len(mount_paths) != len(groups):
            raise UsageError("give --mount-path once, or once per --host")
    else:
        groups = [tuple(dict.fromkeys(h for g in groups for h in g))]
    n = len(groups)
    mode_list = [m.upper() for m in _per_server(modes, n, "--mode", "SIMPLE")]
    if ca_credentials and not credentials:
        raise UsageError("--ca-credential is for SDS servers (--credential); file-mounted ones read --ca-file-name")
    if credentials:
        ca_list = _per_server(ca_credentials, n, "--ca-credential")
        if ca_credentials and len(ca_credentials) == 1 and n > 1:
            # one CA credential for "all servers" would include SIMPLE ones: only the non-SIMPLE take it
            ca_list = [ca if m != "SIMPLE" else None for ca, m in zip(ca_list, mode_list)]
        return [ServerSpec.sds(g, cred, m, ca) for g, cred, m, ca in zip(groups, credentials, mode_list, ca_list)]
    paths = _per_server(mount_paths, n, "--mount-path", c.FILE_MOUNTED_CERTS_PATH)
    return [ServerSpec.file_mounted(g, m, p, ca_file_name=ca_file_name, crl=crl)
            for g, m, p in zip(groups, mode_list, paths)]


# The server's further tls fields in the JSON summary, each under the name 'secret create' uses
# for the same thing (credential_names, ca_cert_credential_name) or Istio's field in snake_case.
_TLS_SUMMARY = (("credentialNames", "credential_names"), ("caCertCredentialName", "ca_cert_credential_name"),
                ("subjectAltNames", "subject_alt_names"), ("minProtocolVersion", "min_protocol_version"),
                ("maxProtocolVersion", "max_protocol_version"), ("cipherSuites", "cipher_suites"),
                ("ecdhCurves", "ecdh_curves"), ("caCrl", "ca_crl"))


def _server_json(sv: dict) -> dict:
    tls = sv["tls"]
    out = {"hosts": sv["hosts"], "port": sv["port"]["name"], "mode": tls["mode"],
           "credential": tls.get("credentialName")}
    # The further fields only when used, so the keys older scripts read stay as they were.
    out.update({key: tls[field] for field, key in _TLS_SUMMARY if tls.get(field)})
    return out


@click.command("render", epilog=EPILOG)
@click.option("--host", "hosts", multiple=True, required=True, metavar="HOST[,HOST]",
              help="Host(s) of one server. Repeat for more servers.")
@click.option("--credential", "credentials", multiple=True, metavar="SECRET",
              help="SDS: the credential Secret's name (tls.credentialName); two names joined by a comma "
                   "(an ECDSA and an RSA credential) become tls.credentialNames. Repeat: one per --host.")
@click.option("--ca-credential", "ca_credentials", multiple=True, metavar="NAME",
              help="MUTUAL (Istio >= 1.28): tls.caCertCredentialName, the CA from its own Secret (a name ending "
                   "in -cacert, see 'secret create --ca-only') or ConfigMap (configmap://NAMESPACE/NAME). "
                   "Once, or once per server.")
@click.option("--file-mounted", is_flag=True, help="Legacy: read the certificate from files mounted into the gateway.")
@click.option("--mount-path", "mount_paths", multiple=True, metavar="PATH",
              help=f"With --file-mounted: where the Secret is mounted (default {c.FILE_MOUNTED_CERTS_PATH}).")
@click.option("--mode", "modes", multiple=True,
              type=click.Choice(["SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL"], case_sensitive=False),
              help="TLS mode; once for all servers or once per server. Default SIMPLE. OPTIONAL_MUTUAL checks a "
                   "client certificate when one is presented; it needs a CA credential like MUTUAL "
                   "(secret create --mutual).")
@click.option("--ca-file-name", metavar="FILE",
              help=f"File-mounted MUTUAL/OPTIONAL_MUTUAL: the CA file in {c.FILE_MOUNTED_CA_PATH}, "
                   f"e.g. example.com.crt.")
@click.option("--subject-alt-name", "subject_alt_names", multiple=True, metavar="SAN[,SAN]",
              help="tls.subjectAltNames: accept only client certificates with one of these SANs (DNS, URI, "
                   "email or IP, matched exactly). Repeat for more. MUTUAL and OPTIONAL_MUTUAL servers only.")
@click.option("--min-protocol-version", type=click.Choice(list(TLS_VERSIONS), case_sensitive=False),
              help="tls.minProtocolVersion (Istio's default: TLSV1_2).")
@click.option("--max-protocol-version", type=click.Choice(list(TLS_VERSIONS), case_sensitive=False),
              help="tls.maxProtocolVersion (default: TLSV1_3).")
@click.option("--cipher-suite", "cipher_suites", multiple=True, metavar="NAME",
              help="tls.cipherSuites (TLS 1.2 and below), e.g. ECDHE-ECDSA-AES256-GCM-SHA384. Repeat for more; "
                   "names Istio does not know are refused.")
@click.option("--ecdh-curve", "ecdh_curves", multiple=True, metavar="NAME",
              help="tls.ecdhCurves, e.g. X25519 or P-256. Repeat for more.")
@click.option("--crl", is_flag=True,
              help="File-mounted MUTUAL/OPTIONAL_MUTUAL: also render caCrl, the CRL file kimpki writes beside the "
                   "CA file (example.com.crt -> example.com.crl) once the client trust uses revocation "
                   "(Istio >= 1.22).")
@click.option("--to-service", default="kim-gateway-service:8080", show_default=True, metavar="SVC:PORT",
              help="Where the VirtualService routes the hosts.")
@click.option("--service-namespace", default="default", show_default=True,
              help="The namespace of a short --to-service name.")
@click.option("--name", help="Gateway name (default: <first label of the first host>-gateway, e.g. kim-gateway). "
                             "The VirtualService is NAME-service.")
@click.option("-n", "--namespace", default=c.DEFAULT_NAMESPACE, show_default=True,
              help="Namespace of the Gateway and VirtualService.")
@click.option("--api-version", type=click.Choice(["v1", "v1beta1", "v1alpha3"]), default="v1", show_default=True,
              help="networking.istio.io version to write (the manual steps used v1alpha3).")
@click.option("--no-virtual-service", is_flag=True, help="Print only the Gateway.")
@click.option("--validate/--no-validate", default=None,
              help="Check the output against Istio's CRD schema for its apiVersion (the default; "
                   "--validate also says so on stderr).")
@output_options("Print the Gateway and VirtualService in this format (default yaml).")
def command(hosts, credentials, ca_credentials, file_mounted, mount_paths, modes, ca_file_name, crl,
            subject_alt_names, min_protocol_version, max_protocol_version, cipher_suites, ecdh_curves, to_service,
            service_namespace, name, namespace, api_version, no_virtual_service, validate, output, as_json):
    """Print a Gateway (and a VirtualService routing its hosts) for kubectl or 'gateway apply'.

    Nothing is read from the store or the cluster: the output only names Secrets or file
    paths. The Gateway is checked by Istio's rules (one certificate source per server, a CA for
    file-based MUTUAL, unique port names) before it is printed.
    """
    from kimpki.cli.common import render_objects
    from kimpki.istio import gateway as g

    check_output(output, as_json, "the objects")
    servers = with_tls_params(build(hosts, credentials, file_mounted, mount_paths, modes, ca_file_name, crl,
                                    ca_credentials),
                              subject_alt_names, min_protocol_version, max_protocol_version, cipher_suites,
                              ecdh_curves)
    svc, port = g.parse_service(to_service)
    all_hosts = [h for s in servers for h in s.hosts]
    gw_name = name or g.default_gateway_name(all_hosts)
    gw = g.render_gateway(gw_name, servers, namespace=namespace, api_version=api_version)
    problems = g.validate_gateway(gw)
    if problems:
        raise UsageError(f"the Gateway would be invalid: {problems[0]}"
                         + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    objs = [gw]
    if not no_virtual_service:
        objs.append(g.render_virtual_service(f"{gw_name}-service", all_hosts, gw_name, namespace=namespace,
                                             service=svc, service_port=port, service_namespace=service_namespace,
                                             api_version=api_version))
    if validate is not False:
        from kimpki.istio import schema

        if not schema.available():
            note("kimpki: note: schema validation skipped: the jsonschema package is not installed "
                 "(pip install jsonschema)")
        else:
            for o in objs:
                errs = schema.validate(o)
                if errs:
                    raise UsageError(f"{o['kind']} {o['metadata']['name']} does not match Istio's "
                                     f"{o['apiVersion']} schema: {errs[0]}")
            if validate:
                note(f"kimpki: valid against Istio's {objs[0]['apiVersion']} schemas")
    if as_json:
        emit({"gateway": gw_name, "namespace": namespace, "api_version": gw["apiVersion"],
              "servers": [_server_json(sv) for sv in gw["spec"]["servers"]],
              "objects": objs}, True)
        return
    click.echo(render_objects(objs, output or "yaml"))
