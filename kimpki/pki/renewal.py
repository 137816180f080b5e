"""When a certificate is due for renewal (cert-manager's rule: the last third of its lifetime).

* :class:`RenewBefore`: how long before ``notAfter`` renewal starts, as a duration (``30d``) or a
  fraction of the lifetime (``25%``); the default is a third.
* :class:`Jitter`: renew up to this much *earlier* (``2h``, or ``10%`` of the lifetime), by an
  amount derived from the certificate's serial. Many certificates issued together (a policy
  apply, a CA rotation) then spread their renewals instead of all falling due in the same cron
  run; and since the amount depends only on the serial, every run (and ``kimpki status``)
  computes the same renewal time for the same certificate.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from kimpki.errors import UsageError
from kimpki.pki.durations import DurationOutOfRange, parse_duration

_PERCENT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*%\s*")


@dataclass(frozen=True)
class RenewBefore:
    """Either a fixed duration before notAfter or a fraction of the lifetime."""

    duration: timedelta | None = None
    fraction: float | None = None

    @classmethod
    def parse(cls, text: str | None, option: str = "--renew-before") -> "RenewBefore":
        if text is None or text == "":
            return cls(fraction=1 / 3)
        m = _PERCENT.fullmatch(text)
        if m:
            pct = float(m.group(1))
            if not 0 < pct < 100:
                raise UsageError(f"invalid {option} {text!r}: a percentage must be between 0 and 100")
            return cls(fraction=pct / 100)
        try:
            return cls(duration=parse_duration(text, option))
        except DurationOutOfRange:
            raise
        except UsageError:
            raise UsageError(f"invalid {option} {text!r}: use a duration (30d, 12h) or a percentage (25%)") from None

    def describe(self) -> str:
        if self.duration is not None:
            return _describe_duration(self.duration)
        return f"{self.fraction * 100:g}%"

    def falls_back(self, lifetime: timedelta) -> bool:
        """A fixed duration at least as long as the lifetime would renew for ever: the default
        third applies instead (cert-manager's rule). Callers say so; the rule stays."""
        return self.duration is not None and self.duration >= lifetime


@dataclass(frozen=True)
class Jitter:
    """Renew up to this much earlier than the rule says: a duration, or a fraction of the lifetime."""

    duration: timedelta | None = None
    fraction: float | None = None

    @classmethod
    def parse(cls, text: str | None, option: str = "--jitter") -> "Jitter | None":
        """``None`` for no jitter (no text, ``0`` or ``0%``)."""
        if text is None or text == "":
            return None
        m = _PERCENT.fullmatch(text)
        if m:
            pct = float(m.group(1))
            if not 0 <= pct < 100:
                raise UsageError(f"invalid {option} {text!r}: a percentage must be at least 0 and below 100")
            return cls(fraction=pct / 100) if pct else None
        try:
            d = parse_duration(text, option)
        except DurationOutOfRange:
            raise
        except UsageError:
            raise UsageError(f"invalid {option} {text!r}: use a duration (2h, 1d) or a percentage (10%)") from None
        return cls(duration=d) if d else None

    def amount(self, lifetime: timedelta) -> timedelta:
        return self.duration if self.duration is not None else lifetime * self.fraction

    def describe(self) -> str:
        if self.duration is not None:
            return _describe_duration(self.duration)
        return f"{self.fraction * 100:g}%"


def _describe_duration(d: timedelta) -> str:
    s = int(d.total_seconds())
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if s and s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


def jitter_offset(jitter: Jitter | None, key: str, lifetime: timedelta) -> timedelta:
    """How much earlier the certificate identified by ``key`` (its serial) renews: a fixed
    point in ``[0, jitter)`` taken from SHA-256 of the key, so it is the same on every run
    and spread evenly over certificates."""
    if jitter is None:
        return timedelta(0)
    amount = jitter.amount(lifetime)
    if amount <= timedelta(0):
        return timedelta(0)
    u = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2 ** 64
    # Whole microseconds (timedelta's resolution), strictly below the amount.
    return timedelta(microseconds=int(amount / timedelta(microseconds=1) * u))


def renewal_time(not_before: datetime, not_after: datetime, rule: RenewBefore | None = None, *,
                 jitter: Jitter | None = None, key: str | None = None) -> datetime:
    """When renewal starts. ``jitter`` (with the certificate's serial as ``key``) moves it earlier
    by a deterministic amount; never before ``not_before``."""
    rule = rule or RenewBefore.parse(None)
    lifetime = not_after - not_before
    before = rule.duration if rule.duration is not None else lifetime * rule.fraction
    if rule.falls_back(lifetime):
        before = lifetime / 3
    at = not_after - before
    if jitter is not None and key is not None:
        at = max(not_before, at - jitter_offset(jitter, key, lifetime))
    return at


def renewal_due(not_before: datetime, not_after: datetime, now: datetime,
                rule: RenewBefore | None = None, *, jitter: Jitter | None = None, key: str | None = None) -> bool:
    return now >= renewal_time(not_before, not_after, rule, jitter=jitter, key=key)


def lifecycle_state(not_before: datetime, not_after: datetime, now: datetime,
                    rule: RenewBefore | None = None, *, jitter: Jitter | None = None,
                    key: str | None = None) -> str:
    """``valid``, ``expiring`` (inside the renewal window), ``expired`` or ``not-yet-valid``."""
    if now > not_after:
        return "expired"
    if now < not_before:
        return "not-yet-valid"
    return "expiring" if renewal_due(not_before, not_after, now, rule, jitter=jitter, key=key) else "valid"
