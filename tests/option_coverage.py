"""Every option a user can type is used by at least one test.

During the session every kimpki run appends its argv to a log (tests/optionlog/: a
``sitecustomize`` on the children's PYTHONPATH, and the same hook in this process). At the end
of a run of the whole suite the argvs are parsed against the click command tree, and any
option spelling of any command that no run used fails the session (exit status 1), listed by
name. A partial run (some test files only, ``-k``/``-m``/``--lf`` deselection, a ``-x`` stop)
skips the check.

A test that starts kimpki with an environment of its own must keep ``PYTHONPATH`` and
``PYTEST_KIMPKI_OPTION_LOG`` from ``os.environ`` for its run to count.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import click
import pytest

from tests.optionlog import kimpki_option_log

TESTS = Path(__file__).resolve().parent
HOOK_DIR = TESTS / "optionlog"

# (command path, option spelling) -> why no test here can use it. Keep it empty if at all possible.
UNTESTABLE: dict[tuple[str, str], str] = {}


# -- the command tree --------------------------------------------------------------------------------

def command_tree() -> dict[str, tuple[click.Command, click.Context]]:
    """Every command by its path ("" for kimpki itself, "ca init", ...), with a context to ask it
    for its parameters (the help option is added per context)."""
    from kimpki.cli.main import cli

    out: dict[str, tuple[click.Command, click.Context]] = {}

    def walk(cmd: click.Command, path: str, ctx: click.Context) -> None:
        out[path] = (cmd, ctx)
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                walk(sub, f"{path} {name}".strip(),
                     click.Context(sub, parent=ctx, info_name=name, **sub.context_settings))

    # As click makes them: a command's context_settings (help_option_names) apply to its subcommands too.
    walk(cli, "", click.Context(cli, info_name="kimpki", **cli.context_settings))
    return out


def options_of(cmd: click.Command, ctx: click.Context) -> dict[str, click.Option]:
    """Spelling -> option, for every spelling (``-n``, ``--namespace``, ``--no-validate``)."""
    return {s: p for p in cmd.get_params(ctx) if isinstance(p, click.Option) for s in (*p.opts, *p.secondary_opts)}


def all_spellings(tree=None) -> set[tuple[str, str]]:
    tree = command_tree() if tree is None else tree
    return {(path, s) for path, (cmd, ctx) in tree.items() for s in options_of(cmd, ctx)}


def _values_taken(opt: click.Option) -> int:
    return 0 if opt.is_flag or opt.count else max(opt.nargs, 1)


def spellings_used(path: str, argv: list[str], tree=None) -> set[tuple[str, str]]:
    """The (command path, spelling) pairs an argv given to command ``path`` uses, parsed the way
    click parses it: a group's options come before its subcommand's name; ``--opt=value``,
    ``--opt value``, ``-nvalue``, ``-n value`` and bundled short flags; ``--`` ends options."""
    tree = command_tree() if tree is None else tree
    used: set[tuple[str, str]] = set()
    while path in tree:
        cmd, ctx = tree[path]
        opts = options_of(cmd, ctx)
        is_group = isinstance(cmd, click.Group)
        i, sub = 0, None
        while i < len(argv):
            tok = argv[i]
            i += 1
            if tok == "--":
                if is_group and i < len(argv):
                    sub = argv[i]
                    i += 1
                break
            if tok.startswith("--"):
                name, eq, _ = tok.partition("=")
                opt = opts.get(name)
                if opt is not None:
                    used.add((path, name))
                    if not eq:
                        i += _values_taken(opt)
            elif tok.startswith("-") and tok != "-":
                for j in range(1, len(tok)):  # -abc: flags a and b, then c (with the rest as value)
                    opt = opts.get("-" + tok[j])
                    if opt is None:
                        break
                    used.add((path, "-" + tok[j]))
                    n = _values_taken(opt)
                    if n:
                        i += n - (1 if j < len(tok) - 1 else 0)
                        break
            elif is_group:
                sub = tok
                break
        if sub is None:
            break
        path, argv = f"{path} {sub}".strip(), argv[i:]
    return used


def coverage_from_log(log: Path, tree=None) -> set[tuple[str, str]]:
    tree = command_tree() if tree is None else tree
    path_of = {kimpki_option_log.command_id(cmd): path for path, (cmd, _) in tree.items()}
    used: set[tuple[str, str]] = set()
    if not log.exists():
        return used
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        path = path_of.get(rec["command"])
        if path is not None:
            used |= spellings_used(path, rec["argv"], tree)
    return used


def missing_options(log: Path) -> list[str]:
    tree = command_tree()
    missing = all_spellings(tree) - coverage_from_log(log, tree) - set(UNTESTABLE)
    return sorted(" ".join(["kimpki", path, spelling]).replace("  ", " ") for path, spelling in missing)


# -- the pytest hooks (imported by tests/conftest.py) ---------------------------------------------------

class _State:
    log: Path | None = None
    deselected = 0
    finished = 0
    missing: list[str] | None = None  # None: the run was not the whole suite


def pytest_sessionstart(session):
    import tempfile

    # The session's own folder (not a fixture's: hooks run before fixtures exist), removed at the end.
    folder = Path(tempfile.mkdtemp(prefix="kimpki-option-log-"))
    _State.log = folder / "argv.jsonl"
    os.environ[kimpki_option_log.LOG_ENV] = str(_State.log)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [str(HOOK_DIR), os.environ.get("PYTHONPATH")] if p)
    kimpki_option_log.patch_click_when_imported()  # in-process main([...]) and CliRunner runs


def pytest_deselected(items):
    _State.deselected += len(items)


def pytest_runtest_logfinish(nodeid, location):
    _State.finished += 1


def _whole_suite_ran(session) -> str | None:
    """None when the run was the whole suite: every tests/test_*.py file had tests collected,
    none was deselected (-k, -m, --deselect, --lf) and every test ran to its end (no -x stop);
    else why not."""
    collected = {Path(item.path).resolve() for item in session.items}
    left_out = sorted(p.name for p in TESTS.glob("test_*.py") if p.resolve() not in collected)
    if left_out:
        return f"not every test file ran ({', '.join(left_out[:3])}{', ...' if len(left_out) > 3 else ''})"
    if _State.deselected:
        return f"{_State.deselected} tests deselected"
    if session.shouldstop or session.shouldfail or _State.finished < len(session.items):
        return "the run stopped early"
    return None


def pytest_sessionfinish(session, exitstatus):
    log = _State.log
    try:
        if _whole_suite_ran(session) is None and log is not None:
            _State.missing = missing_options(log)
            if _State.missing and session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
    finally:
        if log is not None:
            shutil.rmtree(log.parent, ignore_errors=True)


def pytest_terminal_summary(terminalreporter):
    tr = terminalreporter
    if _State.missing == []:
        tr.write_line("option coverage: every option of every kimpki command was used by a test")
    if _State.missing:
        tr.section("options no test uses", sep="=", red=True, bold=True)
        for line in _State.missing:
            tr.line(line, red=True)
        tr.line(f"{len(_State.missing)} option(s) of the CLI are never used by any test: add a test that uses "
                f"each (or, if it truly cannot be tested here, a reason in UNTESTABLE in {Path(__file__).name}).")
