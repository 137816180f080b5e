"""When a certificate is due for renewal (cert-manager's rule: the last third of its lifetime)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from kimpki.errors import UsageError
from kimpki.pki.durations import parse_duration


@dataclass(frozen=True)
class RenewBefore:
    """Either a fixed duration before notAfter or a fraction of the lifetime."""

    duration: timedelta | None = None
    fraction: float | None = None

    @classmethod
    def parse(cls, text: str | None) -> "RenewBefore":
        if text is None or text == "":
            return cls(fraction=1 / 3)
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", text)
        if m:
            pct = float(m.group(1))
            if not 0 < pct < 100:
                raise UsageError(f"invalid --renew-before {text!r}: a percentage must be between 0 and 100")
            return cls(fraction=pct / 100)
        try:
            return cls(duration=parse_duration(text))
        except UsageError:
            raise UsageError(f"invalid --renew-before {text!r}: use a duration (30d, 12h) or a percentage (25%)") from None


def renewal_time(not_before: datetime, not_after: datetime, rule: RenewBefore | None = None) -> datetime:
    rule = rule or RenewBefore.parse(None)
    lifetime = not_after - not_before
    before = rule.duration if rule.duration is not None else lifetime * rule.fraction
    if before >= lifetime:
        # A renew-before as long as the lifetime would renew forever; fall back to the default third.
        before = lifetime / 3
    return not_after - before


def renewal_due(not_before: datetime, not_after: datetime, now: datetime,
                rule: RenewBefore | None = None) -> bool:
    return now >= renewal_time(not_before, not_after, rule)


def lifecycle_state(not_before: datetime, not_after: datetime, now: datetime,
                    rule: RenewBefore | None = None) -> str:
    """``valid``, ``expiring`` (inside the renewal window), ``expired`` or ``not-yet-valid``."""
    if now > not_after:
        return "expired"
    if now < not_before:
        return "not-yet-valid"
    return "expiring" if renewal_due(not_before, not_after, now, rule) else "valid"
