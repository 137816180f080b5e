"""``kimpki issue``: a server or client certificate."""

from __future__ import annotations

from pathlib import Path

import click

from kimpki.cli.common import (days_option, emit, json_option, note, now_utc, open_store, passphrase_file_option,
                               passphrase_source, read_passphrase_file)
from kimpki.pki.keys import DEFAULT_KEY_TYPE, KEY_TYPES, parse_key_type


def issued_text(d: dict) -> str:
    names = ", ".join(d["dns_names"] + d["ip_addresses"])
    lines = [f"issued {d['kind']} certificate {d['name']} for {names}",
             f"  serial:     {d['serial']}",
             f"  valid:      {d['not_before']} .. {d['not_after']}",
             f"  issuer:     {d['issuer']} (CA {d['ca_name']})",
             f"  cert chain: {d['cert']}"]
    if d["key"]:
        lines.append(f"  key:        {d['key']}")
    lines.append(f"  CA cert:    {d['ca']}")
    for f in d.get("out_files", []):
        lines.append(f"  wrote:      {f}")
    return "\n".join(lines)


@click.command("issue")
@click.argument("hosts", nargs=-1, required=True, metavar="HOST [HOST...]")
@click.option("--client", is_flag=True, help="Issue a client certificate (extendedKeyUsage clientAuth).")
@click.option("--ca", "ca_name", metavar="NAME", help="Issuing CA. Default: the default CA (created if none exists).")
@click.option("--org", help="Subject organisation (O), e.g. \"kim organization\".")
@days_option(90, "Validity in days.")
@click.option("--key-type", type=click.Choice(KEY_TYPES), default=DEFAULT_KEY_TYPE.value, show_default=True)
@click.option("--name", help="Name in the store. Default: the first HOST.")
@click.option("--dual", is_flag=True,
              help="Also issue the other algorithm's certificate for the same hosts (RSA-2048 beside an EC "
                   "--key-type, EC P-256 beside an RSA one), stored as NAME-rsa or NAME-ecdsa: the pair an "
                   "Istio server serves with tls.credentialNames ('kimpki secret create --dual').")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Also write <name>.crt, <name>.key and ca.crt into this directory.")
@passphrase_file_option
@json_option
@click.pass_context
def command(ctx, hosts, client, ca_name, org, days, key_type, name, dual, out_dir, passphrase_file, as_json):
    """Issue a certificate for HOST(s): the first HOST is the subject CN, every HOST is a SAN.

    A HOST is a DNS name (internationalised names become A-labels), a wildcard
    '*.example.com', or an IPv4/IPv6 address.

    \b
    The two manual openssl steps (req + x509 -req -set_serial 0) become:
      kimpki issue kim.example.com --org "kim organization" --out .
    \b
    More examples:
      kimpki issue kim.example.com '*.kim.example.com' 10.0.0.7 --days 30
      kimpki issue --client kim-client.example.com --out ./client
      kimpki issue bookinfo.com --ca example.com --key-type rsa-2048 --json
    """
    from kimpki.ops import authority, issuing
    from kimpki.pki.profiles import LeafKind

    store = open_store(ctx)
    now = now_utc()
    if ca_name is None:
        # Encrypted with the passphrase when one is given, as every CA key kimpki writes.
        created = authority.ensure_default_ca(store, now, read_passphrase_file(passphrase_file))
        if created is not None:
            note(f"kimpki: no CA existed; created the default CA {created.name!r} at {created.cert_path}")
    res = issuing.issue(store, list(hosts), kind=LeafKind.CLIENT if client else LeafKind.SERVER,
                        ca_name=ca_name, org=org, days=days, key_type=parse_key_type(key_type), name=name,
                        now=now, passphrase=passphrase_source(passphrase_file))
    if res.previous is not None:
        note(f"kimpki: {res.record.name} was re-issued; the previous version (serial {res.previous.serial}) "
             f"is kept in {res.previous.dir}")
    partner = None
    if dual:
        from kimpki.ops import pairs

        kt = parse_key_type(key_type)
        partner_kt = pairs.partner_key_type(kt)
        partner = issuing.issue(store, list(hosts), kind=LeafKind.CLIENT if client else LeafKind.SERVER,
                                ca_name=res.record.ca, org=org, days=days, key_type=partner_kt,
                                name=pairs.partner_name(res.record.name, pairs.algorithm_of(partner_kt)),
                                now=now, passphrase=passphrase_source(passphrase_file))
    if out_dir:
        issuing.export_files(res, Path(out_dir))
        if partner is not None:
            issuing.export_files(partner, Path(out_dir))
    out = res.to_dict()
    if partner is not None:
        out["pair"] = partner.to_dict()
    emit(out, as_json, lambda d: issued_text(d) + ("\n" + issued_text(d["pair"]) if d.get("pair") else ""))
