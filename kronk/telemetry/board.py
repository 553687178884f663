"""The stats board: where every replica's numbers meet, so one ingress can show all of them.

A Serve handle call reaches one replica, so the ingress cannot ask each replica
for its numbers. Instead every replica (model replicas, ingress replicas, the
model manager) runs a :class:`Publisher` thread that puts its recorder's snapshot
on the board every few seconds and shortly after each request ends. ``/metrics``
and ``/v1/stats`` read the board (plus the asking ingress's own, fresh snapshot).
A replica that stops removes its entry; one that dies disappears after ``ttl_s``
without a push.

The board keeps its entries in any :class:`KV`. In Ray it is a namespace of
Ray's GCS key-value store (``deployments/board.py``, which also starts the
publishers of replicas and actors), not an actor of its own: an extra Ray actor
process wakes ~100 times a second even when idle, and on a small machine every
such wake-up is taken from llama.cpp's threads (measured in
benchmarks/README.md). Tests use :class:`MemoryKV`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("kronk.telemetry")

PUSH_INTERVAL_S = 2.0  # gauges (KV cells, active, waiting) are sampled this often
MIN_GAP_S = 0.05  # at most this often after request ends
TTL_S = 30.0


class KV(Protocol):
    """The few key-value operations the board needs."""

    def put(self, key: str, value: bytes) -> None: ...
    def get(self, key: str) -> bytes | None: ...
    def delete(self, key: str) -> None: ...
    def list_keys(self) -> list[str]: ...


class MemoryKV:
    """An in-process KV, for tests."""

    def __init__(self) -> None:
        self._d: dict[str, bytes] = {}

    def put(self, key: str, value: bytes) -> None:
        self._d[key] = value

    def get(self, key: str) -> bytes | None:
        return self._d.get(key)

    def delete(self, key: str) -> None:
        self._d.pop(key, None)

    def list_keys(self) -> list[str]:
        return list(self._d)


class StatsBoard:
    """Latest snapshot per replica, kept in ``kv`` with the time it was put (wall clock: replicas are
    separate processes, maybe on separate nodes)."""

    def __init__(self, kv: KV, ttl_s: float = TTL_S):
        self.kv = kv
        self.ttl_s = ttl_s

    def put(self, key: str, snapshot: dict[str, Any]) -> None:
        self.kv.put(key, json.dumps({"put": time.time(), "snapshot": snapshot}).encode())

    def drop(self, key: str) -> None:
        self.kv.delete(key)

    def all(self) -> list[dict[str, Any]]:
        """Every fresh snapshot; entries older than the TTL (a replica that died) are deleted."""
        now = time.time()
        out = []
        for k in self.kv.list_keys():
            raw = self.kv.get(k)
            if raw is None:  # dropped since listed
                continue
            try:
                entry = json.loads(raw)
                fresh = now - float(entry["put"]) <= self.ttl_s
            except (ValueError, KeyError, TypeError):
                fresh = False  # not ours, or written by an incompatible version
            if fresh:
                out.append(entry["snapshot"])
            else:
                self.kv.delete(k)
        return out


def snapshot_key(snapshot: dict[str, Any]) -> str:
    return f"{snapshot['component']}:{snapshot['replica']}"


class Publisher:
    """A daemon thread that pushes ``snapshot()`` to the board every ``interval_s`` and soon after ``poke()``."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]], sample: Callable[[], None] | None = None,
                 interval_s: float = PUSH_INTERVAL_S, *, board: StatsBoard):
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
        self._board.put(self._key, snap)

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
            self._wake.wait(self.interval_s)
            self._wake.clear()
            self._stop.wait(MIN_GAP_S)

    def close(self) -> None:
        """Stop pushing and take this replica's entry off the board."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=2.0)  # a push under way would put the entry back after the drop
        if self._key is not None:
            try:
                self._board.drop(self._key)
            except Exception:
                pass

