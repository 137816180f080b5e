"""``kimpki list``: the inventory."""

from __future__ import annotations

import click

from kimpki.cli.common import emit, json_option, now_utc, open_store, table


@click.command("list")
@click.option("--all", "include_history", is_flag=True, help="Include previous and pending versions.")
@json_option
@click.pass_context
def command(ctx, include_history, as_json):
    """List issued certificates: names, serial, CA, expiry, days left and state.

    State is valid, expiring (inside the renewal window: the last third of the
    lifetime), expired, not-yet-valid or revoked ('kimpki revoke').
    """
    from kimpki.ops.inspecting import inventory

    rows = inventory(open_store(ctx), now_utc(), include_history)

    def text(rows):
        if not rows:
            return "no certificates yet: run 'kimpki issue HOST'"
        return table([[r["name"], r["kind"], ",".join(r["hosts"]), r["serial"][:16], r["ca"],
                       r["not_after"][:10], r["days_left"], r["state"]]
                      + ([r["version"]] if include_history else []) for r in rows],
                     ["NAME", "KIND", "HOSTS", "SERIAL", "CA", "NOT AFTER", "DAYS", "STATE"]
                     + (["VERSION"] if include_history else []))

    emit(rows, as_json, text)
