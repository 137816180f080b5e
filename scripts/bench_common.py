"""What the benchmark scripts share: timing two things in turn, A B A B …, and printing medians
and the pair-by-pair ratio (a comparison that holds while a shared machine's speed drifts)."""

from __future__ import annotations

import statistics
from typing import Callable


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
