"""The stats board: where every replica's numbers meet, so one ingress can show all of them.

A Serve handle call reaches one replica, so the ingress cannot ask each replica
for its numbers. Instead every replica (model replicas, ingress replicas, the
model manager) runs a :class:`Publisher` thread that puts its recorder's snapshot
on one named, detached Ray actor (:class:`StatsBoard`) every few seconds and
shortly after each request ends. ``/metrics`` and ``/v1/stats`` read the board
(plus the asking ingress's own, fresh snapshot). A replica that stops removes its
entry; one that dies disappears after ``ttl_s`` without a push.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("kronk.telemetry")

BOARD_NAME = "kronk-stats"
NAMESPACE = "kronk"
PUSH_INTERVAL_S = 2.0  # gauges (KV cells, active, waiting) are sampled this often
MIN_GAP_S = 0.05  # at most this often after request ends
TTL_S = 30.0


class StatsBoard:
    """Latest snapshot per replica (runs as a Ray actor; plain class for tests)."""

    def __init__(self, ttl_s: float = TTL_S):
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, dict[str, Any]]] = {}

    def put(self, key: str, snapshot: dict[str, Any]) -> None:
        self._entries[key] = (time.monotonic(), snapshot)

    def drop(self, key: str) -> None:
        self._entries.pop(key, None)

    def all(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        for k in [k for k, (t, _) in self._entries.items() if now - t > self.ttl_s]:
            del self._entries[k]
        return [snap for _, snap in self._entries.values()]


def get_board() -> Any:
    """The cluster's board actor, created on first use (needs Ray initialised)."""
    import ray

    try:
        return ray.get_actor(BOARD_NAME, namespace=NAMESPACE)
    except ValueError:
        pass
    return ray.remote(StatsBoard).options(name=BOARD_NAME, namespace=NAMESPACE, lifetime="detached", num_cpus=0,
                                          get_if_exists=True).remote()


def snapshot_key(snapshot: dict[str, Any]) -> str:
    return f"{snapshot['component']}:{snapshot['replica']}"


class Publisher:
    """A daemon thread that pushes ``snapshot()`` to the board every ``interval_s`` and soon after ``poke()``."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]], sample: Callable[[], None] | None = None,
                 interval_s: float = PUSH_INTERVAL_S, board: Any = None):
        self._snapshot = snapshot
        self._sample = sample
        self.interval_s = interval_s
        self._board = board
        self._key: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kronk-stats-publisher", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """Push soon (a request ended)."""
        self._wake.set()

    def push_now(self) -> None:
        if self._sample is not None:
            try:
                self._sample()
            except Exception:  # a sample racing the decode thread: push the counters anyway
                log.debug("sampling gauges failed", exc_info=True)
        snap = self._snapshot()
        self._key = snapshot_key(snap)
        if self._board is None:
            self._board = get_board()
        self._board.put.remote(self._key, snap)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self.push_now()
                failures = 0
            except Exception:
                failures += 1
                if failures in (1, 10):
                    log.warning("publishing stats to the board failed", exc_info=True)
                self._board = None
            self._wake.wait(self.interval_s)
            self._wake.clear()
            self._stop.wait(MIN_GAP_S)

    def close(self) -> None:
        """Stop pushing and take this replica's entry off the board."""
        self._stop.set()
        self._wake.set()
        if self._board is not None and self._key is not None:
            try:
                self._board.drop.remote(self._key)
            except Exception:
                pass


def start_publisher_in_actor(recorder: Any, sample: Callable[[], None] | None = None) -> Publisher | None:
    """A Publisher for ``recorder`` when this process is a Ray actor (a replica, the model manager)."""
    from kronk.telemetry.metrics import in_ray

    if not in_ray():
        return None
    import ray

    if ray.get_runtime_context().get_actor_id() is None:
        return None
    pub = Publisher(recorder.snapshot, sample)
    recorder.on_change = pub.poke  # push soon after each request (or pull) ends
    return pub
