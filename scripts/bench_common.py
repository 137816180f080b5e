"""What the benchmark scripts share: timing two things in turn, A B A B …, and printing medians
and the pair-by-pair ratio (a comparison that holds while a shared machine's speed drifts)."""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent


def compare(name_a: str, run_a: Callable[[], float], name_b: str, run_b: Callable[[], float], runs: int,
            width: int = 12) -> None:
    """``run_a``/``run_b`` each run once and return the seconds it took. One warm-up of each
    (page cache, .pyc files, server-side caches), then ``runs`` alternating pairs."""
    run_a(), run_b()
    ta, tb = [], []
    for _ in range(runs):
        ta.append(run_a())
        tb.append(run_b())
    ratios = [x / y for x, y in zip(ta, tb)]

    def fmt(xs: list[float]) -> str:
        return f"median {statistics.median(xs):.3f}s  (min {min(xs):.3f}, max {max(xs):.3f})"

    print(f"{name_a:<{width}} {fmt(ta)}")
    print(f"{name_b:<{width}} {fmt(tb)}")
    print(f"{'ratio':<{width}} {name_a}/{name_b} median {statistics.median(ratios):.2f}"
          f"  (min {min(ratios):.2f}, max {max(ratios):.2f})\n", flush=True)


def compiled(tree: Path) -> Path:
    """``tree``'s modules compiled to .pyc files now. Python skips writing them when
    PYTHONDONTWRITEBYTECODE is set (some shells and CI set it): every timed run would then compile
    the modules changed since the last .pyc was written, and the freshly unpacked anchor would be
    compiled on every run, timing the compiler rather than kimpki."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree)], check=True, stdout=subprocess.DEVNULL)
    return tree


def kimpki_command(ref: str | None, work: Path) -> list[str]:
    """How to run kimpki: this tree's (``ref`` None), or the ``kimpki`` package as it was at git
    ``ref``, unpacked once under ``work`` (the anchor of a before/after comparison); compiled
    first either way (:func:`compiled`)."""
    if ref is None:
        compiled(ROOT / "kimpki")
        return [sys.executable, "-m", "kimpki"]
    tree = work / f"kimpki-{ref}"
    if not tree.exists():
        tree.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "kimpki"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        compiled(tree)
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(tree)!r}); "
            "from kimpki.cli.main import main; main()"]
