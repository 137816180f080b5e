"""The ``kimpki`` entry point: global options, lazily loaded commands, error-to-exit-code mapping."""

from __future__ import annotations

import os
import sys

import click

from kimpki import __version__, secret_env
from kimpki.cli.lazy import LazyGroup
from kimpki.errors import KimpkiError

COMMANDS = {
    "ca": ("kimpki.cli.ca:group", "Create, import, list and rotate certificate authorities."),
    "issue": ("kimpki.cli.issue:command", "Issue a server (default) or client certificate."),
    "sign": ("kimpki.cli.sign:command", "Sign an external certificate signing request (CSR)."),
    "inspect": ("kimpki.cli.inspect:command", "Show what a certificate file holds; optionally check its chain."),
    "list": ("kimpki.cli.listing:command", "List issued certificates with their state."),
    "secret": ("kimpki.cli.secret:group", "Create gateway credential Secrets (SDS or file-mounted) from the store."),
    "gateway": ("kimpki.cli.gateway:group", "Render, apply and mount Istio Gateways; serve them locally."),
    "check": ("kimpki.cli.check:command", "Analyse gateway credentials: missing, invalid, expired, mismatched."),
    "verify": ("kimpki.cli.verify:command", "Check a gateway's SIMPLE or MUTUAL TLS with real handshakes."),
    "rotate": ("kimpki.cli.rotate:command", "Give a credential Secret a new key and certificate, in place."),
    "renew": ("kimpki.cli.renew:command", "Renew every managed credential inside its renewal window (cron)."),
    "status": ("kimpki.cli.status:command", "Show credentials with expiry, renewal date and state."),
    "revoke": ("kimpki.cli.revoke:revoke", "Revoke a certificate and re-sign its CA's CRL."),
    "crl": ("kimpki.cli.revoke:crl", "Print a CA's certificate revocation list (signed when due)."),
    "plan": ("kimpki.cli.policy:plan", "Show what 'apply' would change to match policy files."),
    "apply": ("kimpki.cli.policy:apply", "Converge CAs, certificates, Secrets and Gateways to policy files."),
    "cron": ("kimpki.cli.cron:group", "Print a crontab line or Kubernetes CronJob that runs 'kimpki renew'."),
    "gc": ("kimpki.cli.gc:command", "Collect what killed runs left in the store (orphan versions, temp files)."),
}

EPILOG = """\b
Examples:
  kimpki ca init example.com --org "example Inc."
  kimpki issue kim.example.com --org "kim organization" --out ./certs
  kimpki issue --client kim-client.example.com
  kimpki inspect ./certs/kim.example.com.crt --ca example.com
  kimpki secret create kim-credential --cert kim.example.com      # the gateway's SDS Secret
  kimpki verify kim.example.com --connect $INGRESS_HOST --ca example.com
  kimpki rotate kim-credential                                    # new key, Secret updated in place
  kimpki renew --dry-run                                          # what cron would renew
  kimpki apply -f policies/                                       # the whole setup, declared

\b
Exit codes: 0 success, 1 operation failed, 2 usage error or bad input.
Home: --home, else $KIMPKI_HOME, else $XDG_DATA_HOME/kimpki (~/.local/share/kimpki).
"""


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, epilog=EPILOG,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--home", type=click.Path(file_okay=False), envvar="KIMPKI_HOME",
              help="kimpki's home directory (the local store). Env: KIMPKI_HOME.")
@click.version_option(__version__, prog_name="kimpki")
@click.pass_context
def cli(ctx: click.Context, home: str | None) -> None:
    """kimpki: certificates and credentials for Istio ingress gateways.

    Replaces hand-typed openssl and kubectl steps with certificates every modern
    client accepts (X.509 v3, random serials, subjectAltNames) and a local store.
    """
    ctx.obj = {"home": home}


def one_line(message: str) -> str:
    """``message`` as one printable line: what it quotes from the user's input (a file name, a
    YAML value, a certificate's subject) may hold newlines or other control characters."""
    if message.isprintable():
        return message
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in message)


def undecodable_argument(argv: list[str]) -> str | None:
    """The first argument that is not UTF-8 (Python keeps its bytes as lone surrogates, which no
    name, host or certificate field can hold), shown with those bytes escaped; else None."""
    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            return arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return None


def main(argv: list[str] | None = None) -> None:
    secret_env.hide(secret_env.PASSPHRASE_ENV)  # no child inherits it (kubeconfig exec plugins)
    bad = undecodable_argument(sys.argv[1:] if argv is None else argv)
    if bad is not None:
        click.echo(one_line(f"kimpki: error: argument '{bad}' is not UTF-8 text; kimpki reads names, hosts and "
                            f"paths as UTF-8"), err=True)
        sys.exit(2)
    try:
        rv = cli.main(args=argv, prog_name="kimpki", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("kimpki: aborted", err=True)
        sys.exit(1)
    except click.exceptions.ClickException as e:
        # Usage errors (exit 2) keep click's helpful "Try 'kimpki X -h'" hint.
        e.show()
        sys.exit(e.exit_code)
    except KimpkiError as e:
        click.echo(f"kimpki: error: {one_line(str(e))}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("kimpki: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - a bug: one line for the user, the traceback on request
        if os.environ.get("KIMPKI_DEBUG"):
            raise
        click.echo(f"kimpki: internal error: {type(e).__name__}: {one_line(str(e))} (a bug in kimpki; run again with "
                   f"KIMPKI_DEBUG=1 for the traceback and report it)", err=True)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
