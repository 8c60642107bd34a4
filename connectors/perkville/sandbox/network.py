"""The sandbox as a far-away, rationed service: a fixed latency and a Tastypie-style request throttle.

A real Perkville is reached over the internet and decides how many requests it accepts. With
``latency`` set, every ``/v2/`` and token request is answered that many seconds after it arrived.
With ``rate_limit`` set, a ``/v2/`` request that would be the ``R+1``-th accepted in any one-second
window is answered 429 with an empty body and ``Retry-After`` in whole seconds (rounded up), as
Tastypie's ``CacheThrottle`` does; throttled requests do not count against the window, and the
token endpoint is not throttled.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

WINDOW_SECONDS = 1.0


@dataclass
class NetworkStats:
    accepted: int = 0
    throttled: int = 0


@dataclass
class Network:
    """Latency (seconds) and request budget (requests per second, None: unlimited) of the sandbox."""

    latency: float = 0.0
    rate_limit: int | None = None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    stats: NetworkStats = field(default_factory=NetworkStats)
    _times: deque[float] = field(default_factory=deque, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.latency < 0:
            raise ValueError("latency must not be negative")
        if self.rate_limit is not None and self.rate_limit < 1:
            raise ValueError("rate_limit must be at least 1 request per second")

    def admit(self) -> int | None:
        """Count one API request; None when accepted, else the ``Retry-After`` seconds of its 429."""
        if self.rate_limit is None:
            with self._lock:
                self.stats.accepted += 1
            return None
        now = self.clock()
        with self._lock:
            times = self._times
            while times and times[0] <= now - WINDOW_SECONDS:
                times.popleft()
            if len(times) >= self.rate_limit:
                self.stats.throttled += 1
                # The window has room again once its oldest accepted request is a second old.
                return max(1, math.ceil(times[0] + WINDOW_SECONDS - now))
            times.append(now)
            self.stats.accepted += 1
            return None

    def delay(self, arrived: float) -> None:
        """Wait until ``latency`` has passed since ``arrived`` (a ``clock()`` reading)."""
        if self.latency <= 0:
            return
        remaining = arrived + self.latency - self.clock()
        if remaining > 0:
            self.sleep(remaining)
