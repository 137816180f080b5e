"""Maintenance windows: when renewal may touch a gateway, and when it must not wait.

A :class:`MaintenanceWindow` opens on some weekdays at a local time of day in a time zone (UTC
unless named; named zones through :mod:`zoneinfo`, so daylight saving time is followed) and
stays open for a duration, or until an end time (an end at or before the start means the next
day). The weekday is the day the window *opens*: ``Sun 22:00`` for ``4h`` closes on Monday at
02:00, across the week's end.

:func:`window_decision` is the renewal rule with windows: a certificate that is due is renewed
inside a window, and otherwise deferred to the next one, unless that one opens too late (less
than a safety margin before notAfter, or the certificate has already expired): then it is
renewed at once, with the reason, because an outage from an expired certificate is worse than
a renewal outside the window.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from typing import Iterable, Iterator

from kimpki.errors import UsageError
from kimpki.pki.durations import parse_duration

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_FULL = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_TIME = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")
MAX_LENGTH = timedelta(days=7)  # longer would never close; also bounds the search below


def parse_weekday(text: str) -> int:
    """``Mon``..``Sun`` or the full English name, any case → 0 (Monday)..6."""
    t = text.strip().lower()
    for i, full in enumerate(_FULL):
        if t in (full, full[:3]):
            return i
    raise UsageError(f"unknown weekday {text!r} (use Mon, Tue, Wed, Thu, Fri, Sat, Sun or a range such as Mon-Fri)")


def parse_weekdays(items: Iterable[str]) -> frozenset[int]:
    """Weekdays and ranges (``Mon-Fri``; ``Fri-Mon`` wraps over the weekend)."""
    days: set[int] = set()
    for item in items:
        first, sep, last = item.partition("-")
        if not sep:
            days.add(parse_weekday(item))
            continue
        a, b = parse_weekday(first), parse_weekday(last)
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(days)


def parse_time_of_day(text: str) -> time:
    """``HH:MM`` on a 24-hour clock."""
    m = _TIME.fullmatch(text.strip())
    if not m:
        raise UsageError(f"invalid time {text!r}: use HH:MM on a 24-hour clock (e.g. 02:00, 22:30)")
    return time(int(m.group(1)), int(m.group(2)))


def parse_zone(name: str | None) -> tzinfo:
    """``None``/``UTC`` → UTC; otherwise an IANA zone name (``Europe/Berlin``)."""
    if name is None or name.upper() in ("UTC", "Z", "ETC/UTC"):
        return timezone.utc
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"unknown time zone {name!r} (use an IANA name such as Europe/Berlin, or UTC)") from None


@dataclass(frozen=True)
class MaintenanceWindow:
    """Opens on ``weekdays`` (0 = Monday) at ``start`` in ``zone`` for ``length``, or until
    ``end`` (the next day when ``end <= start``). Exactly one of ``length`` and ``end``."""

    weekdays: frozenset[int]
    start: time
    length: timedelta | None = None
    end: time | None = None
    zone: tzinfo = timezone.utc

    @classmethod
    def parse(cls, *, weekdays: Iterable[str] | None = None, start: str, duration: str | None = None,
              end: str | None = None, zone: str | None = None) -> "MaintenanceWindow":
        """From the policy's text; every day when ``weekdays`` is None. A UsageError names the
        first bad value."""
        if (duration is None) == (end is None):
            raise UsageError("a maintenance window needs exactly one of duration and end")
        days = frozenset(range(7)) if weekdays is None else parse_weekdays(weekdays)
        if not days:
            raise UsageError("a maintenance window needs at least one weekday")
        at = parse_time_of_day(start)
        length = until = None
        if duration is not None:
            length = parse_duration(duration)
            if not timedelta(0) < length <= MAX_LENGTH:
                raise UsageError(f"invalid duration {duration!r}: a maintenance window lasts more than 0 and at most 7d")
        else:
            until = parse_time_of_day(end)
            if until == at:
                raise UsageError(f"end {end} is the start: for a whole day use duration: 24h")
        return cls(days, at, length, until, parse_zone(zone))

    # -- occurrences ------------------------------------------------------------------------
    def _opening(self, day: date) -> tuple[datetime, datetime]:
        """The occurrence opening on local date ``day``, as UTC instants."""
        opens = datetime.combine(day, self.start, tzinfo=self.zone)
        if self.length is not None:
            closes = opens.astimezone(timezone.utc) + self.length  # elapsed time, across DST changes too
        else:
            end_day = day if self.end > self.start else day + timedelta(days=1)
            closes = datetime.combine(end_day, self.end, tzinfo=self.zone).astimezone(timezone.utc)
        return opens.astimezone(timezone.utc), closes

    def occurrences(self, around: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Every occurrence opening within eight days either side of ``around``, in order: enough
        to hold the one open at ``around`` (at most 7 days long) and the next one to open (some
        weekday comes within 7 days)."""
        local = around.astimezone(self.zone).date()
        for i in range(-8, 9):
            day = local + timedelta(days=i)
            if day.weekday() in self.weekdays:
                yield self._opening(day)

    def open_at(self, t: datetime) -> tuple[datetime, datetime] | None:
        """The occurrence (opens, closes) that ``t`` falls in (opens ≤ t < closes), or None."""
        return next(((o, c) for o, c in self.occurrences(t) if o <= t < c), None)

    def next_start(self, t: datetime) -> datetime:
        """When this window next opens, strictly after ``t``."""
        return min(o for o, _ in self.occurrences(t) if o > t)

    def describe(self) -> str:
        days = "every day" if len(self.weekdays) == 7 else ",".join(WEEKDAYS[d] for d in sorted(self.weekdays))
        zone = "UTC" if self.zone is timezone.utc else str(self.zone)
        start = self.start.strftime("%H:%M")
        if self.length is not None:
            return f"{days} {start} {zone} for {_describe_length(self.length)}"
        return f"{days} {start}-{self.end.strftime('%H:%M')} {zone}"


def _describe_length(d: timedelta) -> str:
    s = int(d.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


def in_window(windows: Iterable[MaintenanceWindow], t: datetime) -> bool:
    """Whether ``t`` falls inside any of ``windows``."""
    return any(w.open_at(t) is not None for w in windows)


def next_window_start(windows: Iterable[MaintenanceWindow], t: datetime) -> datetime:
    """When the first of ``windows`` next opens, strictly after ``t`` (a window open at ``t``
    counts only from its next opening)."""
    return min(w.next_start(t) for w in windows)


def safety_margin(not_before: datetime, not_after: datetime) -> timedelta:
    """How long before notAfter renewal stops waiting for a window: a day, or a tenth of the
    lifetime when that is shorter (so that short-lived certificates still wait for windows)."""
    return min(timedelta(days=1), (not_after - not_before) / 10)


RENEW, DEFER, OVERRIDE = "renew", "defer", "override"


@dataclass(frozen=True)
class WindowDecision:
    """What to do now with a certificate that is due: ``renew`` (no windows, or inside one),
    ``defer`` until ``next_window``, or ``override`` (renew now, outside the windows, because
    of ``reason``)."""

    action: str
    next_window: datetime | None = None
    reason: str | None = None


def window_decision(windows: Iterable[MaintenanceWindow], now: datetime, not_before: datetime,
                    not_after: datetime, margin: timedelta | None = None) -> WindowDecision:
    """The decision for a certificate that is due at ``now`` (see the module doc). ``margin``
    defaults to :func:`safety_margin`."""
    windows = list(windows)
    if not windows or in_window(windows, now):
        return WindowDecision(RENEW)
    nxt = next_window_start(windows, now)
    if now >= not_after:
        return WindowDecision(OVERRIDE, nxt, f"expired at {_t(not_after)}: renewing outside the maintenance "
                                             f"windows (next opens {_t(nxt)})")
    margin = safety_margin(not_before, not_after) if margin is None else margin
    if nxt >= not_after:
        return WindowDecision(OVERRIDE, nxt, f"would expire at {_t(not_after)}, before the next maintenance window "
                                             f"opens at {_t(nxt)}")
    if nxt > not_after - margin:
        return WindowDecision(OVERRIDE, nxt, f"the next maintenance window opens at {_t(nxt)}, less than "
                                             f"{_describe_length(margin)} before notAfter {_t(not_after)}")
    return WindowDecision(DEFER, nxt, f"outside the maintenance windows; next opens {_t(nxt)}")


def _t(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")  # as kimpki.pki.parse.rfc3339
