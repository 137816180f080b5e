"""``kimpki inspect``: what a certificate file holds."""

from __future__ import annotations

import click

from kimpki.cli.common import emit, existing_store, json_option, now_utc, open_store


def _text(d: dict) -> str:
    lines = []
    n = len(d["certificates"])
    for i, c in enumerate(d["certificates"]):
        head = f"Certificate {i + 1} of {n}" if n > 1 else "Certificate"
        sans = ", ".join([f"DNS:{x}" for x in c["dns_names"]] + [f"IP:{x}" for x in c["ip_addresses"]])
        left = "EXPIRED" if c["expired"] else f"{c['days_left']} days left"
        lines += [f"{head} ({c['version']}{', CA' if c['is_ca'] else ''}{', self-signed' if c['self_signed'] else ''})",
                  f"  subject:     {c['subject'] or '(empty)'}",
                  f"  issuer:      {c['issuer']}",
                  f"  serial:      {c['serial']}",
                  f"  SANs:        {sans or '(none)'}",
                  f"  validity:    {c['not_before']} .. {c['not_after']} ({left})",
                  f"  key:         {c['key']}",
                  f"  usage:       {', '.join(c['extended_key_usage']) or '-'}",
                  f"  signature:   {c['signature_hash']}",
                  f"  SHA-256:     {c['sha256_fingerprint']}"]
    ch = d.get("chain")
    if ch:
        if ch["ok"]:
            lines.append(f"chain: OK against {ch['against']}: " + " -> ".join(ch["path"]))
        else:
            lines.append(f"chain: FAILED against {ch['against']}: {ch['error']}")
    return "\n".join(lines)


@click.command("inspect")
@click.argument("file", metavar="FILE|NAME")
@click.option("--ca", "ca_ref", metavar="NAME|FILE", help="Also check the chain against this CA (store name or PEM file).")
@json_option
@click.pass_context
def command(ctx, file, ca_ref, as_json):
    """Show subject, issuer, serial, SANs, validity, key and fingerprint of every certificate in FILE,
    or in the current certificate NAME of the store (a name 'kimpki list' shows, or a host).

    FILE may be PEM (several certificates, e.g. a chain) or DER. With --ca the chain is
    checked too, and the exit code is 1 when it does not verify.

    \b
    Examples:
      kimpki inspect kim.example.com.crt
      kimpki inspect kim.example.com --ca example.com       # from the store
      kimpki inspect kim.example.com.crt --ca example.com.crt --json
    """
    from kimpki.ops.inspecting import inspect_file

    d = inspect_file(file, ca_ref, lambda: open_store(ctx), now_utc(), lambda: existing_store(ctx))
    emit(d, as_json, _text)
    if d.get("chain") and not d["chain"]["ok"]:
        if not as_json:
            click.echo(f"kimpki: error: {d['chain']['error']}", err=True)
        return 1
    return 0
