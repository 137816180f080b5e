"""How kimpki answers an API server that pushes back: 429 with ``Retry-After`` (API Priority and
Fairness), 5xx, and its own client-side rate limit. Pure apart from the clock; no network.

The rules, and where they come from:

* **Retry-After** (client-go ``rest/with_retry.go``: ``checkWait`` retries a 429 or any 5xx that
  carries an integer ``Retry-After``, after waiting that many seconds). kimpki does the same for
  reads and for writes that cannot apply twice: a PUT carrying ``metadata.resourceVersion`` (a
  second copy is refused with 409), a POST of a named object (a second copy is refused with 409
  AlreadyExists; a ``generateName`` one would be created twice) and a JSON patch that starts with
  a ``test`` op. Any other write is never resent. The waits of one
  request add up to at most ``max_wait`` seconds; each one is said in the log.
* **5xx on a read** without ``Retry-After``: a GET changes nothing, so it is tried again a few
  times with exponential backoff and jitter (``read_retries``).
* **Client-side limit** (client-go ``flowcontrol.NewTokenBucketRateLimiter(qps, burst)``): a
  token bucket that starts full with ``burst`` tokens and refills at ``qps`` per second. Off by
  default (qps 0); cert-manager runs its controllers at qps 20, burst 50.
"""

from __future__ import annotations

import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

DEFAULT_MAX_WAIT = 60.0  # seconds of Retry-After one request may spend in total
DEFAULT_READ_RETRIES = 3  # more attempts of a GET answered 5xx without Retry-After
READ_BACKOFF = 0.1  # seconds before the first such retry; doubles each time


def retry_after_seconds(value: str | None) -> int | None:
    """client-go's ``retryAfterSeconds``: the header as a whole number of seconds (``strconv.Atoi``),
    None when absent or not a number. Negative values are treated as 0."""
    if value is None:
        return None
    try:
        seconds = int(str(value).strip())
    except ValueError:
        return None
    return max(seconds, 0)


_WARNING = re.compile(r'\d{3} \S+ "((?:[^"\\]|\\.)*)"')


def warnings_of(value: str | None) -> list[str]:
    """The texts of a ``Warning`` response header (RFC 7234: ``299 - "text"``, several joined by
    commas), as client-go's ``ParseWarningHeaders`` reads them."""
    return [re.sub(r"\\(.)", r"\1", m.group(1)) for m in _WARNING.finditer(value or "")]


def write_is_guarded(method: str, body, content_type: str) -> bool:
    """True when sending this write twice cannot apply it twice (see the module docstring)."""
    if method == "POST":  # a named create: a second copy is refused (409 AlreadyExists)
        return isinstance(body, dict) and bool((body.get("metadata") or {}).get("name"))
    if method == "PUT":
        return isinstance(body, dict) and bool((body.get("metadata") or {}).get("resourceVersion"))
    if method == "PATCH" and content_type == "application/json-patch+json":
        return isinstance(body, list) and bool(body) and isinstance(body[0], dict) and body[0].get("op") == "test"
    return False


class RateLimiter:
    """A token bucket (client-go's ``tokenBucketRateLimiter``): ``wait()`` returns at once while
    tokens remain, otherwise sleeps until the next one. ``qps <= 0`` means no limit. The clock and
    the sleep are injectable so that tests decide what time it is."""

    def __init__(self, qps: float = 0.0, burst: int = 0, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.qps = float(qps or 0.0)
        self.burst = max(int(burst or 0), 1)
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(self.burst)
        self._last = clock()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.qps > 0

    def wait(self) -> float:
        """Take one token; returns the seconds slept for it."""
        if not self.enabled:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.qps)
            self._last = now
            self._tokens -= 1.0
            delay = -self._tokens / self.qps if self._tokens < -1e-9 else 0.0  # float dust is no debt
        if delay > 0:
            self._sleep(delay)
        return delay


@dataclass
class Pushback:
    """The retry budget of one :class:`~kimpki.kube.client.Cluster`. ``notice`` receives one line
    per wait (the renew log prints it)."""

    max_wait: float = DEFAULT_MAX_WAIT
    read_retries: int = DEFAULT_READ_RETRIES
    notice: Callable[[str], None] | None = None
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    limiter: RateLimiter = field(default_factory=RateLimiter)

    def say(self, text: str) -> None:
        if self.notice is not None:
            self.notice(text)

    def backoff(self, attempt: int) -> float:
        """Seconds before read retry ``attempt`` (1, 2, ...): 0.1, 0.2, 0.4 s, plus up to 50 %."""
        return READ_BACKOFF * (2 ** (attempt - 1)) * (1 + random.random() * 0.5)
