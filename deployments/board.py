"""The stats board in Ray: its entries in a namespace of Ray's GCS key-value store, one publisher per actor.

kronk.telemetry.board has the board itself (:class:`~kronk.telemetry.board.StatsBoard`
over any key-value store) and the :class:`~kronk.telemetry.board.Publisher`
thread; this module gives them Ray's GCS key-value store, not an actor of its
own (an extra Ray actor process wakes ~100 times a second even when idle; see
benchmarks/README.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray
from ray.experimental import internal_kv

from deployments.metrics import install_ray_metrics
from kronk.telemetry.board import Publisher, StatsBoard

NAMESPACE = "kronk-stats"  # the GCS key-value namespace of the board


class GcsKV:
    """Ray's GCS key-value store, one namespace (needs Ray initialised; every call is a GCS round trip)."""

    def __init__(self, namespace: str = NAMESPACE):
        self.namespace = namespace

    def put(self, key: str, value: bytes) -> None:
        internal_kv._internal_kv_put(key, value, overwrite=True, namespace=self.namespace)

    def get(self, key: str) -> bytes | None:
        return internal_kv._internal_kv_get(key, namespace=self.namespace)

    def delete(self, key: str) -> None:
        internal_kv._internal_kv_del(key, namespace=self.namespace)

    def list_keys(self) -> list[str]:
        return [k.decode() for k in internal_kv._internal_kv_list("", namespace=self.namespace)]


def get_board() -> StatsBoard:
    """The cluster's board (needs Ray initialised)."""
    return StatsBoard(GcsKV())


def start_publisher_in_actor(recorder: Any, sample: Callable[[], None] | None = None,
                             snapshot: Callable[[], dict[str, Any]] | None = None) -> Publisher | None:
    """What a replica or actor (a model replica, an ingress, the model manager) calls when it starts: Ray's
    metrics become this process's metrics sink (deployments/metrics.py), and, in a Ray actor, a Publisher
    puts ``recorder``'s snapshot (or ``snapshot()``, which adds to it) on the cluster's board (None
    elsewhere)."""
    if not install_ray_metrics():
        return None
    if ray.get_runtime_context().get_actor_id() is None:
        return None
    pub = Publisher(snapshot or recorder.snapshot, sample, board=get_board())
    recorder.on_change = pub.poke  # push soon after each request (or pull) ends
    return pub
