"""The pure renewal rule (kimpki.pki.renewal): cert-manager's last third, --renew-before, --jitter."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import pytest

from kimpki.errors import UsageError
from kimpki.pki.renewal import Jitter, RenewBefore, jitter_offset, lifecycle_state, renewal_due, renewal_time

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
DAY = timedelta(days=1)
NB, NA = T0, T0 + 90 * DAY  # a 90-day certificate


@pytest.mark.parametrize("text,due_day", [
    (None, 60),       # the last third of 90 days
    ("", 60),
    ("30d", 60),
    ("20d", 70),
    ("720h", 60),
    ("2w", 76),
    ("25%", 67.5),
    ("50%", 45),
    ("10.5%", 80.55),
])
def test_renewal_time(text, due_day):
    assert renewal_time(NB, NA, RenewBefore.parse(text)) == NB + timedelta(days=due_day)


@pytest.mark.parametrize("day,rule,due", [
    (59, None, False), (61, None, True),
    (59, "30d", False), (61, "30d", True),
    (61, "20d", False), (71, "20d", True),
    (59, "35%", True), (58, "35%", False),
    (67, "25%", False), (68, "25%", True),
])
def test_due_on_day(day, rule, due):
    assert renewal_due(NB, NA, NB + day * DAY, RenewBefore.parse(rule)) is due


def test_renew_before_as_long_as_the_lifetime_falls_back_to_a_third():
    # Renewing "90 days before" a 90-day certificate would renew on every run.
    assert renewal_time(NB, NA, RenewBefore.parse("90d")) == NB + 60 * DAY
    assert renewal_time(NB, NA, RenewBefore.parse("400d")) == NB + 60 * DAY


@pytest.mark.parametrize("text,needle", [
    ("banana", "use a duration (30d, 12h) or a percentage (25%)"),
    ("30x", "use a duration"),
    ("-5d", "use a duration"),
    ("0%", "between 0 and 100"),
    ("100%", "between 0 and 100"),
    ("150%", "between 0 and 100"),
])
def test_renew_before_refuses(text, needle):
    with pytest.raises(UsageError) as e:
        RenewBefore.parse(text)
    assert f"invalid --renew-before {text!r}" in str(e.value)
    assert needle in str(e.value)


def test_renew_before_names_the_option_it_came_from():
    with pytest.raises(UsageError, match="invalid renewBefore 'x'"):
        RenewBefore.parse("x", option="renewBefore")


@pytest.mark.parametrize("text,describe", [(None, "33.3333%"), ("30d", "30d"), ("36h", "36h"), ("25%", "25%"),
                                           ("14d", "2w"), ("90m", "90m")])
def test_describe(text, describe):
    assert RenewBefore.parse(text).describe() == describe


def test_lifecycle_state():
    rule = RenewBefore.parse(None)
    assert lifecycle_state(NB, NA, NB - DAY, rule) == "not-yet-valid"
    assert lifecycle_state(NB, NA, NB + DAY, rule) == "valid"
    assert lifecycle_state(NB, NA, NB + 61 * DAY, rule) == "expiring"
    assert lifecycle_state(NB, NA, NA, rule) == "expiring"  # notAfter is still inside the validity
    assert lifecycle_state(NB, NA, NA + timedelta(seconds=1), rule) == "expired"


# -- jitter -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    (None, None), ("", None), ("0", None), ("0h", None), ("0%", None),
    ("2h", Jitter(duration=timedelta(hours=2))),
    ("1d", Jitter(duration=DAY)),
    ("10%", Jitter(fraction=0.10)),
])
def test_jitter_parse(text, expected):
    assert Jitter.parse(text) == expected


@pytest.mark.parametrize("text", ["banana", "100%", "-1h", "h"])
def test_jitter_refuses(text):
    with pytest.raises(UsageError, match=r"invalid --jitter"):
        Jitter.parse(text)


SERIALS = [hashlib.sha1(str(i).encode()).hexdigest() for i in range(2000)]


def test_jitter_is_deterministic_per_serial():
    j = Jitter.parse("10%")
    first = [renewal_time(NB, NA, None, jitter=j, key=s) for s in SERIALS[:50]]
    again = [renewal_time(NB, NA, None, jitter=j, key=s) for s in SERIALS[:50]]
    assert first == again
    # ...and a different serial (a renewed certificate) gets its own point.
    assert len(set(first)) == 50


@pytest.mark.parametrize("text,amount", [("10%", 9 * DAY), ("2h", timedelta(hours=2)), ("5d", 5 * DAY)])
def test_jitter_is_bounded_and_spread(text, amount):
    j = Jitter.parse(text)
    base = renewal_time(NB, NA)
    offsets = [base - renewal_time(NB, NA, None, jitter=j, key=s) for s in SERIALS]
    assert all(timedelta(0) <= o < amount for o in offsets)
    assert [jitter_offset(j, s, NA - NB) for s in SERIALS] == offsets
    # Spread over the whole range, not bunched (SHA-256 of 2,000 serials: every tenth is hit).
    tenths = {int(o / amount * 10) for o in offsets}
    assert tenths == set(range(10))


def test_jitter_only_ever_renews_earlier_and_never_before_not_before():
    j = Jitter.parse("80%")
    rule = RenewBefore.parse("50%")  # renewal at day 45; jitter up to 72 days earlier
    times = [renewal_time(NB, NA, rule, jitter=j, key=s) for s in SERIALS[:500]]
    assert all(NB <= t <= NB + 45 * DAY for t in times)
    assert min(times) == NB  # clamped, not before the certificate starts


def test_jitter_without_a_key_changes_nothing():
    assert renewal_time(NB, NA, None, jitter=Jitter.parse("10%")) == renewal_time(NB, NA)


def test_jitter_decides_due():
    j = Jitter.parse("10%")
    s = SERIALS[7]
    at = renewal_time(NB, NA, None, jitter=j, key=s)
    assert not renewal_due(NB, NA, at - timedelta(seconds=1), None, jitter=j, key=s)
    assert renewal_due(NB, NA, at, None, jitter=j, key=s)
    assert lifecycle_state(NB, NA, at, None, jitter=j, key=s) == "expiring"
