"""``kimpki ca``: init, import, list."""

from __future__ import annotations

from pathlib import Path

import click

from kimpki.cli.common import (emit, json_option, note, now_utc, open_store, passphrase_file_option,
                               passphrase_source, read_passphrase_file, table)
from kimpki.pki.keys import DEFAULT_KEY_TYPE, KEY_TYPES, parse_key_type

key_type_option = click.option("--key-type", type=click.Choice(KEY_TYPES), default=DEFAULT_KEY_TYPE.value,
                               show_default=True, help="Key algorithm and size.")


@click.group(name="ca")
def group():
    """Create, import and list certificate authorities.

    \b
    The seed's root was:
      openssl req -x509 -sha256 -nodes -days 365 -newkey rsa:2048 \\
        -subj '/O=example Inc./CN=example.com' -keyout example.com.key -out example.com.crt
    kimpki's equivalent (v3, keyUsage, random serial, key 0600):
      kimpki ca init example.com --org "example Inc."
    """


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
@click.option("--days", type=click.IntRange(min=1), default=3650, show_default=True, help="Validity in days.")
@click.option("--parent", metavar="ROOT", help="Make an intermediate CA (pathLen 0) signed by this CA.")
@passphrase_file_option
@click.option("--parent-passphrase-file", type=click.Path(dir_okay=False),
              help="Passphrase file for the --parent CA's key (else KIMPKI_CA_PASSPHRASE or a prompt).")
@json_option
@click.pass_context
def init(ctx, name, org, common_name, key_type, days, parent, passphrase_file, parent_passphrase_file, as_json):
    """Create a self-signed root CA called NAME (default kimpki-ca), or an intermediate with --parent.

    The first CA becomes the default for 'kimpki issue'. With --passphrase-file (or
    KIMPKI_CA_PASSPHRASE) the CA key is encrypted at rest.

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
                            parent_passphrase=passphrase_source(parent_passphrase_file), now=now)
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
@json_option
@click.pass_context
def import_(ctx, name, cert_file, key_file, key_passphrase_file, passphrase_file, as_json):
    """Adopt an existing CA, such as the one the seed's first openssl command made.

    Checks that the key matches the certificate and that the certificate may sign;
    warns (without failing) about a v1 root or a missing keyUsage.

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
                              passphrase=read_passphrase_file(passphrase_file), now=now)
    for w in res.warnings:
        note(f"kimpki: warning: {cert_file}: {w}")
    emit(res.to_dict(now), as_json, _ca_text)


@group.command("list")
@json_option
@click.pass_context
def list_(ctx, as_json):
    """List the CAs in the store (the default one is marked with *)."""
    from kimpki.ops import authority

    now = now_utc()
    rows = [r.to_dict(now) for r in authority.list_cas(open_store(ctx))]

    def text(rows):
        if not rows:
            return "no CAs yet: run 'kimpki ca init NAME'"
        return table([[("* " if r["default"] else "  ") + r["name"], r["kind"], r["key_type"],
                       r["not_after"][:10], r["days_left"], r["subject"]] for r in rows],
                     ["  NAME", "KIND", "KEY", "NOT AFTER", "DAYS", "SUBJECT"])

    emit(rows, as_json, text)
