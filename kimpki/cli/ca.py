"""``kimpki ca``: init, import, list, rotate, retire."""

from __future__ import annotations

from pathlib import Path

import click

from kimpki.cli.common import (MANIFESTS_HINT, cluster_options, days_option, emit, json_option, no_cluster_hint,
                               note, now_utc, open_store, passphrase_file_option, passphrase_source,
                               read_passphrase_file, table)
from kimpki.errors import OperationError
from kimpki.pki.keys import DEFAULT_KEY_TYPE, KEY_TYPES, parse_key_type

unencrypted_key_option = click.option(
    "--unencrypted-key", is_flag=True,
    help="Store the CA key in the clear although its parent's key (or the --key file) is encrypted.")
key_type_option = click.option("--key-type", type=click.Choice(KEY_TYPES), default=DEFAULT_KEY_TYPE.value,
                               show_default=True, help="Key algorithm and size.")


@click.group(name="ca")
def group():
    """Create, import, list and rotate certificate authorities.

    \b
    The manual openssl step for a root was:
      openssl req -x509 -sha256 -nodes -days 365 -newkey rsa:2048 \\
        -subj '/O=example Inc./CN=example.com' -keyout example.com.key -out example.com.crt
    kimpki's equivalent (v3, keyUsage, random serial, key 0600):
      kimpki ca init example.com --org "example Inc."
    Changing CA without breaking clients (an overlap instead of a hard cutover):
      kimpki ca rotate example.com    # then, once nothing needs the old CA:
      kimpki ca retire example.com
    """


def _state_text(d: dict) -> str:
    if d["state"] == "retired":
        return f"retired {d['retired_at'][:10]}"
    if d["state"] == "superseded":
        return f"superseded by {d['successor']}"
    return "active" + (f" (replaces {d['predecessor']})" if d["predecessor"] else "")


def _ca_text(d: dict) -> str:
    lines = [f"CA {d['name']} ({d['kind']}{', default' if d['default'] else ''})",
             f"  subject:   {d['subject']}",
             f"  serial:    {d['serial']}",
             f"  key:       {d['key_type']}{' (encrypted)' if d['encrypted'] else ''}",
             f"  valid:     {d['not_before']} .. {d['not_after']} ({d['days_left']} days left)",
             f"  cert:      {d['cert']}",
             f"  key file:  {d['key']}"]
    return "\n".join(lines)


@group.command("init")
@click.argument("name", required=False, default="kimpki-ca")
@click.option("--org", help="Subject organisation (O), e.g. \"example Inc.\".")
@click.option("--common-name", help="Subject common name (CN). Default: NAME.")
@key_type_option
@days_option(3650, "Validity in days.")
@click.option("--parent", metavar="ROOT", help="Make an intermediate CA (pathLen 0) signed by this CA.")
@passphrase_file_option
@click.option("--parent-passphrase-file", type=click.Path(dir_okay=False),
              help="Passphrase file for the --parent CA's key (else KIMPKI_CA_PASSPHRASE or a prompt).")
@unencrypted_key_option
@json_option
@click.pass_context
def init(ctx, name, org, common_name, key_type, days, parent, passphrase_file, parent_passphrase_file,
         unencrypted_key, as_json):
    """Create a self-signed root CA called NAME (default kimpki-ca), or an intermediate with --parent.

    The first CA becomes the default for 'kimpki issue'. With --passphrase-file (or
    KIMPKI_CA_PASSPHRASE) the CA key is encrypted at rest. Under a parent whose key is
    encrypted, a key without a passphrase needs --unencrypted-key.

    \b
    Examples:
      kimpki ca init example.com --org "example Inc."
      kimpki ca init example-issuing --parent example.com --days 1825
    """
    from kimpki.ops import authority

    store = open_store(ctx)
    now = now_utc()
    res = authority.init_ca(store, name, org=org, common_name=common_name, key_type=parse_key_type(key_type),
                            days=days, passphrase=read_passphrase_file(passphrase_file), parent=parent,
                            parent_passphrase=passphrase_source(parent_passphrase_file), now=now,
                            unencrypted_key=unencrypted_key)
    emit(res.to_dict(now), as_json, _ca_text)


@group.command("import")
@click.argument("name")
@click.option("--cert", "cert_file", required=True, type=click.Path(dir_okay=False, exists=True),
              help="The CA certificate (PEM or DER).")
@click.option("--key", "key_file", required=True, type=click.Path(dir_okay=False, exists=True),
              help="Its private key (PEM or DER).")
@click.option("--key-passphrase-file", type=click.Path(dir_okay=False),
              help="Passphrase file for an encrypted --key.")
@passphrase_file_option
@unencrypted_key_option
@json_option
@click.pass_context
def import_(ctx, name, cert_file, key_file, key_passphrase_file, passphrase_file, unencrypted_key, as_json):
    """Adopt an existing CA, such as a root made by hand with 'openssl req -x509'.

    Checks that the key matches the certificate and that the certificate may sign;
    warns (without failing) about a v1 root or a missing keyUsage. Importing a CA the
    store already has puts back its files if a damaged home lost them. The key is stored
    encrypted with --passphrase-file (or KIMPKI_CA_PASSPHRASE) when given; an encrypted
    --key stays encrypted with its own passphrase unless --unencrypted-key.

    \b
    Example:
      kimpki ca import example.com --cert example.com.crt --key example.com.key
    """
    from kimpki.ops import authority

    store = open_store(ctx)
    now = now_utc()
    key_pw = None
    if key_passphrase_file:
        key_pw = read_passphrase_file(key_passphrase_file)
    res = authority.import_ca(store, name, Path(cert_file), Path(key_file), key_passphrase=key_pw,
                              passphrase=read_passphrase_file(passphrase_file), now=now,
                              unencrypted_key=unencrypted_key)
    for w in res.warnings:
        note(f"kimpki: warning: {cert_file}: {w}")
    if res.restored:
        note(f"kimpki: CA {name} was already in the store; restored its missing files: {', '.join(res.restored)}")
    emit(res.to_dict(now), as_json, _ca_text)


@group.command("list")
@json_option
@click.pass_context
def list_(ctx, as_json):
    """List the CAs in the store (the default one is marked with *).

    STATE is active, "superseded by NEW" during a rotation's overlap ('kimpki ca rotate'),
    or retired ('kimpki ca retire': it can no longer issue).
    """
    from kimpki.ops import authority

    now = now_utc()
    rows = [r.to_dict(now) for r in authority.list_cas(open_store(ctx))]

    def text(rows):
        if not rows:
            return "no CAs yet: run 'kimpki ca init NAME'"
        return table([[("* " if r["default"] else "  ") + r["name"], r["kind"], r["key_type"],
                       r["not_after"][:10], r["days_left"], _state_text(r), r["subject"]] for r in rows],
                     ["  NAME", "KIND", "KEY", "NOT AFTER", "DAYS", "STATE", "SUBJECT"])

    emit(rows, as_json, text)


# ---------------------------------------------------------------------------------------------
# rotate and retire
# ---------------------------------------------------------------------------------------------

def place_options(f):
    """Where the credentials are: folders of manifests and/or a cluster (as 'kimpki rotate')."""
    f = cluster_options(f)
    f = click.option("--cluster", "use_cluster", is_flag=True,
                     help="Also the cluster when --manifests is given (without --manifests the cluster "
                          "is the only place).")(f)
    f = click.option("--manifests", multiple=True, type=click.Path(file_okay=False), metavar="DIR",
                     help="A folder of manifests standing in for the cluster ('gateway serve' reads it): "
                          "its Secrets (and CA-only ConfigMaps) are read and rewritten in place; "
                          "repeatable.")(f)
    f = click.option("-n", "--namespace", metavar="NS",
                     help="Only credentials in this namespace (cluster: default istio-system; "
                          "folders: every namespace).")(f)
    return f


ROTATE_EPILOG = """\b
What it does, in order (each step is reported; running it again skips what is done and
finishes an interrupted rotation):
  1. successor: a new CA (default NAME-g2 with CN "... G2"; same O, key type and lifetime);
     a root stays a root, an intermediate gets a new intermediate under the same parent.
     It becomes the default CA if NAME was; NAME's name constraints carry over.
  2. widen: every MUTUAL credential checking clients against NAME gets the CA bundle
     NAME + NEW, so client certificates from either CA are accepted; so does every
     CA-only Secret and ConfigMap of NAME ('secret create --ca-only [--config-map]').
  3. servers: every credential serving a certificate from NAME gets a new key and
     certificate from NEW, updated in place (as 'kimpki rotate --new-ca NEW').
  4. clients: every current client certificate from NAME in the store is re-issued from
     NEW (a revoked one is not: it is skipped, and does not keep NAME from retiring). The
     old files stay on disk and valid; the new paths are reported: hand them out.
\b
Clients that trust only the old root keep working too. A new root is also certified by
the old one (a cross certificate, RFC 4210's "newWithOld"), and while NAME is not retired
every certificate NEW signs is served with it: a client trusting only NAME verifies
leaf -> NEW (signed by NAME) -> NAME, one trusting NEW stops at NEW. So server
certificates move to NEW at once and clients move their trust at their own pace; the
ca.crt handed out with certificates issued during the overlap holds both roots. An
intermediate is replaced under the same root, so what clients trust does not change.
\b
When the report says "ready to retire" (no credential serves, and no current certificate
or intermediate comes from NAME), end the overlap:
  kimpki ca retire NAME
\b
Examples:
  kimpki ca rotate example.com                          # the cluster, namespace istio-system
  kimpki ca rotate example.com --manifests ./deploy     # a folder 'gateway serve' reads
  kimpki ca rotate example.com --manifests ./deploy --cluster --dry-run
  kimpki ca rotate example-issuing --new-name example-issuing-2027 --json
\b
Exit codes: 0 done, 1 NAME cannot be rotated or a step failed (the steps before it stay
done: run the same command again to finish), 2 usage error.
"""

RETIRE_EPILOG = """\b
Refuses (exit 1, one line naming each) while anything still depends on OLD: a credential
in the places serving a certificate from OLD, a current certificate in the store issued
by OLD, or an intermediate under it ('kimpki ca rotate OLD' moves them). Otherwise OLD is
marked retired (it can no longer issue; 'kimpki ca list' shows it), its successor becomes
the default CA if OLD was, and every MUTUAL credential's bundle (CA-only Secrets and
ConfigMaps too) is rewritten to the successor only: client certificates from OLD are
refused from then on. New certificates
are no longer served with the cross certificate (those issued during the overlap keep it
until they are renewed). Running it again finishes an interrupted rewrite.
\b
Examples:
  kimpki ca retire example.com
  kimpki ca retire example.com --manifests ./deploy --dry-run --json
"""


def _step_lines(items: list[dict], render, empty: str = "nothing to do") -> list[str]:
    return [f"  {render(i)}" for i in items] or [f"  {empty}"]


def _secret_line(i: dict) -> str:
    line = f"{i.get('kind', 'Secret').lower()}/{i['secret']} ({i['namespace']}, {i['place']}): {i['action']}"
    if i.get("old_serial") and i.get("new_serial"):
        line += f", serial {i['old_serial'][:16]} -> {i['new_serial'][:16]}"
    elif i.get("serial"):
        line += f", serial {i['serial'][:16]}"
    if i.get("reason"):
        line += f" ({i['reason']})"
    return line


def _client_line(i: dict) -> str:
    line = f"{i['name']}: {i['action']}"
    if i.get("new_serial"):
        line += (f", serial {i['old_serial'][:16]} -> {i['new_serial'][:16]}\n"
                 f"      cert {i['cert']}\n      key  {i['key']}\n      ca   {i['ca_bundle']}")
    if i.get("reason"):
        line += f" ({i['reason']})"
    return line


def _rotate_text(d: dict) -> str:
    new = d["successor"]
    lines = [f"CA {d['ca']} -> {new} ({d['successor_action']}"
             + (f"; default CA {d['default_ca']})" if d["default_ca"] else ")")]
    if d["cross_certificate"]:
        lines.append(f"  cross certificate ({new} signed by {d['ca']}): {d['cross_certificate']}")
    lines.append(f"places: {', '.join(d['places'])}")
    lines.append(f"1. MUTUAL bundles widened to {d['ca']} + {new}:")
    lines += _step_lines(d["widened"], _secret_line)
    lines.append(f"2. server certificates moved to {new}:")
    lines += _step_lines(d["servers"], _secret_line)
    lines.append(f"3. client certificates re-issued from {new} (hand the new files out):")
    lines += _step_lines(d["clients"], _client_line)
    if d["failed"]:
        lines.append(f"FAILED at step {d['failed']['step']}: {d['failed']['error']}")
    elif d["remaining"] is not None:
        if d["remaining"]:
            lines.append(f"not ready to retire {d['ca']}: " + "; ".join(d["remaining"]))
        else:
            lines.append(f"ready to retire: kimpki ca retire {d['ca']}")
    return "\n".join(lines)


def _retire_text(d: dict) -> str:
    when = f" on {d['retired_at']}" if d["retired_at"] else ""
    lines = [f"CA {d['ca']}: {d['action']}{when}; successor {d['successor']}"
             + (f" (default CA {d['default_ca']})" if d["default_ca"] else ""),
             f"places: {', '.join(d['places'])}",
             f"MUTUAL bundles rewritten to {d['successor']} only:"]
    lines += _step_lines(d["rewritten"], _secret_line)
    if d["failed"]:
        lines.append(f"FAILED at step {d['failed']['step']}: {d['failed']['error']}")
    return "\n".join(lines)


@group.command("rotate", epilog=ROTATE_EPILOG)
@click.argument("name")
@click.option("--new-name", metavar="NEW", help="The successor's name. Default: NAME-g2 (then -g3, ...).")
@days_option(None, "The successor's validity in days. Default: the same lifetime as NAME.")
@click.option("--key-type", type=click.Choice(KEY_TYPES), help="The successor's key. Default: NAME's key type.")
@passphrase_file_option
@place_options
@click.option("--dry-run", is_flag=True, help="Say what would be done; create, issue and write nothing.")
@json_option
@click.pass_context
def rotate(ctx, name, new_name, days, key_type, passphrase_file, namespace, manifests, use_cluster, kubeconfig,
           context, dry_run, as_json):
    """Replace CA NAME with a successor, with an overlap in which both are accepted.

    The passphrase (--passphrase-file or KIMPKI_CA_PASSPHRASE) unlocks NAME's key (and its
    parent's, for an intermediate) and encrypts the successor's key; it is required when
    NAME's key is encrypted.
    """
    from contextlib import ExitStack

    from kimpki.ops import ca_rotation

    store = open_store(ctx)
    with ExitStack() as stack, no_cluster_hint(MANIFESTS_HINT):
        targets = ca_rotation.open_targets(stack, manifests=manifests, cluster=use_cluster, kubeconfig=kubeconfig,
                                           context=context, namespace=namespace)
        report = ca_rotation.rotate(store, targets, name, now=now_utc(), new_name=new_name, days=days,
                                    key_type=parse_key_type(key_type) if key_type else None,
                                    passphrase=read_passphrase_file(passphrase_file),
                                    signing=passphrase_source(passphrase_file), dry_run=dry_run)
    d = report.to_dict()
    for w in report.warnings:
        note(f"kimpki: warning: {w}")
    emit(d, as_json, _rotate_text)
    if report.failed:
        raise OperationError(f"ca rotate {report.ca}: step {report.failed['step']} failed: {report.failed['error']}; "
                             f"the steps before it are done: run the same command again to finish")


@group.command("retire", epilog=RETIRE_EPILOG)
@click.argument("old", metavar="OLD")
@place_options
@click.option("--dry-run", is_flag=True, help="Check and say what would be rewritten; change nothing.")
@json_option
@click.pass_context
def retire(ctx, old, namespace, manifests, use_cluster, kubeconfig, context, dry_run, as_json):
    """End CA OLD's rotation overlap: drop OLD from every MUTUAL bundle once nothing needs it."""
    from contextlib import ExitStack

    from kimpki.ops import ca_rotation

    store = open_store(ctx)
    with ExitStack() as stack, no_cluster_hint(MANIFESTS_HINT):
        targets = ca_rotation.open_targets(stack, manifests=manifests, cluster=use_cluster, kubeconfig=kubeconfig,
                                           context=context, namespace=namespace)
        report = ca_rotation.retire(store, targets, old, now=now_utc(), dry_run=dry_run)
    for w in report.warnings:
        note(f"kimpki: warning: {w}")
    emit(report.to_dict(), as_json, _retire_text)
    if report.failed:
        raise OperationError(f"ca retire {report.ca}: {report.failed['error']}; CA {report.ca} is retired; "
                             f"run the same command again to finish rewriting the bundles")
