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
        self._turn = threading.Condition(self._lock)  # the first in ``_queue`` has changed
        self._queue: deque[object] = deque()  # requests waiting, in arrival order
        self._slow_start = start is None
        first = start if start is not None else (self.ceiling / 2 if self.ceiling else None)
        self._rate = self._clamp(first) if first is not None else None
        self._target: float | None = None  # 95 % of what the server last accepted
        self._next = float("-inf")  # set as a request leaves: the earliest the next one may go
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

    @property
    def waiting(self) -> int:
        """Requests queued for their turn now."""
        with self._lock:
            return len(self._queue)

    def acquire(self) -> float:
        """Wait for this request's turn; returns its ticket (the moment it may go).

        Requests queue in arrival order and only the first of them waits for the clock. Its
        moment is set when its turn comes: ``1 / rate`` after the one before it left, at the
        rate of that moment, so a rise while it queued already counts (a slot claimed on
        arrival kept the old spacing). A 429 pause or a crowded window that came up while it
        slept is waited out before it goes.
        """
        if self._rate is None:
            return self._acquire_unpaced()
        me = object()
        with self._lock:
            self._queue.append(me)
        try:
            slept_until = float("-inf")
            while True:
                with self._turn:
                    self._turn.wait_for(lambda: self._queue[0] is me)
                    rate = self._rate
                    assert rate is not None
                    now = self._clock()
                    due = max(self._next, self._paused_until, now + self._window_wait(now))
                    # ``slept_until``: a sleep may end a rounding error before the moment it was for.
                    if due <= max(now, slept_until):
                        # The next one leaves 1 / rate after this one really leaves (a late wake-up
                        # keeps its distance, so jitter never squeezes rate + 1 into one second).
                        self._next = now + 1.0 / rate
                        return now
                    slept_until = due
                self._sleep(due - now)
        finally:
            with self._turn:
                self._queue.remove(me)
                self._turn.notify_all()

    def _acquire_unpaced(self) -> float:
        """No rate: go at once, except during a 429 pause."""
        waited_out = float("-inf")  # the pause this thread already slept through
        while True:
            with self._lock:
                now = self._clock()
                if not (now < self._paused_until and self._paused_until != waited_out):
                    return now
                waited_out = self._paused_until
                wait = self._paused_until - now
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
