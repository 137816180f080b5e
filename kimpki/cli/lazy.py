"""A click group whose subcommands are imported only when invoked.

``kimpki --help`` and ``kimpki issue`` must not pay for importing ``kubernetes``
(about 0.6 s), so every command lives in its own module, named here by dotted path.
"""

from __future__ import annotations

import importlib

import click


class LazyGroup(click.Group):
    def __init__(self, *args, lazy_commands: dict[str, tuple[str, str]] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        # name -> ("module:attribute", one-line help shown in the parent's --help)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy_commands))

    def get_command(self, ctx, name):
        if name in self.lazy_commands:
            target, _ = self.lazy_commands[name]
            module_name, attr = target.split(":")
            return getattr(importlib.import_module(module_name), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        # Listing uses the registered one-line help so that --help imports nothing.
        rows = []
        for name in self.list_commands(ctx):
            if name in self.lazy_commands:
                rows.append((name, self.lazy_commands[name][1]))
            else:
                cmd = super().get_command(ctx, name)
                if cmd is not None and not cmd.hidden:
                    rows.append((name, cmd.get_short_help_str(limit=formatter.width - 6)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
