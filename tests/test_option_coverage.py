"""The check that every CLI option is used by a test (tests/option_coverage.py): how argv is read
against the command tree, that every command answers -h/--help and documents its options, and
that a run missing an option fails even when its tests pass."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kimpki import __version__
from tests.conftest import ROOT
from tests.option_coverage import UNTESTABLE, all_spellings, command_tree, options_of, spellings_used


def test_argv_is_read_as_click_reads_it():
    tree = command_tree()
    used = spellings_used("", ["--home", "issue", "ca", "init", "x", "--org=Y", "--days", "30", "-h"], tree)
    assert used == {("", "--home"), ("ca init", "--org"), ("ca init", "--days"), ("ca init", "-h")}
    # Bundled short options: -A a flag, then -n with the rest of the word as its value.
    assert spellings_used("", ["status", "-Anistio-system"], tree) == {("status", "-A"), ("status", "-n")}
    assert spellings_used("", ["status", "-n", "-A"], tree) == {("status", "-n")}  # -A is -n's value
    # Secondary spellings of a boolean option count on their own; after "--" nothing is an option.
    assert spellings_used("", ["gateway", "apply", "--no-validate", "--", "--validate"], tree) == \
        {("gateway apply", "--no-validate")}
    # A run that starts at a subcommand (a test calling gateway serve's command directly).
    assert spellings_used("gateway serve", ["-f", "d", "--port", "0"], tree) == \
        {("gateway serve", "-f"), ("gateway serve", "--port")}


def test_the_tree_holds_every_command_and_every_spelling():
    tree = command_tree()
    assert {"", "ca", "ca init", "gateway serve", "cron render", "secret create"} <= set(tree)
    spellings = all_spellings(tree)
    for pair in [("", "--version"), ("", "--home"), ("ca init", "--common-name"), ("gateway apply", "--validate"),
                 ("gateway apply", "--no-validate"), ("secret create", "-n"), ("secret create", "--namespace"),
                 ("status", "-A"), ("verify", "-h")]:
        assert pair in spellings, pair


def test_the_allowlist_names_real_options_with_reasons():
    spellings = all_spellings()
    for pair, reason in UNTESTABLE.items():
        assert pair in spellings, f"UNTESTABLE names {pair}, which kimpki does not have"
        assert reason.strip(), pair


@pytest.mark.parametrize("path", sorted(command_tree()), ids=lambda p: p or "kimpki")
def test_every_command_answers_help_and_documents_its_options(path, capsys):
    from kimpki.cli.main import main

    cmd, ctx = command_tree()[path]
    for flag in ("-h", "--help"):
        with pytest.raises(SystemExit) as done:
            main([*path.split(), flag])
        assert done.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"Usage: kimpki {path}".rstrip()), out
        for spelling, opt in options_of(cmd, ctx).items():
            if not opt.hidden:
                assert spelling in out, (path, spelling)


def test_version(kimpki):
    assert kimpki.ok("--version").out == f"kimpki, version {__version__}\n"


def mini_suite(root: Path) -> Path:
    """A copy of the suite's machinery (conftest, this check) with two small test files of its own."""
    (root / "tests").mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", root)
    for name in ("__init__.py", "conftest.py", "option_coverage.py"):
        shutil.copy(ROOT / "tests" / name, root / "tests")
    shutil.copytree(ROOT / "tests" / "optionlog", root / "tests" / "optionlog",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (root / "tests" / "test_version.py").write_text("def test_version(kimpki):\n    kimpki.ok('--version')\n")
    (root / "tests" / "test_other.py").write_text("def test_other():\n    pass\n")
    return root


def run_pytest(suite: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--basetemp", str(suite / "tmp"), *args], cwd=suite, capture_output=True, text=True,
                          timeout=120)


def test_a_whole_run_that_misses_options_fails_though_its_tests_pass(tmp_path):
    suite = mini_suite(tmp_path / "suite")
    whole = run_pytest(suite)
    assert "2 passed" in whole.stdout, whole.stdout + whole.stderr
    assert whole.returncode == 1, whole.stdout
    section = whole.stdout.split("options no test uses")[1]
    assert "kimpki ca init --common-name\n" in section and "kimpki secret create -n\n" in section
    assert "kimpki --version\n" not in section  # used by the test, in a kimpki child process
    # Partial runs are not judged: a file selection, or a deselection.
    for args in (["tests/test_version.py"], ["-k", "version"]):
        partial = run_pytest(suite, *args)
        assert partial.returncode == 0 and "options no test uses" not in partial.stdout, (args, partial.stdout)
