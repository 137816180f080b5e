"""``verify --wait``: check again until every check passes or the wait is over, never past it."""

from __future__ import annotations

import time
from typing import Callable

from kimpki.verify.report import Report
from kimpki.verify.target import MAX_TIMEOUT, MAX_WAIT, check_seconds

PAUSE = 0.25        # between attempts
MIN_ATTEMPT = 0.25  # an attempt with less time than this could only report its own timeout


def until_passed(check: Callable[[float], list[Report]], *, wait: float, timeout: float) -> list[Report]:
    """Run ``check(timeout)`` until all its reports pass or ``wait`` seconds are over; the last
    reports count, each saying how many attempts were made.

    The first attempt gets the whole ``timeout``; a later one only what is left of ``wait``
    (``--wait 4 --timeout 3`` against a silent server: 3 s, then 0.75 s, not 3 s again), so a
    run ends by ``max(wait, timeout)``. No attempt starts with less than ``MIN_ATTEMPT`` left.
    """
    check_seconds(wait, "--wait", MAX_WAIT, zero_ok=True)
    check_seconds(timeout, "--timeout", MAX_TIMEOUT)
    deadline = time.monotonic() + wait
    attempts, budget = 0, timeout
    while True:
        reports = check(budget)
        attempts += 1
        for r in reports:
            r.attempts = attempts
        if all(r.ok for r in reports) or deadline - time.monotonic() - PAUSE < MIN_ATTEMPT:
            return reports
        time.sleep(PAUSE)
        budget = round(min(timeout, deadline - time.monotonic()), 3)
