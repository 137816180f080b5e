"""Durations as users write them: ``90d``, ``12h``, ``30m``, ``45s``, ``2w`` (or a bare number of days),
the validity every ``--days`` option takes (:func:`parse_days`), and the bounds of a certificate's lifetime.

Every duration is at most :data:`MAX_DURATION` (100 years): beyond it nothing kimpki does makes sense,
and a few digits more overflow ``datetime`` (``99999999999d``). A certificate lives at least
:data:`MIN_LIFETIME`: with ``--days 0.000000001`` it would expire before anyone could deploy it.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

from kimpki.errors import UsageError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SYNTAX = re.compile(r"\s*(\d+)\s*([smhdw]?)\s*")

MAX_DAYS = 36500
MAX_DURATION = timedelta(days=MAX_DAYS)  # 100 years
# An hour: longer than the 5 minutes notBefore is backdated by, long enough to deploy and check.
MIN_LIFETIME = timedelta(hours=1)


class DurationOutOfRange(UsageError):
    """A well-formed duration or lifetime outside its bounds (callers that reword syntax errors
    let this one through: its message says what the bound is)."""


def is_duration(text: str) -> bool:
    """Whether ``text`` is written like a duration (its value may still be out of range)."""
    return _SYNTAX.fullmatch(str(text)) is not None


def parse_duration(text: str, what: str = "duration") -> timedelta:
    m = _SYNTAX.fullmatch(str(text))
    if not m:
        raise UsageError(f"invalid {what} {text!r}: use a number with s, m, h, d or w (e.g. 90d, 12h)")
    seconds = int(m.group(1)) * _UNITS[m.group(2) or "d"]
    if seconds > MAX_DURATION.total_seconds():
        raise DurationOutOfRange(f"invalid {what} {text!r}: at most {MAX_DAYS}d (100 years)")
    return timedelta(seconds=seconds)


_DAYS = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*([smhdw]?)\s*")


def parse_days(text: str | float, option: str = "--days") -> float:
    """A validity in days, the same for every command: a positive number of days, fractions
    allowed (``90``, ``0.5`` = 12 hours), or a duration with a unit (``12h``, ``2w``); from an
    hour to 100 years (:func:`lifetime_days`)."""
    m = _DAYS.fullmatch(str(text))
    if not m:
        raise UsageError(f"invalid {option} {text!r}: use a positive number of days (90, 0.5) or a duration "
                         f"(12h, 2w)")
    days = float(m.group(1)) * _UNITS[m.group(2) or "d"] / 86400
    if days <= 0:
        raise UsageError(f"invalid {option} {text!r}: the validity must be positive")
    lifetime_days(days, option)
    return days


def check_lifetime(lifetime: timedelta, what: str) -> timedelta:
    """A certificate's lifetime: at least an hour, at most 100 years."""
    if not MIN_LIFETIME <= lifetime <= MAX_DURATION:
        raise DurationOutOfRange(f"{what} must be at least 1h and at most {MAX_DAYS}d (100 years)")
    return lifetime


def lifetime_days(days: float, option: str = "--days") -> timedelta:
    """``--days`` (a float, as typed) as a checked lifetime."""
    low = MIN_LIFETIME / timedelta(days=1)
    if not (isinstance(days, (int, float)) and math.isfinite(days) and low <= days <= MAX_DAYS):
        raise DurationOutOfRange(f"{option} must be a positive number of days from {low:.4f} (1 hour) to "
                                 f"{MAX_DAYS} (100 years), not {days!r}")
    return timedelta(days=days)
