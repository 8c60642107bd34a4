"""Per-key request rate limiting for the local v1 API: a fixed one-minute window per key.

Answers carry ``ratelimit-limit``, ``ratelimit-remaining`` and ``ratelimit-reset`` (the Unix time
in seconds at which the window resets, as in the SDK tests); a refused request also carries
``retry-after`` in whole seconds (``RateDecision.retry_after``).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

WINDOW_SECONDS = 60


@dataclass(frozen=True)
class RateDecision:
    """The outcome of one request against its key's window."""

    allowed: bool
    limit: int
    remaining: int
    reset_at: int
    retry_after: int

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The ``ratelimit-*`` headers of the answer (a refusal adds ``retry-after`` itself)."""
        return [
            (b"ratelimit-limit", str(self.limit).encode()),
            (b"ratelimit-remaining", str(self.remaining).encode()),
            (b"ratelimit-reset", str(self.reset_at).encode()),
        ]


class FixedWindowLimiter:
    """Counts requests per key in windows aligned to whole minutes of the given clock."""

    def __init__(self, limit_per_minute: int) -> None:
        if limit_per_minute < 1:
            raise ValueError("limit_per_minute must be at least 1")
        self.limit = limit_per_minute
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[int, int]] = {}

    def hit(self, key_id: str, now: float) -> RateDecision:
        """Count one request of ``key_id`` at ``now`` (Unix seconds) and decide on it."""
        window = int(now // WINDOW_SECONDS)
        reset_at = (window + 1) * WINDOW_SECONDS
        with self._lock:
            current_window, used = self._windows.get(key_id, (window, 0))
            if current_window != window:
                used = 0
                if len(self._windows) > 10_000:  # forget idle keys of earlier windows
                    self._windows = {k: v for k, v in self._windows.items() if v[0] == window}
            allowed = used < self.limit
            if allowed:
                used += 1
            self._windows[key_id] = (window, used)
        return RateDecision(
            allowed=allowed,
            limit=self.limit,
            remaining=max(self.limit - used, 0),
            reset_at=reset_at,
            retry_after=max(1, math.ceil(reset_at - now)),
        )
