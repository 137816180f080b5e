"""Durations as users write them: ``90d``, ``12h``, ``30m``, ``45s``, ``2w`` (or a bare number of days),
and the validity every ``--days`` option takes (:func:`parse_days`)."""

from __future__ import annotations

import re
from datetime import timedelta

from kimpki.errors import UsageError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    m = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", str(text))
    if not m:
        raise UsageError(f"invalid duration {text!r}: use a number with s, m, h, d or w (e.g. 90d, 12h)")
    value, unit = int(m.group(1)), m.group(2) or "d"
    return timedelta(seconds=value * _UNITS[unit])


_DAYS = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*([smhdw]?)\s*")


def parse_days(text: str | float, option: str = "--days") -> float:
    """A validity in days, the same for every command: a positive number of days, fractions
    allowed (``90``, ``0.5`` = 12 hours), or a duration with a unit (``12h``, ``2w``)."""
    m = _DAYS.fullmatch(str(text))
    if not m:
        raise UsageError(f"invalid {option} {text!r}: use a positive number of days (90, 0.5) or a duration "
                         f"(12h, 2w)")
    days = float(m.group(1)) * _UNITS[m.group(2) or "d"] / 86400
    if days <= 0:
        raise UsageError(f"invalid {option} {text!r}: the validity must be positive")
    return days
