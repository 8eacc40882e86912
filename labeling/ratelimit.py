"""A thread-safe token bucket for ``--rpm``.

It gates every HTTP attempt, retries included, because a provider counts
retries against the same per-minute quota.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """``rate_per_minute`` tokens a minute, at most ``capacity`` saved up (1 = evenly spaced requests)."""

    def __init__(self, rate_per_minute: float, capacity: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        if rate_per_minute <= 0:
            raise ValueError(f"--rpm must be positive, got {rate_per_minute}")
        if capacity < 1:
            raise ValueError(f"token bucket capacity must be at least 1, got {capacity}")
        self.rate = rate_per_minute / 60.0
        self.capacity = float(capacity)
        self._clock, self._sleep = clock, sleep
        self._tokens = float(capacity)
        self._updated = clock()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take one token, sleeping until one is available; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            self._tokens -= 1.0  # may go negative: a reservation that later callers queue behind
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait
