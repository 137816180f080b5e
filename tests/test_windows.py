"""Maintenance windows (kimpki.pki.windows): inside or not, the next opening, and the renewal
decision with its safety override. Fixed datetimes only; 2026-01-05 is a Monday."""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone

import pytest

from kimpki.errors import UsageError
from kimpki.pki.windows import (DEFER, OVERRIDE, RENEW, MaintenanceWindow, in_window, next_window_start,
                                parse_weekdays, safety_margin, window_decision)

UTC = timezone.utc
DAY = timedelta(days=1)


def at(day: int, hour: int = 0, minute: int = 0, month: int = 1) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


MON, SAT, SUN = 5, 10, 11  # dates in January 2026

WEEKEND = MaintenanceWindow.parse(weekdays=["Sat", "Sun"], start="02:00", duration="4h")
SUNDAY_NIGHT = MaintenanceWindow.parse(weekdays=["sunday"], start="22:00", duration="4h")  # into Monday, next week
WEEKNIGHTS = MaintenanceWindow.parse(weekdays=["Mon-Fri"], start="23:00", end="01:00")  # end < start: next day
DAILY_BERLIN = MaintenanceWindow.parse(start="02:00", end="04:00", zone="Europe/Berlin")
WORKDAYS_BERLIN = MaintenanceWindow.parse(weekdays=["Mon-Fri"], start="02:00", duration="2h", zone="Europe/Berlin")


@pytest.mark.parametrize("window,t,inside", [
    (WEEKEND, at(SAT, 1, 59), False),
    (WEEKEND, at(SAT, 2), True),                     # opening instant is inside
    (WEEKEND, at(SAT, 5, 59), True),
    (WEEKEND, at(SAT, 6), False),                    # closing instant is outside
    (WEEKEND, at(SUN, 3), True),
    (WEEKEND, at(MON, 3), False),
    # Sunday 22:00 + 4h: across midnight and the week's end (Monday is weekday 0).
    (SUNDAY_NIGHT, at(SUN, 21, 59), False),
    (SUNDAY_NIGHT, at(SUN, 23, 30), True),
    (SUNDAY_NIGHT, at(SUN + 1, 1, 59), True),        # Monday 01:59
    (SUNDAY_NIGHT, at(SUN + 1, 2), False),
    (SUNDAY_NIGHT, at(MON, 1), True),                # the previous Sunday's window, seen from Monday
    # Mon-Fri 23:00-01:00: Friday's runs into Saturday; Sunday night has none.
    (WEEKNIGHTS, at(9, 23, 30), True),               # Friday
    (WEEKNIGHTS, at(SAT, 0, 30), True),              # Saturday, from Friday's window
    (WEEKNIGHTS, at(SAT, 23, 30), False),
    (WEEKNIGHTS, at(SUN + 1, 0, 30), False),         # Monday 00:30: Sunday opened no window
    (WEEKNIGHTS, at(SUN + 1, 23, 0), True),
    # Europe/Berlin 02:00-04:00: 01:00-03:00 UTC in winter, 00:00-02:00 UTC in summer.
    (DAILY_BERLIN, at(MON, 1), True),
    (DAILY_BERLIN, at(MON, 0, 30), False),
    (DAILY_BERLIN, at(1, 0, 30, month=7), True),
    (DAILY_BERLIN, at(1, 2, 30, month=7), False),
])
def test_inside(window, t, inside):
    assert in_window([window], t) is inside
    assert (window.open_at(t) is not None) is inside


@pytest.mark.parametrize("windows,t,expected", [
    ([WEEKEND], at(MON, 12), at(SAT, 2)),
    ([WEEKEND], at(SAT, 3), at(SUN, 2)),               # strictly after: the open one does not count
    ([WEEKEND], at(SUN, 3), at(SUN + 6, 2)),           # over the week's end to next Saturday
    ([SUNDAY_NIGHT], at(SUN + 1, 0, 30), at(SUN + 7, 22)),
    ([SUNDAY_NIGHT], at(SAT, 12), at(SUN, 22)),
    ([WEEKNIGHTS], at(9, 23, 30), at(SUN + 1, 23)),    # Friday's window → Monday's
    ([WEEKEND, SUNDAY_NIGHT], at(SUN, 7), at(SUN, 22)),  # the earliest of several
    ([WEEKEND, WEEKNIGHTS], at(9, 12), at(9, 23)),
    ([WORKDAYS_BERLIN], at(27, 12, month=3), at(30, 0, month=3)),  # Friday → Monday after DST began (CEST)
    ([DAILY_BERLIN], at(28, 12, month=3), at(29, 1, month=3)),  # 02:00 does not exist that day: the clock
                                                                  # jumps past it at 01:00 UTC
    ([DAILY_BERLIN], at(24, 12, month=10), at(25, 0, month=10)),  # 02:00 happens twice that day: the first
    ([DAILY_BERLIN], at(25, 12, month=10), at(26, 1, month=10)),  # and CET (UTC+1) from then on
])
def test_next_window_start(windows, t, expected):
    assert next_window_start(windows, t) == expected


def test_weekdays_names_ranges_and_wrapping():
    assert parse_weekdays(["Mon-Fri"]) == {0, 1, 2, 3, 4}
    assert parse_weekdays(["Fri-Mon"]) == {4, 5, 6, 0}      # wraps over the weekend
    assert parse_weekdays(["SAT", "sunday", "Sat"]) == {5, 6}
    assert MaintenanceWindow.parse(start="00:00", duration="1h").weekdays == frozenset(range(7))  # default: daily


def test_describe():
    assert WEEKEND.describe() == "Sat,Sun 02:00 UTC for 4h"
    assert WEEKNIGHTS.describe() == "Mon,Tue,Wed,Thu,Fri 23:00-01:00 UTC"
    assert DAILY_BERLIN.describe() == "every day 02:00-04:00 Europe/Berlin"
    assert (WEEKNIGHTS.start, WEEKNIGHTS.end, WEEKNIGHTS.length) == (time(23), time(1), None)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(weekdays=["Sonday"], start="02:00", duration="1h"), "unknown weekday 'Sonday'"),
    (dict(weekdays=["Mon-Fry"], start="02:00", duration="1h"), "unknown weekday 'Fry'"),
    (dict(start="24:00", duration="1h"), "invalid time '24:00'"),
    (dict(start="2:60", duration="1h"), "invalid time '2:60'"),
    (dict(start="noon", duration="1h"), "invalid time 'noon'"),
    (dict(start="02:00", end="02:00"), "for a whole day use duration: 24h"),
    (dict(start="02:00"), "exactly one of duration and end"),
    (dict(start="02:00", duration="1h", end="03:00"), "exactly one of duration and end"),
    (dict(start="02:00", duration="0h"), "more than 0 and at most 7d"),
    (dict(start="02:00", duration="8d"), "more than 0 and at most 7d"),
    (dict(start="02:00", duration="soon"), "invalid duration 'soon'"),
    (dict(start="02:00", duration="1h", zone="Mars/Olympus"), "unknown time zone 'Mars/Olympus'"),
    (dict(weekdays=[], start="02:00", duration="1h"), "at least one weekday"),
])
def test_parse_errors(kwargs, needle):
    with pytest.raises(UsageError, match=needle.replace("(", r"\(")):
        MaintenanceWindow.parse(**kwargs)


# -- the renewal decision --------------------------------------------------------------------------

NB = at(1) - 60 * DAY  # a 90-day certificate valid until Jan 31, due (last third) from Jan 1
NA = NB + 90 * DAY


@pytest.mark.parametrize("windows,now,not_after,action,next_window,reason", [
    ([], at(MON, 12), NA, RENEW, None, None),                        # no windows: any time
    ([WEEKEND], at(SAT, 3), NA, RENEW, None, None),                  # inside one
    ([WEEKEND], at(MON, 12), NA, DEFER, at(SAT, 2), "next opens 2026-01-10T02:00:00Z"),
    ([SUNDAY_NIGHT], at(SUN + 1, 3), NA, DEFER, at(SUN + 7, 22), "outside the maintenance windows"),
    # The next window opens after notAfter: renewing now is the lesser harm.
    ([WEEKEND], at(MON, 12), at(9, 12), OVERRIDE, at(SAT, 2),
     "would expire at 2026-01-09T12:00:00Z, before the next maintenance window opens at 2026-01-10T02:00:00Z"),
    # It opens before notAfter, but within the safety margin (a day for 90 days).
    ([WEEKEND], at(MON, 12), at(SAT, 20), OVERRIDE, at(SAT, 2),
     "the next maintenance window opens at 2026-01-10T02:00:00Z, less than 1d before notAfter "
     "2026-01-10T20:00:00Z"),
    ([WEEKEND], at(MON, 12), at(SUN, 3), DEFER, at(SAT, 2), "next opens"),  # 25h before: waits
    # Already expired: renew now, whatever the windows say.
    ([WEEKEND], at(MON, 12), at(MON, 11), OVERRIDE, at(SAT, 2), "expired at 2026-01-05T11:00:00Z"),
])
def test_window_decision(windows, now, not_after, action, next_window, reason):
    d = window_decision(windows, now, not_after - 90 * DAY, not_after)
    assert (d.action, d.next_window) == (action, next_window)
    if reason is None:
        assert d.reason is None
    else:
        assert reason in d.reason


def test_the_safety_margin_is_a_day_or_a_tenth_of_short_lifetimes():
    assert safety_margin(NB, NA) == DAY
    assert safety_margin(at(MON), at(MON) + DAY) == timedelta(hours=2, minutes=24)
    # A one-day certificate 10 hours before notAfter, the next window 5 hours away: it waits.
    short = MaintenanceWindow.parse(start="17:00", duration="1h")
    d = window_decision([short], at(MON, 12), at(MON, 2), at(MON) + 22 * timedelta(hours=1))
    assert (d.action, d.next_window) == (DEFER, at(MON, 17))
    # An explicit margin wins.
    d = window_decision([short], at(MON, 12), at(MON, 2), at(MON, 22), margin=timedelta(hours=6))
    assert d.action == OVERRIDE
