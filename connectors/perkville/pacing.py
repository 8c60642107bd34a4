"""Pacing for Perkville calls: a token-bucket rate limit, exponential backoff and ``Retry-After``."""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Callable
from datetime import UTC
from email.utils import parsedate_to_datetime


class RequestBudget:
    """One adaptive request rate for a whole run, shared by every thread that sends (AIMD).

    The additive-increase / multiplicative-decrease rule of TCP congestion control, applied to a
    rate in requests per second, with TCP's slow start and CUBIC's quick return to the rate that
    last worked:

    * it starts at ``start`` (default: half the ceiling) and, until the first sign of
      congestion, grows by one request per second for every quick 2xx answer (slow start);
    * a 429 halves it, and nothing is sent until its ``Retry-After`` has passed. The requests
      sent in the second before the refused one are what the server accepted: the rate climbs
      back quickly (one per answer) to 95 % of that, then only by ``increase`` requests per
      second for every second of quick answers (each answer adds ``increase / rate``);
    * a 5xx answer or a network error multiplies it by 0.75;
    * answers to requests sent before the last decrease do not decrease it again (one
      congestion event, one decrease); answers slower than ``slow_seconds`` do not grow it;
    * it never goes above ``ceiling`` nor below ``floor``. Requests leave ``1 / rate`` seconds
      apart, and no more than ``rate`` of them in any ``WINDOW`` seconds, timed when they
      actually leave (``on_wire``), so jitter never puts ``rate + 1`` of them into one second.

    ``ceiling`` None or <= 0: no pacing at all (429 pauses are still honoured). ``clock`` and
    ``sleep`` are injectable, so tests assert the waits instead of measuring time.
    """

    WINDOW = 1.03  # seconds: no more than ``rate`` requests on the wire in any such window

    def __init__(
        self,
        ceiling: float | None,
        *,
        start: float | None = None,
        floor: float = 0.5,
        increase: float = 0.1,
        slow_seconds: float = 2.0,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        self.ceiling = ceiling if ceiling and ceiling > 0 else None
        self.floor = min(max(floor, 0.01), self.ceiling) if self.ceiling else max(floor, 0.01)
        self.increase = increase
        self.slow_seconds = slow_seconds
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._slow_start = start is None
        first = start if start is not None else (self.ceiling / 2 if self.ceiling else None)
        self._rate = self._clamp(first) if first is not None else None
        self._target: float | None = None  # 95 % of what the server last accepted
        self._next = float("-inf")  # the earliest moment the next request may go
        self._paused_until = float("-inf")
        self._decreased_at = float("-inf")
        self._wire: deque[float] = deque()  # when requests left in the last two seconds (``on_wire``)
        self.throttled = 0
        self.troubles = 0

    def _clamp(self, rate: float) -> float:
        ceiling = self.ceiling if self.ceiling is not None else rate
        return max(self.floor, min(ceiling, rate))

    @property
    def rate(self) -> float | None:
        """Requests per second the budget allows now (None: unpaced)."""
        return self._rate

    def acquire(self) -> float:
        """Wait for this request's turn; returns its ticket (the moment it may go)."""
        claimed = False
        waited_out = float("-inf")  # the pause this thread already slept through
        while True:
            with self._lock:
                now = self._clock()
                if now < self._paused_until and self._paused_until != waited_out:
                    claimed = False  # a 429 arrived meanwhile: the slot is given up
                    waited_out = self._paused_until
                    wait = self._paused_until - now
                elif self._rate is None:
                    return now
                elif claimed and (crowded := self._window_wait(now)) > 0:
                    wait = crowded  # a request before this one left late: keep the window
                elif claimed:
                    # Woken late (a busy interpreter): the next request keeps its distance from
                    # this one, so jitter never squeezes rate + 1 requests into one second.
                    self._next = max(self._next, now + 1.0 / self._rate)
                    return now
                else:
                    slot = max(now, self._next, now + self._window_wait(now))
                    self._next = slot + 1.0 / self._rate
                    if slot <= now:
                        return now
                    claimed = True  # threads waiting together leave one interval apart
                    wait = slot - now
            self._sleep(wait)

    def on_wire(self) -> None:
        """Called as a request actually leaves (an HTTP client hook): its time keeps the window."""
        with self._lock:
            now = self._clock()
            wire = self._wire
            wire.append(now)
            while wire[0] < now - 2.0:
                wire.popleft()

    def _window_wait(self, now: float) -> float:
        """Seconds until one more request fits the window, by the times requests really left."""
        assert self._rate is not None
        count = max(1, int(self._rate))
        if len(self._wire) < count:
            return 0.0
        return max(0.0, self._wire[-count] + self.WINDOW - now)

    def succeeded(self, ticket: float, elapsed: float) -> None:
        """A 2xx answer to the request sent at ``ticket`` after ``elapsed`` seconds."""
        with self._lock:
            if self._rate is None or elapsed > self.slow_seconds:
                return
            if self._slow_start:
                self._rate = self._clamp(self._rate + 1.0)
            elif self._target is not None and self._rate < self._target:
                self._rate = self._clamp(min(self._target, self._rate + 1.0))
            else:
                self._rate = self._clamp(self._rate + self.increase / self._rate)

    def throttled_for(self, ticket: float, retry_after: float) -> None:
        """A 429 to the request sent at ``ticket``: halve the rate and pause ``retry_after`` seconds."""
        with self._lock:
            self.throttled += 1
            now = self._clock()
            self._paused_until = max(self._paused_until, now + max(0.0, retry_after))
            if self._rate is None or ticket <= self._decreased_at:
                return
            accepted = sum(1 for sent in self._wire if ticket - 1.0 <= sent < ticket)
            self._target = self._clamp(0.95 * max(1, accepted))
            self._decrease(0.5, now)

    def troubled(self, ticket: float) -> None:
        """A 5xx answer or a network error to the request sent at ``ticket``: slow down."""
        with self._lock:
            self.troubles += 1
            if self._rate is None or ticket <= self._decreased_at:
                return
            self._decrease(0.75, self._clock())

    def resume(self, rate: float | None) -> None:
        """Go on from ``rate``, the rate the business's last run learned, read once the first
        requests are already out (a run opens its client before its database): as if the budget
        had started there, slow start over, unless a sign of congestion came meanwhile (the
        server's word is newer than the last run's). None: nothing learned, nothing changes."""
        with self._lock:
            if rate is None or self._rate is None or self._decreased_at != float("-inf"):
                return
            self._slow_start = False
            self._rate = self._clamp(rate)

    def _decrease(self, factor: float, now: float) -> None:
        assert self._rate is not None
        self._slow_start = False
        self._rate = self._clamp(self._rate * factor)
        self._decreased_at = now


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
