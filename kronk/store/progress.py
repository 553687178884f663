"""Pull progress: one dataclass handed to callbacks, and the tracker that fills it."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

log = logging.getLogger(__name__)

Phase = Literal["resolving", "downloading", "verifying", "done"]


@dataclass(frozen=True)
class PullProgress:
    bytes_done: int
    bytes_total: int
    rate_bps: float
    eta_s: float | None
    file: str | None
    phase: Phase
    bytes_moved: int = 0  # bytes downloaded or copied in this pull (not counting what was on disk)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ProgressCallback = Callable[[PullProgress], None]


class ProgressTracker:
    """Counts bytes and calls the callback at most every ``min_interval`` s (and on phase changes).

    ``bytes_done`` counts bytes already on disk (a resumed partial, a finished file) as
    done; the rate only counts bytes moved in this pull, over a sliding window.
    """

    def __init__(self, callback: ProgressCallback | None, min_interval: float = 0.2, window_s: float = 5.0):
        self._cb = callback
        self._min_interval = min_interval
        self._window_s = window_s
        self._lock = threading.Lock()
        self.bytes_done = 0
        self.bytes_total = 0
        self.file: str | None = None
        self.phase: Phase = "resolving"
        self._moved = 0
        self._samples: deque[tuple[float, int]] = deque()
        self._last_emit = 0.0

    def set_total(self, total: int) -> None:
        self.bytes_total = max(total, 0)
        self._emit(force=True)

    def set_phase(self, phase: Phase, file: str | None = None) -> None:
        self.phase = phase
        if file is not None:
            self.file = file
        self._emit(force=True)

    def add_existing(self, n: int) -> None:
        """Bytes that were already on disk."""
        self.bytes_done += n
        self._emit()

    def add(self, n: int) -> None:
        """Bytes moved over the network (or copied) now."""
        with self._lock:
            self.bytes_done += n
            self._moved += n
            now = time.monotonic()
            self._samples.append((now, self._moved))
            while len(self._samples) > 2 and now - self._samples[0][0] > self._window_s:
                self._samples.popleft()
        self._emit()

    def done(self) -> None:
        self.bytes_done = max(self.bytes_done, self.bytes_total)
        self.bytes_total = max(self.bytes_total, self.bytes_done)
        self.set_phase("done")

    @property
    def rate_bps(self) -> float:
        with self._lock:
            if len(self._samples) < 2:
                return 0.0
            (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0

    def snapshot(self) -> PullProgress:
        rate = self.rate_bps
        left = max(self.bytes_total - self.bytes_done, 0)
        eta = 0.0 if self.phase == "done" else (left / rate if rate > 0 and self.bytes_total else None)
        return PullProgress(self.bytes_done, self.bytes_total, rate, eta, self.file, self.phase, self._moved)

    def _emit(self, force: bool = False) -> None:
        if self._cb is None:
            return
        now = time.monotonic()
        if not force and now - self._last_emit < self._min_interval:
            return
        self._last_emit = now
        try:
            self._cb(self.snapshot())
        except Exception:  # a broken progress display must not break a download
            log.exception("pull progress callback failed")
