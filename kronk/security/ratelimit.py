"""Per-key request limits: a sliding window of one minute, per process (each replica or ingress counts its own)."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

WINDOW_S = 60.0


class RateLimiter:
    """At most ``rpm`` requests per key in any 60 s window. ``hit`` answers 0 (admitted, counted) or the
    seconds until the next request would be admitted (refused, not counted)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, window_s: float = WINDOW_S):
        self.clock = clock
        self.window_s = window_s
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key_id: str, rpm: int) -> int:
        now = self.clock()
        with self._lock:
            q = self._hits.setdefault(key_id, deque())
            while q and now - q[0] >= self.window_s:
                q.popleft()
            if len(q) < rpm:
                q.append(now)
                return 0
            return max(1, math.ceil(self.window_s - (now - q[len(q) - rpm])))

    def forget(self, keep: set[str]) -> None:
        """Drop the counts of keys no longer configured."""
        with self._lock:
            for k in [k for k in self._hits if k not in keep]:
                del self._hits[k]
