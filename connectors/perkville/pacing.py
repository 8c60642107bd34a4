"""Pacing for Perkville calls: a token-bucket rate limit, exponential backoff and ``Retry-After``."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC
from email.utils import parsedate_to_datetime


class TokenBucket:
    """A proactive client-side rate limit: at most ``rate`` requests per second, bursts of ``burst``.

    ``clock`` returns seconds (wall or monotonic) and ``sleep`` waits; both are injectable so tests
    can assert the sleeps requested instead of measuring time. ``rate`` None or <= 0 disables it.
    """

    def __init__(
        self,
        rate: float | None,
        *,
        burst: int = 1,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        self.rate = rate if rate and rate > 0 else None
        self.burst = max(1, burst)
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(self.burst)
        self._last: float | None = None

    def acquire(self) -> float:
        """Take one token, sleeping first if none is available; returns the seconds slept."""
        if self.rate is None:
            return 0.0
        now = self._clock()
        if self._last is not None:
            elapsed = max(0.0, now - self._last)
            self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        wait = (1.0 - self._tokens) / self.rate
        self._sleep(wait)
        # The token earned while sleeping is spent by this request.
        self._tokens = 0.0
        self._last = now + wait
        return wait


class Backoff:
    """Exponential backoff with "equal jitter": attempt n waits in [d/2, d], d = min(cap, base * 2**n)."""

    def __init__(self, *, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None) -> None:
        self.base = max(0.0, base)
        self.cap = max(0.0, cap)
        self._rng = rng or random.Random()

    def delay(self, attempt: int) -> float:
        ceiling = min(self.cap, self.base * (2 ** max(0, attempt)))
        return float(ceiling / 2 + self._rng.uniform(0, ceiling / 2))


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), None if unusable.

    ``now`` is the current wall-clock time in epoch seconds; dates in the past give 0.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if seconds != seconds or seconds < 0:  # NaN or negative
            return None
        return seconds
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)
