"""``kimpki sign``: sign an external CSR."""

from __future__ import annotations

from pathlib import Path

import click

from kimpki.cli.common import (days_option, emit, json_option, now_utc, open_store, passphrase_file_option,
                               passphrase_source)
from kimpki.cli.issue import issued_text


@click.command("sign")
@click.argument("csr_file", type=click.Path(dir_okay=False))
@click.option("--san", "sans", multiple=True, metavar="HOST", help="Add a subjectAltName (repeatable).")
@click.option("--client", is_flag=True, help="Issue a client certificate instead of a server one.")
@click.option("--ca", "ca_name", metavar="NAME", help="Issuing CA. Default: the default CA.")
@days_option(90, "Validity in days.")
@click.option("--name", help="Name in the store. Default: the first host.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), help="Also write the certificate chain here.")
@passphrase_file_option
@json_option
@click.pass_context
def command(ctx, csr_file, sans, client, ca_name, days, name, out_file, passphrase_file, as_json):
    """Sign the certificate signing request in CSR_FILE under kimpki's profile.

    The CSR's CN and subjectAltNames (plus any --san) become the certificate's SANs;
    a CSR whose signature does not verify is refused.

    \b
    The manual openssl step
      openssl x509 -req -days 365 -CA example.com.crt -CAkey example.com.key \\
        -set_serial 0 -in kim.example.com.csr -out kim.example.com.crt
    becomes
      kimpki sign kim.example.com.csr --ca example.com --days 365 --out kim.example.com.crt
    """
    from kimpki import input_files
    from kimpki.ops import issuing
    from kimpki.pki.profiles import LeafKind
    from kimpki.store.fs import PUBLIC_FILE, write_output

    data = input_files.read_bytes(csr_file)
    store = open_store(ctx)
    res = issuing.sign_csr(store, data, source=csr_file, extra_sans=list(sans),
                           kind=LeafKind.CLIENT if client else LeafKind.SERVER, ca_name=ca_name,
                           days=days, name=name, now=now_utc(), passphrase=passphrase_source(passphrase_file))
    if out_file:
        # Not resolved: a link planted at --out is replaced, its target left alone.
        write_output(out_file, res.record.cert_path.read_bytes(), PUBLIC_FILE)
        res.out_files = [str(Path(out_file).absolute())]
    emit(res.to_dict(), as_json, issued_text)
