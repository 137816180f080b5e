"""Durations as users write them: ``90d``, ``12h``, ``30m``, ``45s``, ``2w`` (or a bare number of days)."""

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
