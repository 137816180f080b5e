"""Append each kimpki command line to the file named by $PYTEST_KIMPKI_OPTION_LOG.

The hook sits in click's ``Command.main``, the one door every way of running kimpki goes through
(``python -m kimpki``, the ``kimpki`` script in a README block or the demo, ``runpy``, an
in-process ``main([...])``, click's ``CliRunner``), so tests need not report what they ran.
Only the raw argv is written, one JSON line per run; tests/option_coverage.py parses it against
the command tree. Standard library only: this is loaded into every Python the suite starts.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import sys

LOG_ENV = "PYTEST_KIMPKI_OPTION_LOG"


def command_id(command) -> str | None:
    """``module:qualname`` of a command's callback, or None for commands that are not kimpki's."""
    callback = getattr(command, "callback", None)
    module = getattr(callback, "__module__", "") or ""
    if not module.startswith("kimpki."):
        return None
    return f"{module}:{callback.__qualname__}"


def record(command, args) -> None:
    path = os.environ.get(LOG_ENV)
    ident = command_id(command)
    if not path or ident is None:
        return
    argv = list(sys.argv[1:] if args is None else args)
    line = json.dumps({"command": ident, "argv": [str(a) for a in argv]}) + "\n"
    # One short O_APPEND write per run: concurrent kimpki processes never interleave lines.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError:  # the session is over (a straggler): the run is not the test's business
        return
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def patch_click(click_core) -> None:
    command = click_core.Command
    if getattr(command.main, "_kimpki_option_log", False):
        return
    original = command.main

    def main(self, args=None, *rest, **kwargs):
        record(self, args)
        return original(self, args, *rest, **kwargs)

    main._kimpki_option_log = True
    command.main = main


class _PatchClickOnImport(importlib.abc.MetaPathFinder):
    """Lets ``click.core`` load as usual, then wraps ``Command.main``; importing click eagerly in
    every Python the suite starts (pkilint, helpers) would cost start-up time for nothing."""

    def find_spec(self, name, path=None, target=None):
        if name != "click.core":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            patch_click(module)

        spec.loader.exec_module = exec_and_patch
        return spec


def patch_click_when_imported() -> None:
    if "click.core" in sys.modules:
        patch_click(sys.modules["click.core"])
    elif not any(isinstance(f, _PatchClickOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchClickOnImport())
