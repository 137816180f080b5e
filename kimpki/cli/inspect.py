"""``kimpki inspect``: what a certificate file holds."""

from __future__ import annotations

import click

from kimpki.cli.common import emit, existing_store, json_option, now_utc, open_store
from kimpki.errors import OperationError


def _crl_text(c: dict) -> list[str]:
    left = "EXPIRED" if c["expired"] else "valid"
    lines = ["CRL",
             f"  issuer:      {c['issuer']}",
             f"  number:      {c['number'] if c['number'] is not None else '(none)'}",
             f"  validity:    {c['this_update']} .. {c['next_update'] or '(no nextUpdate)'} ({left})",
             f"  signature:   {c['signature_hash']}",
             f"  revoked:     {len(c['entries'])} certificate(s)"]
    lines += [f"    {e['serial']}  {e['revoked_at']}  {e['reason']}" for e in c["entries"]]
    return lines


def _ocsp_text(o: dict) -> list[str]:
    lines = [f"OCSP response ({o['response_status']})"]
    if o["response_status"] != "successful":
        return lines
    lines += [f"  responder:   {o['responder']}", f"  produced at: {o['produced_at']}",
              f"  signature:   {o['signature_hash']}"]
    for r in o["responses"]:
        status = r["status"] + (f" ({r['revocation_reason']}, {r['revoked_at']})" if r["status"] == "revoked" else "")
        left = "EXPIRED" if r["expired"] else "valid"
        lines += [f"  serial:      {r['serial']}", f"  status:      {status}",
                  f"  validity:    {r['this_update']} .. {r['next_update'] or '(no nextUpdate)'} ({left})"]
    return lines


def _text(d: dict) -> str:
    if d["kind"] != "certificates":
        lines = _crl_text(d["crl"]) if d["kind"] == "crl" else _ocsp_text(d["ocsp_response"])
        sig = d.get("signature")
        if sig:
            lines.append(f"signature: OK, signed by {sig['signer']}" if sig["ok"]
                         else f"signature: FAILED: {sig['error']}")
        return "\n".join(lines)
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
@click.option("--ca", "ca_ref", metavar="NAME|FILE",
              help="Also check the chain (or the CRL's or OCSP response's signature) against this CA "
                   "(store name or PEM file).")
@json_option
@click.pass_context
def command(ctx, file, ca_ref, as_json):
    """Show subject, issuer, serial, SANs, validity, key and fingerprint of every certificate in FILE,
    or in the current certificate NAME of the store (a name 'kimpki list' shows, or a host).

    FILE may be PEM (several certificates, e.g. a chain) or DER. With --ca the chain is
    checked too, and the exit code is 1 when it does not verify.

    FILE may also be a CRL (PEM or DER: a '<CA>.crl' file, a Secret's 'ca.crl') or an OCSP
    response (DER: a Secret's 'tls.ocsp-staple'): its issuer, validity and entries, and with
    --ca whether that CA signed it.

    \b
    Examples:
      kimpki inspect kim.example.com.crt
      kimpki inspect kim.example.com --ca example.com       # from the store
      kimpki inspect kim.example.com.crt --ca example.com.crt --json
      kimpki inspect staple.der --ca example.com            # an OCSP staple
    """
    from kimpki.ops.inspecting import inspect_file

    d = inspect_file(file, ca_ref, lambda: open_store(ctx), now_utc(), lambda: existing_store(ctx))
    emit(d, as_json, _text)
    verdict = d.get("chain") or d.get("signature")
    if verdict and not verdict["ok"]:
        if not as_json:
            raise OperationError(verdict["error"])  # printed as every error is: one line, exit 1
        return 1
    return 0
