"""Pieces every command shares, so that an option means the same everywhere: --json and
-o/--output, --days, the store handle, the hint for a missing kubeconfig."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any, Callable

import click

from kimpki import secret_env

json_option = click.option("--json", "as_json", is_flag=True,
                           help='Print one JSON object on stdout (a list as {"items": [...]}).')


def output_options(help: str):
    """What every command that prints Kubernetes objects takes: ``-o/--output yaml|json`` for the
    objects themselves (as ``kubectl ... -o`` prints them; ``help`` says which and the default)
    and ``--json`` for a summary object (one or the other: :func:`check_output`)."""

    def decorate(f):
        f = json_option(f)
        return click.option("-o", "--output", type=click.Choice(["yaml", "json"]), help=help)(f)

    return decorate


def check_output(output: str | None, as_json: bool, what: str) -> None:
    """-o prints the objects and --json a summary: one or the other."""
    from kimpki.errors import UsageError

    if output and as_json:
        raise UsageError(f"give either -o/--output ({what}) or --json (a summary), not both")


class DaysType(click.ParamType):
    """Every --days: a positive number of days, fractions allowed, or a duration (12h, 2w)."""

    name = "days"

    def convert(self, value, param, ctx):
        from kimpki.pki.durations import parse_days

        if isinstance(value, float):
            return value
        # parse_days's UsageError is kimpki's own one-line error (exit 2), the same for every command.
        return parse_days(value, f"--{param.name}" if param is not None else "--days")


def days_option(default: float | None, help: str):
    return click.option("--days", type=DaysType(), default=default, show_default=default is not None,
                        metavar="DAYS", help=help + " Fractions (0.5) and durations (12h, 2w) are taken too.")


def home_of(ctx: click.Context) -> str | None:
    root = ctx.find_root()
    return (root.obj or {}).get("home")


def open_store(ctx: click.Context):
    from kimpki.store import Store

    return Store.open(home_of(ctx))


def existing_store(ctx: click.Context):
    """The store if the home already has one, else None: commands that only read never create
    a home as a side effect."""
    from pathlib import Path

    from kimpki.store import Store, default_home

    home = home_of(ctx)
    root = Path(home).expanduser() if home else default_home()
    return Store.open(root) if (root / "inventory.db").exists() else None


def _default(o: Any):
    if isinstance(o, datetime):
        return o.isoformat().replace("+00:00", "Z")
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def emit(data: Any, as_json: bool, text: Callable[[Any], str] | str | None = None) -> None:
    """Print ``data`` as JSON, or as human text rendered by ``text`` (which gets ``data`` as given).

    ``--json`` always prints one object: a list becomes ``{"items": [...]}``, as kubectl's List."""
    if as_json:
        doc = {"items": data} if isinstance(data, list) else data
        click.echo(json.dumps(doc, indent=2, sort_keys=False, default=_default))
        return
    if text is None:
        return
    out = text(data) if callable(text) else text
    if out:
        click.echo(out)


def note(message: str) -> None:
    """A remark for humans on stderr, so stdout stays clean for --json and pipes."""
    click.echo(message, err=True)


def stdout_will_hold_keys() -> None:
    """Call before printing private keys: standard output redirected to a file others can read
    (``> deploy/x.yaml`` under umask 022) is made 0600 first, and the user is told."""
    from kimpki.store.fs import tighten_stdout

    path = tighten_stdout("it would receive private keys")
    if path:
        note(f"kimpki: {path} was readable by other users; made it 0600 (it holds private keys)")


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [len(h) for h in headers]
    for r in rows:
        widths = [max(w, len(str(c))) for w, c in zip(widths, r)]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    lines = [fmt.format(*headers).rstrip()]
    lines += [fmt.format(*[str(c) for c in r]).rstrip() for r in rows]
    return "\n".join(lines)


def days_left(not_after: datetime, now: datetime) -> int:
    return int((not_after - now).total_seconds() // 86400)


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()


PASSPHRASE_ENV = secret_env.PASSPHRASE_ENV  # taken out of the environment when the CLI starts

passphrase_file_option = click.option(
    "--passphrase-file", type=click.Path(dir_okay=False),
    help=f"File whose first line is the CA key's passphrase. Env: {PASSPHRASE_ENV}. "
         "Never given as a plain command-line value.")


def read_passphrase_file(path: str | None) -> bytes | None:
    """The passphrase from --passphrase-file, else $KIMPKI_CA_PASSPHRASE, else None."""
    from kimpki.errors import UsageError

    if path:
        from kimpki import input_files

        first = input_files.read_bytes(path, f"--passphrase-file {path}").splitlines()
        if not first or not first[0]:
            raise UsageError(f"--passphrase-file {path} is empty")
        return first[0]
    env = secret_env.take(PASSPHRASE_ENV)
    return env.encode() if env else None


def passphrase_source(path: str | None):
    """A PassphraseSource for signing: file or env first, then a prompt on a terminal."""

    def source(ca_name: str) -> bytes | None:
        pw = read_passphrase_file(path)
        if pw is None and sys.stdin.isatty():
            pw = click.prompt(f"Passphrase for CA {ca_name!r}", hide_input=True, err=True).encode()
        return pw

    return source


def now_utc():
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)


def render_objects(objs: list[dict], fmt: str) -> str:
    """Objects as ``kubectl apply -f -`` takes them: one JSON document (a ``kind: List`` when
    there are several), or YAML documents separated by ``---``."""
    import json

    if fmt == "json":
        doc = objs[0] if len(objs) == 1 else {"apiVersion": "v1", "kind": "List", "items": objs}
        return json.dumps(doc, indent=2)
    import yaml

    return "---\n".join(yaml.safe_dump(o, sort_keys=False, default_flow_style=False, width=1 << 16)
                        for o in objs).rstrip("\n")


def no_cluster_hint(alternative: str):
    """Around a command's cluster access: a missing kubeconfig says what to do without a
    cluster (e.g. "or work on a folder of manifests with --manifests DIR"), then stops."""
    from contextlib import contextmanager

    @contextmanager
    def hinted():
        from kimpki.kube.errors import NoConfigError  # light: kube.errors does not import kubernetes

        try:
            yield
        except NoConfigError as e:
            raise NoConfigError(f"{e}, {alternative}") from None

    return hinted()


MANIFESTS_HINT = "or work on a folder of manifests with --manifests DIR"


def cluster_options(f):
    """--kubeconfig and --context, as kubectl spells them."""
    f = click.option("--context", metavar="NAME", help="kubeconfig context to use (default: the current one).")(f)
    f = click.option("--kubeconfig", type=click.Path(dir_okay=False), metavar="FILE",
                     help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, else in-cluster).")(f)
    return f
