"""``kimpki gc``: collect what killed runs left in the store."""

from __future__ import annotations

import click

from kimpki.cli.common import emit, json_option, now_utc, open_store


def _text(d: dict) -> str:
    verb = "would remove" if d["dry_run"] else "removed"
    lines = []
    for path in d["orphans"]:
        lines.append(f"{verb} {path} (no inventory row: left by a killed run)")
    for path in d["temporary_files"]:
        lines.append(f"{verb} {path} (an unfinished write)")
    for p in d["stale_pending"]:
        lines.append(f"{verb} pending version {p['name']} serial {p['serial'][:16]} (created {p['created_at']}, "
                     "never finished, expired)")
    for path in d["repaired_links"]:
        lines.append(f"{'would point' if d['dry_run'] else 'pointed'} {path} at the inventory's current version")
    return "\n".join(lines) or "nothing to collect"


@click.command("gc")
@click.option("--pending-older-than", "bound", default="7d", show_default=True, metavar="DURATION",
              help="Also drop pending versions (issued by rotate or renew, never promoted) created longer ago "
                   "whose certificate has expired (a valid one may be what a Secret serves).")
@click.option("--dry-run", is_flag=True, help="Say what would be collected; remove nothing.")
@json_option
@click.pass_context
def command(ctx, bound, dry_run, as_json):
    """Collect what a killed kimpki left in the store.

    Version folders and CA folders that no inventory row names (a run killed between writing
    the files and committing the inventory), '.tmp-*' files of unfinished writes, pending
    versions older than --pending-older-than whose certificate has expired (a valid one may
    be what a Secret already serves: 'kimpki renew' promotes it), and 'current' links
    that do not point at the inventory's current version. Holds the store's lock, so nothing
    a running command is writing is touched; the first change any command makes to the
    store collects the same leftovers but CA folders (a CA key goes only when asked) and
    pending versions.
    """
    from kimpki.pki.durations import parse_duration

    pending_bound = parse_duration(bound)
    store = open_store(ctx)
    found = store.collect_garbage(now=now_utc(), pending_bound=pending_bound, dry_run=dry_run)
    emit({**found.to_dict(), "dry_run": dry_run}, as_json, _text)
