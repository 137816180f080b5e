"""``kimpki verify``: prove a gateway's SIMPLE or MUTUAL TLS with real handshakes."""

from __future__ import annotations

from pathlib import Path

import click

from kimpki.cli.common import emit, existing_store, json_option, open_store
from kimpki.errors import NotFoundError, OperationError, UsageError

EPILOG = """\b
Examples:
  # SIMPLE gateway; like: curl -v --resolve kim.example.com:443:127.0.0.1 \\
  #   --cacert example.com.crt https://kim.example.com/health
  kimpki verify kim.example.com --connect 127.0.0.1 --cacert example.com.crt --http-path /health
\b
  # MUTUAL gateway; like the curl line plus --cert client.crt --key client.key.
  # Also proves that a client WITHOUT a certificate is refused.
  kimpki verify kim.example.com --connect 127.0.0.1 --cacert example.com.crt \\
      --cert client.crt --key client.key --http-path /health
\b
  # the same with certificates from the kimpki store, a local gateway on port 8443
  kimpki verify kim.example.com --connect 127.0.0.1:8443 --ca example.com \\
      --client kim-client.example.com
  kimpki verify kim.example.com --connect '[::1]:8443' --ca example.com --json
\b
  # OPTIONAL_MUTUAL with a pinned client identity and a TLS 1.3 floor
  kimpki verify kim.example.com --connect 127.0.0.1:8443 --ca example.com \\
      --client kim-client.example.com --mode optional-mutual --min-tls 1.3
\b
Checks, in order: connect, trust (chain verifies against the CA), hostname (HOST is in the
served certificate's subjectAltNames; the CN is never used), expiry, accepted (the server's
verdict on this client: with TLS 1.3 a refusal arrives after the handshake, so kimpki reads
until it sees a session ticket or an alert), MUTUAL: client_certificate_accepted and
client_certificate_demanded (a second connection without a certificate must be refused),
OPTIONAL_MUTUAL: client_certificate_optional (asked for one, admitted without), with
--min-tls: tls_floor, and with --http-path: http (GET over HTTP/1.1 answers 2xx). The
negotiated TLS version is in the report (tls: line, JSON "tls_version").
\b
Failure reasons (JSON "reason", and the first word of the error line):
  {reasons}.
\b
Exit codes: 0 every check passed, 1 a check failed (the reason on stderr, the report
on stdout) or an unknown --ca/--client name, 2 usage error or unreadable
CA/certificate/key file.
"""


class ModeChoice(click.Choice):
    """Istio's spelling of a mode (OPTIONAL_MUTUAL) is accepted too."""

    def convert(self, value, param, ctx):
        return super().convert(str(value).replace("_", "-"), param, ctx)


def _reasons_text() -> str:
    """Every failure reason, from the one list scripts rely on (a usage error is exit 2 instead)."""
    import textwrap

    from kimpki.verify.report import Reason

    names = ", ".join(r.value for r in Reason if r is not Reason.BAD_INPUT)
    return "\n  ".join(textwrap.wrap(names, 86))


def _ca_file(ctx: click.Context, ca_ref: str | None, cacert: str | None) -> tuple[str | None, str | None]:
    """(PEM file, label) for the trust anchor: --cacert FILE, or --ca NAME|FILE (store), or None."""
    if ca_ref and cacert:
        raise UsageError("give --ca NAME or --cacert FILE, not both")
    if cacert:
        return cacert, None
    if not ca_ref:
        return None, None
    if Path(ca_ref).is_file():
        return ca_ref, None
    from kimpki.store.store import read_ca_file

    try:
        ca = open_store(ctx).get_ca(ca_ref)
    except NotFoundError as e:  # exit 1, as every command that is given an unknown CA
        raise NotFoundError(f"--ca {ca_ref}: {e}") from None
    read_ca_file(ca, ca.cert_path)  # a missing file is a damaged store, not a bad --ca
    return str(ca.cert_path), f"CA {ca.name}"


def _client_files(ctx: click.Context, client: str | None, cert: str | None,
                  key: str | None) -> tuple[str | None, str | None, str | None]:
    """(cert file, key file, label) for the client certificate: --cert/--key or --client NAME."""
    if client is None:
        return cert, key, None
    if cert or key:
        raise UsageError("give --client NAME or --cert FILE --key FILE, not both")
    try:
        rec = open_store(ctx).get_cert(client)
    except NotFoundError as e:
        raise NotFoundError(f"--client {client}: {e}") from None
    if not rec.has_key:
        raise UsageError(f"--client {client}: the store has no private key for it (signed from a CSR); "
                         f"use --cert FILE --key FILE")
    return str(rec.cert_path), str(rec.key_path), f"{client} (serial {rec.serial})"


def resolve_target(ctx: click.Context, host: str, *, connect: str | None, ca_ref: str | None,
                   cacert: str | None, client: str | None, cert: str | None, key: str | None,
                   mode: str | None, http_path: str | None, timeout: float, tls_version: str | None = None,
                   min_tls: str | None = None):
    """Options to a ``Target``: files given directly, or looked up in the store by name."""
    from kimpki.verify import make_target

    ca_file, ca_label = _ca_file(ctx, ca_ref, cacert)
    cert, key, client_label = _client_files(ctx, client, cert, key)
    return make_target(host, connect=connect, ca_file=ca_file, client_cert=cert, client_key=key, mode=mode,
                       http_path=http_path, timeout=timeout, ca_label=ca_label, client_label=client_label,
                       tls_version=tls_version, min_tls=min_tls)


def render(d: dict) -> str:
    """A short transcript: one line per check, then what was served."""
    head = f"{d['host']} at {d['address']}:{d['port']}" if ":" not in d["address"] else \
        f"{d['host']} at [{d['address']}]:{d['port']}"
    lines = [f"{head} ({d['mode'].upper()}, trusting {d['ca']})"]
    width = max((len(c["name"]) for c in d["checks"]), default=0)
    for c in d["checks"]:
        lines.append(f"  {'ok' if c['ok'] else 'FAIL':<4}  {c['name']:<{width}}  {c['detail']}")
    if d["tls_version"]:
        lines.append(f"tls: {d['tls_version']} {d['cipher']}, alpn {d['alpn'] or 'none'}"
                     + (f"; server key {d['key_algorithm']}" if d.get("key_algorithm") else ""))
    for i, c in enumerate(d["served_chain"]):
        sans = ", ".join([f"DNS:{x}" for x in c["dns_names"]] + [f"IP:{x}" for x in c["ip_addresses"]]) or "none"
        left = f"{c['days_left']} days left" if c["days_left"] >= 0 else "EXPIRED"
        lines.append(f"served[{i}]: {c['subject']} (issuer {c['issuer']}, serial {c['serial']})")
        lines.append(f"           SANs {sans}; not after {c['not_after']} ({left})")
    lines.append("PASS" if d["ok"] else f"FAIL ({d['reason']})")
    return "\n".join(lines)


def render_all(rows: list[dict]) -> str:
    from kimpki.cli.common import table

    if not rows:
        return "no server certificates in the store: nothing to verify"
    body = table([[r["host"], f"{r['address']}:{r['port']}", "PASS" if r["ok"] else "FAIL",
                   (r["served_chain"][0]["serial"][:16] if r["served_chain"] else "-"),
                   r["message"] or "ok"] for r in rows],
                 ["HOST", "ADDRESS", "RESULT", "SERIAL", "DETAIL"])
    failed = sum(1 for r in rows if not r["ok"])
    return body + f"\n{len(rows) - failed} passed, {failed} failed"


def _write_verify_metrics(path: str, reports: list) -> None:
    from kimpki.ops.metrics import verify_registry, write_textfile
    from kimpki.verify import Reason

    def current(r) -> bool | None:
        if r.reason is Reason.NOT_CURRENT:
            return False
        return True if any(c.name == "current" and c.ok for c in r.checks) else None

    write_textfile(path, verify_registry({"host": r.host, "mode": r.mode, "ok": r.ok, "current": current(r)}
                                         for r in reports))


@click.command("verify", epilog=EPILOG.format(reasons=_reasons_text()))
@click.argument("host", required=False)
@click.option("--all", "check_all", is_flag=True,
              help="Check every current server certificate in the store concurrently (SIMPLE; "
                   "use --connect to point them all at one gateway).")
@click.option("--connect", metavar="ADDR[:PORT]",
              help="Connect here instead of resolving HOST, like curl --resolve; default port 443; "
                   "IPv6 as [::1]:8443; ':8443' keeps HOST's address.")
@click.option("--ca", "ca_ref", metavar="NAME|FILE", help="Trust this CA from the kimpki store (or a PEM file).")
@click.option("--cacert", type=click.Path(dir_okay=False), metavar="FILE",
              help="Trust the certificates in this PEM file, like curl --cacert. "
                   "Without --ca/--cacert: the system trust store.")
@click.option("--client", metavar="NAME", help="Present this client certificate from the kimpki store.")
@click.option("--cert", type=click.Path(dir_okay=False), metavar="FILE", help="Client certificate (PEM), with --key.")
@click.option("--key", type=click.Path(dir_okay=False), metavar="FILE",
              help="The client certificate's private key (PEM).")
@click.option("--mode", type=ModeChoice(["simple", "mutual", "optional-mutual"], case_sensitive=False),
              default=None,
              help="What the gateway should do; default: mutual with a client certificate, else simple. "
                   "optional-mutual: it asks for a client certificate, admits a client without one, and "
                   "checks one presented (--client/--cert: it must accept that one).")
@click.option("--tls-version", type=click.Choice(["1.2", "1.3"]), default=None,
              help="Offer only this TLS version (default: 1.2 and 1.3), e.g. to show that a TLS 1.2 client "
                   "is refused (reason tls_version_refused).")
@click.option("--min-tls", type=click.Choice(["1.2", "1.3"]), default=None,
              help="Prove the gateway's floor: a client offering only the version below (1.1 for 1.2, 1.2 "
                   "for 1.3) must be refused (check tls_floor).")
@click.option("--key-algorithm", type=click.Choice(["rsa", "ecdsa"]),
              help="Be a client that accepts only this server key algorithm (TLS 1.2 with only its cipher suites): "
                   "shows which certificate of an RSA+ECDSA pair (credentialNames) such a client is sent, and "
                   "checks that it is of that algorithm and verifies.")
@click.option("--http-path", metavar="PATH", help="Also GET this path over HTTP/1.1 and expect 2xx, e.g. /health.")
@click.option("--timeout", type=float, default=5.0, show_default=True, metavar="SECONDS",
              help="Give up on the whole check after this long, name resolution included (a DNS server "
                   "that does not answer fails with name_resolution at this bound).")
@click.option("--wait", type=click.FloatRange(min=0), default=0, show_default=True, metavar="SECONDS",
              help="Repeat the check until it passes or SECONDS have passed, e.g. right after 'kimpki "
                   "rotate' while the gateway picks up the new certificate; a last attempt gets only "
                   "what is left of SECONDS.")
@click.option("--textfile", metavar="FILE.prom",
              help="With --all: write kimpki_verify_handshake_ok and kimpki_verify_serving_current per host "
                   "to FILE.prom (node_exporter's textfile collector), whatever the outcome.")
@json_option
@click.pass_context
def command(ctx, host, check_all, connect, ca_ref, cacert, client, cert, key, mode, key_algorithm, tls_version,
            min_tls, http_path, timeout, wait, textfile, as_json):
    """Connect to a gateway as a client would and check its TLS: trust, hostname, expiry,
    the client certificate (MUTUAL: demanded and accepted) and optionally an HTTP path.

    HOST is the name clients use: it is sent as SNI and must be in the served certificate's
    subjectAltNames.
    """
    from kimpki.ops.verifying import compare_with_store, current_for, verify_all
    from dataclasses import replace

    from kimpki.verify import Reason, check_endpoint, until_passed

    if check_all:
        if host or ca_ref or cacert or client or cert or key or mode or tls_version or min_tls or key_algorithm:
            raise UsageError("--all checks the store's own certificates: give no HOST, --ca, --cacert, "
                             "--client, --cert, --key, --mode, --tls-version, --min-tls or --key-algorithm with "
                             "it (it checks both halves of an RSA+ECDSA pair by itself)")
        if textfile:
            from kimpki.ops.metrics import check_textfile_path

            check_textfile_path(textfile)
        store = existing_store(ctx)
        reports = until_passed(lambda t: verify_all(store, connect=connect, http_path=http_path, timeout=t)
                               if store else [], wait=wait, timeout=timeout)
        rows = [r.to_dict() for r in reports]
        if textfile:
            _write_verify_metrics(textfile, reports)
        emit(rows, as_json, render_all)
        failed = [r for r in reports if not r.ok]
        if failed:
            raise OperationError(f"{len(failed)} of {len(reports)} checks failed; first: "
                                 f"{failed[0].host}: {failed[0].message}")
        return 0
    if not host:
        raise UsageError("give HOST (the name clients use), or --all")
    if textfile:
        raise UsageError("--textfile goes with --all (a monitoring sweep of every certificate)")
    target = resolve_target(ctx, host, connect=connect, ca_ref=ca_ref, cacert=cacert, client=client, cert=cert,
                            key=key, mode=mode, http_path=http_path, timeout=timeout, tls_version=tls_version,
                            min_tls=min_tls)
    if key_algorithm:
        target = replace(target, key_algorithm=key_algorithm)
    store = existing_store(ctx)

    def check_once(timeout: float) -> list:
        report = check_endpoint(replace(target, timeout=timeout))
        if report.reason is Reason.BAD_INPUT:
            raise UsageError(report.message.split(": ", 1)[-1])
        compare_with_store(report, current_for(store, target.host,
                                               report.leaf.key_algorithm if report.leaf else None))
        return [report]

    (report,) = until_passed(check_once, wait=wait, timeout=target.timeout)
    emit(report.to_dict(), as_json, render)
    if not report.ok:
        raise OperationError(report.message)
    return 0
