"""``kimpki plan`` and ``kimpki apply``: converge the store, Secrets and Gateways to policy files."""

from __future__ import annotations

import click

from kimpki.cli.common import emit, json_option, note, now_utc, open_store, table

FORMAT_HELP = "See policies/README.md for the file format."

PLAN_EPILOG = f"""\b
Examples:
  kimpki plan -f policies/
  kimpki plan -f policies/ -f extra-gateways.yaml --json

\b
Prints every change 'kimpki apply' would make, and why: create a CA; set its name
constraints; issue a certificate (missing, hosts changed, CA changed, key type changed, due for
renewal, ...); create or update a Secret; patch the gateway Deployment's volumes; create or
update a Gateway or VirtualService. "no changes" when everything matches. Nothing is written
(a cluster Target is only read, plus server-side dry runs of changed Secrets). Exit 0 either
way; 2 for a policy error (FILE:LINE: message), 1 when the targets cannot be read.
{FORMAT_HELP}
"""

APPLY_EPILOG = f"""\b
Examples:
  kimpki apply -f policies/
  kimpki apply -f policies/ --dry-run        # the same as 'kimpki plan'
  kimpki apply -f policies/ --json

\b
Converges in order: CAs (created if missing, never replaced: rotate them with 'kimpki ca
rotate'), their constraints, certificates, credential Secrets (updated in place), the gateway
Deployment's volumes, Gateways and VirtualServices. A second apply reports "no changes" and
writes nothing. Exit 0 on success (changes or none), 1 when an operation failed (for example an
issuance outside a CA's constraints, or an API error), 2 for a policy error.
{FORMAT_HELP}
"""


def _paths_option(f):
    return click.option("-f", "--filename", "paths", multiple=True, required=True, metavar="PATH",
                        help="A policy file, or a folder of them (*.yaml, *.yml). Repeatable.")(f)


def _text(d: dict) -> str:
    """The actions grouped by where they happen (the store, then each target)."""
    if not d["actions"]:
        return "no changes"
    from kimpki.ops.converge import PAST

    done = d["applied"]
    groups: dict[str, list[list[str]]] = {}
    for a in d["actions"]:
        obj = f"{a['kind']} {a['namespace'] + '/' if a['namespace'] else ''}{a['name']}"
        groups.setdefault(a["where"], []).append([PAST[a["action"]] if done else a["action"], obj, a["reason"]])
    lines = []
    for where, rows in groups.items():
        lines.append(f"{where}:")
        lines += ["  " + line for line in table(rows, ["ACTION", "OBJECT", "WHY"]).splitlines()[1:]]
    n = d["changes"]
    lines.append(f"{n} change{'s' if n != 1 else ''}" + ("" if done else " planned"))
    return "\n".join(lines)


def _run(ctx, paths, *, execute: bool, force: bool, as_json: bool) -> None:
    from kimpki.ops.converge import converge
    from kimpki.policy import load_policy

    policy = load_policy(paths)
    report = converge(policy, open_store(ctx), now=now_utc(), execute=execute, force=force)
    for w in report.warnings:
        note(f"kimpki: warning: {w}")
    emit(report.to_dict(), as_json, _text)


@click.command("plan", epilog=PLAN_EPILOG)
@_paths_option
@json_option
@click.pass_context
def plan(ctx, paths, as_json):
    """Show what 'kimpki apply' would change to match the policy files in PATH(s)."""
    _run(ctx, paths, execute=False, force=False, as_json=as_json)


@click.command("apply", epilog=APPLY_EPILOG)
@_paths_option
@click.option("--dry-run", is_flag=True, help="Change nothing; report what would change (as 'kimpki plan').")
@click.option("--force", is_flag=True, help="Update existing Secrets that kimpki does not manage.")
@json_option
@click.pass_context
def apply(ctx, paths, dry_run, force, as_json):
    """Make the store, the credential Secrets and the Gateways match the policy files in PATH(s)."""
    _run(ctx, paths, execute=not dry_run, force=force, as_json=as_json)
