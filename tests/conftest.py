"""Shared fixtures: a fresh kimpki home per test and a runner for the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

# The session-level check that every CLI option is used by some test (hooks, found here by name).
from tests.option_coverage import (pytest_deselected, pytest_runtest_logfinish,  # noqa: F401
                                   pytest_sessionfinish, pytest_sessionstart, pytest_terminal_summary)

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self):
        return json.loads(self.out)


class Kimpki:
    """Runs ``python -m kimpki`` as a user would, with its own home."""

    def __init__(self, home: Path, cwd: Path):
        self.home = home
        self.cwd = cwd
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KIMPKI_")}
        self.env["KIMPKI_HOME"] = str(home)

    def __call__(self, *args, ok: bool | None = None, input: str | None = None, env: dict | None = None,
                 timeout: float = 120) -> Result:
        proc = subprocess.run([sys.executable, "-m", "kimpki", *map(str, args)], capture_output=True, text=True,
                              cwd=self.cwd, env={**self.env, **(env or {})}, input=input, timeout=timeout)
        res = Result(proc.returncode, proc.stdout, proc.stderr)
        if ok is True:
            assert res.code == 0, f"kimpki {' '.join(map(str, args))} failed ({res.code}):\n{res.err}\n{res.out}"
        return res

    def ok(self, *args, **kw) -> Result:
        return self(*args, ok=True, **kw)

    def json(self, *args, **kw):
        return self.ok(*args, "--json", **kw).json


@pytest.fixture
def kimpki(tmp_path) -> Kimpki:
    home = tmp_path / "home"
    work = tmp_path / "work"
    work.mkdir()
    return Kimpki(home, work)


def assert_one_line_error(res: Result, code: int, *needles: str) -> None:
    assert res.code == code, (res.code, res.err, res.out)
    lines = [l for l in res.err.strip().splitlines() if l.strip()]
    assert "Traceback" not in res.err
    assert lines, "expected an error message"
    # click's usage errors add a "Usage:"/"Try" hint above the one-line error; our own errors are one line.
    error_lines = [l for l in lines if l.startswith(("kimpki: error:", "Error:"))]
    assert len(error_lines) == 1, res.err
    for n in needles:
        assert n in res.err, (n, res.err)


def openssl(*args, input: bytes | None = None, check: bool = True, cwd=None) -> subprocess.CompletedProcess:
    proc = subprocess.run(["openssl", *map(str, args)], capture_output=True, input=input, cwd=cwd)
    if check:
        assert proc.returncode == 0, proc.stderr.decode()
    return proc


# How long a test waits for a condition before it gives up. Only a broken test ever reaches it: it
# is no speed claim (those are measured by scripts/bench), so it is generous for a loaded machine.
WAIT_CEILING = 60.0


def wait_until(condition, what: str, timeout: float = WAIT_CEILING, interval: float = 0.02):
    """Poll ``condition`` until it returns something truthy, and return that; fail naming ``what``
    after ``timeout`` seconds. Tests wait on conditions, never on sleeps or wall-clock budgets."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"gave up waiting for {what} after {timeout:.0f} s"
        time.sleep(interval)
